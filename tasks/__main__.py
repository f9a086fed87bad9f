"""Command line behind the Makefile: `python -m tasks COMMAND ...`.

Reads the command line and the configuration; runs Luigi (on luigid at [core] scheduler_host:port
when it answers, else on the local scheduler) and exits with Luigi's [retcode] code. Input
mistakes get one line on stderr and exit code 2.
"""

import argparse
import shutil
import sys

import luigi.retcodes

from tasks import config, database, luigid

# What the pipeline writes under <data_dir>; the bundled samples beside them stay.
WORK_FOLDERS = ("raw", "reports", "logs", "dbt", "luigid", "pgdata")


def clean() -> None:
    """Reset what the pipeline made; with an external database, only the pipeline's own schemas."""
    print(luigid.stop())
    url = config.database_url_setting()
    if url:
        for schema in database.drop_pipeline_schemas(url):
            print(f"dropped schema {schema} in {config.redact(url)}")
    elif database.stop_embedded(database.pgdata_dir()):
        print(f"stopped the embedded PostgreSQL in {database.pgdata_dir()}")
    for name in WORK_FOLDERS:
        folder = config.data_dir() / name
        if folder.exists():
            shutil.rmtree(folder)
            print(f"removed {folder}")


def scheduler_args() -> list:
    """Luigi options for luigid when it answers, else for the local scheduler."""
    host, port = luigid.address()
    if luigid.answers(host, port):
        return []
    print(f"luigid is not answering on {host}:{port}; using the local scheduler", file=sys.stderr)
    return ["--local-scheduler"]


def run_luigi(task_args: list, workers: int) -> int:
    argv = task_args + ["--workers", str(workers)] + scheduler_args()
    try:
        luigi.retcodes.run_with_retcodes(argv)
    except SystemExit as done:
        return done.code or 0
    return 0


def _date(text):
    try:
        return config.parse_date(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage block: `make run-etl DATE=2024-13-01` should say what is wrong and stop.
        self.exit(2, f"error: {message}\n")


def parse_args(argv):
    parser = _Parser(prog="python -m tasks", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_etl = commands.add_parser("run-etl", help="the whole chain for DATE, backfilling from history_start")
    run_etl.add_argument("date", type=_date)
    run_etl.add_argument("--force", action="store_true", help="reload DATE from the source and rebuild downstream")
    load = commands.add_parser("load", help="load staging for every date from history_start to DATE")
    load.add_argument("date", type=_date)
    backfill = commands.add_parser("backfill", help="the whole chain for every date from FROM to TO")
    backfill.add_argument("start", type=_date, metavar="FROM")
    backfill.add_argument("date", type=_date, metavar="TO")
    for command in (run_etl, load, backfill):
        command.add_argument("--workers", type=int, default=1)
    commands.add_parser("db-url", help="print the database URL in use, password redacted")
    commands.add_parser("clean", help="stop luigid and the embedded server, drop what the pipeline made")
    commands.add_parser("luigid-start", help="start the central scheduler and web UI in the background")
    commands.add_parser("luigid-stop", help="stop the central scheduler this project started")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    simple = {"db-url": lambda: print(config.redact(database.database_url())), "clean": clean,
              "luigid-start": lambda: print(luigid.start()), "luigid-stop": lambda: print(luigid.stop())}
    if args.command in simple:
        simple[args.command]()
        return 0
    first = getattr(args, "start", None) or args.date
    if first < config.history_start() or first > args.date:
        print(f"error: dates must run from history_start {config.history_start()} forward, "
              f"got {first} to {args.date}", file=sys.stderr)
        return 2
    from tasks import export, overwrite  # registers every task with Luigi

    if args.command == "load":
        return run_luigi(["LoadHistory", "--date", args.date.isoformat()], args.workers)
    if args.command == "backfill":
        return run_luigi(["Backfill", "--start", args.start.isoformat(), "--date", args.date.isoformat()], args.workers)
    if args.force:
        for line in overwrite.invalidate(args.date):
            print(line)
    code = run_luigi(["RunEtl", "--date", args.date.isoformat()], args.workers)
    if code == 0:
        path = export.report_path(args.date)
        print(f"report: {path}")
        print(path.read_text(), end="")
    return code


if __name__ == "__main__":
    sys.exit(main())
