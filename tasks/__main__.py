"""Command line behind the Makefile: `python -m tasks COMMAND ...`.

Reads the command line and the configuration; runs Luigi (on luigid at [core] scheduler_host:port
when it answers, else on the local scheduler) and exits with Luigi's [retcode] code. Each run is
recorded in `etl.run` and logs to `<data_dir>/logs/run-<UTC start>-<pid>.log`; the terminal gets a line per
stage and a summary (tasks.console). Input mistakes get one line on stderr and exit code 2 (a
database or a luigid that cannot be reached, 35: Luigi's scheduling_error, which a scheduler may retry). A
backfill into a warehouse that earlier builds wrote ends with every dbt data test on every row
(`test-warehouse`).
"""

import argparse
import configparser
import datetime
import json
import logging
import os
import shutil
import sys
import warnings

try:
    import luigi.parameter
    import luigi.retcodes
    import luigi.worker
except configparser.Error as err:
    # Luigi reads its configuration files when it is imported: one that does not parse (a section
    # twice, a missing bracket) would end in Luigi's traceback and exit 1, not as an input mistake.
    print(f"error: a Luigi configuration file does not parse: {err}", file=sys.stderr)
    sys.exit(2)

from tasks import config, console, db, luigid, processes, runs, schemas, server

# Luigi's client reads [core] rpc_connect_timeout, rpc_retry_attempts and rpc_retry_wait (runbook,
# exit code 35), but its [core] class does not declare them and warns of each, on every run.
warnings.filterwarnings(
    "ignore",
    message="The configuration contains the parameter 'rpc",
    category=luigi.parameter.UnconsumedParameterWarning,
)

# What the pipeline writes under <data_dir>; the bundled samples beside them stay.
WORK_FOLDERS = ("raw", "reports", "logs", "dbt", "luigid", "pgdata")
INTERRUPTED = 130


def clean(drop_foreign: bool) -> None:
    """Reset what the pipeline made; with an external database, only the pipeline's own objects.
    Refused (runs.InProgress) while a run is running: it would write again into what is dropped."""
    runs.hold_data_dir_alone()
    dsn = config.database_url_setting()
    if dsn:
        for schema in schemas.drop_pipeline_schemas(dsn, drop_foreign):
            print(f"dropped schema {schema} in {db.describe(dsn)}")
    else:
        if server.embedded_runs(server.pgdata_dir()):
            with db.transaction() as conn, conn.cursor() as cur:
                runs.refuse_while_running(cur)
        if server.stop_embedded(server.pgdata_dir()):
            print(f"stopped the embedded PostgreSQL in {server.pgdata_dir()}")
    print(luigid.stop())
    for name in WORK_FOLDERS:
        folder = config.data_dir() / name
        if folder.exists():
            shutil.rmtree(folder)
            print(f"removed {folder}")


def scheduler() -> tuple:
    """(Luigi options, a description): luigid when it answers, else the local scheduler."""
    host, port = luigid.address()
    if luigid.answers(host, port):
        return [], f"luigid at http://{host}:{port}"
    return ["--local-scheduler"], f"the local scheduler (luigid is not answering on {host}:{port})"


@luigi.Task.event_handler(luigi.Event.START)
def _task_process_dies_with_run(task):
    # Luigi forks a process per running task when WORKERS > 1: none may outlive a killed run.
    processes.die_with_parent()


def log_to(path, verbose: bool) -> None:
    """Luigi's and the pipeline's logging into `path`; with -v also to the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(path)]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=logging.DEBUG, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_MISSING)
def _stop_waiting_for_others(task):
    # An input nobody in this run produces (a daily prefix not there yet) leaves the tasks after it
    # pending for ever on luigid, and keep-alive would wait for them: run what can run, then exit
    # with [retcode] missing_data. The worker's settings are luigi's one cached `worker` config. A
    # `make worker` serves luigid until stopped: a date that has not arrived is not its end.
    if _this_run["assistant"]:
        return
    luigi.worker.worker().keep_alive = False
    _this_run["missing_data"] = True


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def _note_task(task, dependency):
    _this_run["tasks"].add(dependency.task_id)


# What scheduling found: whether an input had not arrived (the tasks luigid had not handed out yet
# when the worker stopped waiting count as "not run", 25, a code Luigi ranks above missing_data's
# 20), and the ids of the run's tasks, to tell which of luigid's disabled tasks are this run's;
# and whether this process is a `make worker` (an assistant).
_this_run = {"missing_data": False, "tasks": set(), "assistant": False}

# How often a run on luigid schedules its tasks again when luigid hands none of them out any more
# while nothing of the run is disabled or missing: a luigid restarted during the run knows none.
RESCHEDULES = 2


class _LuigiGaveUp(logging.Handler):
    """Holds the exception Luigi logs as uncaught just before it exits with unhandled_exception."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.error = None

    def emit(self, record):
        if record.exc_info:
            self.error = record.exc_info[1]


class _SayUnanswered(logging.Handler):
    """Says once, on the terminal, that luigid stopped answering and how long Luigi's client will
    try (luigid.unanswered): its retries are logged to the run's log only."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.said = False

    def emit(self, record):
        # Luigi's message for a failed try, luigi/rpc.py (RemoteScheduler._get_retryer)
        if self.said or not str(record.msg).startswith("Failed connecting to remote scheduler"):
            return
        line = luigid.unanswered()
        if line:
            console.say(line)
        self.said = True


def _luigi_once(argv: list) -> tuple:
    """Luigi's exit code for one scheduling and run of `argv`, and the error it gave up on, if any."""
    gave_up = _LuigiGaveUp()
    logging.getLogger("luigi-interface").addHandler(gave_up)
    try:
        luigi.retcodes.run_with_retcodes(argv)
    except SystemExit as done:
        return done.code or 0, gave_up.error
    finally:
        logging.getLogger("luigi-interface").removeHandler(gave_up)
    return 0, None


def run_luigi(task_args: list, workers: int, scheduler_args: list, root=None) -> int:
    # No pid lock: two runs of the same command wait for each other on the database's locks
    # (per partition, per dbt build) and skip what the other finished, instead of one failing.
    argv = ["--module", "tasks.workflows", *task_args, "--workers", str(workers), "--no-lock", *scheduler_args]
    core = luigi.configuration.get_config()
    core.set("core", "no_configure_logging", "true")  # see log_to
    if not scheduler_args:
        # On luigid other workers may run this run's tasks: wait for them instead of leaving. A
        # failed task ends the wait once luigid disables it (tasks/luigid.py SCHEDULER_DEFAULTS).
        core.set("worker", "keep_alive", "true")
    retcodes = luigi.retcodes.retcode()
    for attempt in range(RESCHEDULES + 1):
        _this_run.update(missing_data=False, tasks=set())
        code, error = _luigi_once(argv)
        if code == retcodes.unhandled_exception and luigid.lost_by(error):
            # Not a bug in Luigi: luigid stopped answering. It may come back, like a database.
            console.say(f"error: {luigid.lost(error)}")
            return retcodes.scheduling_error
        if code in (retcodes.not_run, retcodes.already_running) and root is not None and root.complete():
            # On luigid other workers may have run the last tasks, the root among them: what counts
            # is that everything asked for is done.
            return 0
        if code != retcodes.not_run or scheduler_args:
            return code
        disabled = luigid.disabled(_this_run["tasks"])
        for line in disabled:
            console.say(line)
        if disabled:
            return code
        if _this_run["missing_data"]:
            return retcodes.missing_data
        if attempt < RESCHEDULES:
            console.say("luigid handed out none of this run's tasks left (was it restarted?): scheduling them again")
    return code


def _date(text):
    if not text:
        raise argparse.ArgumentTypeError("give a date, e.g. make run-etl DATE=2024-04-30 (FROM= and TO= for backfill)")
    try:
        return config.parse_date(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _workers(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"WORKERS must be a whole number of at least 1, got {text!r}")
    return int(text)


def _switch(name):
    """A make variable that switches something on: 1/yes/true, or 0/no/false/empty for off."""

    def parse(text):
        value = (text or "").strip().lower()
        if value in ("1", "yes", "true"):
            return True
        if value in ("", "0", "no", "false"):
            return False
        raise argparse.ArgumentTypeError(
            f"{name} must be 1 (or yes, true) to switch it on, got {text!r}; e.g. make run-etl DATE=2024-04-30 {name}=1"
        )

    return parse


def _add_switch(parser, flag: str, name: str, help: str) -> None:
    """An option for make variable `name` (make passes `flag VALUE`): alone or 1/yes/true is on."""
    parser.add_argument(flag, nargs="?", const="1", default=False, type=_switch(name), help=help)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage block: `make run-etl DATE=2024-13-01` should say what is wrong and stop.
        self.exit(2, f"error: {message}\n")


def parse_args(argv):
    parser = _Parser(prog="python -m tasks", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_etl = commands.add_parser("run-etl", help="the whole chain for DATE, backfilling from history_start")
    run_etl.add_argument("date", type=_date)
    load = commands.add_parser("load", help="load staging for every date from history_start to DATE")
    load.add_argument("date", type=_date)
    backfill = commands.add_parser("backfill", help="the whole chain for every date from FROM to TO")
    backfill.add_argument("start", type=_date, metavar="FROM")
    backfill.add_argument("date", type=_date, metavar="TO")
    worker = commands.add_parser("worker", help="join the running luigid and run whatever tasks it hands out")
    for command in (run_etl, load, backfill, worker):
        command.add_argument("--workers", type=_workers, default=1)
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=os.environ.get("LOG_LEVEL") == "debug",
            help="Luigi's log on the terminal too (or LOG_LEVEL=debug)",
        )
    for command in (run_etl, load, backfill):
        _add_switch(
            command, "--force", "FORCE", "reload DATE from the source, rebuild reports from it on (run-etl only)"
        )
        _add_switch(command, "--allow-future", "FUTURE", "accept dates after tomorrow (UTC)")
    commands.add_parser("db-url", help="print the database URL in use, password redacted")
    clean_parser = commands.add_parser("clean", help="stop luigid and the embedded server, drop what the pipeline made")
    _add_switch(
        clean_parser,
        "--drop-foreign",
        "DROP_FOREIGN",
        "also drop objects of others that depend on the pipeline's schemas",
    )
    commands.add_parser("luigid-start", help="start the central scheduler and web UI in the background")
    commands.add_parser("luigid-stop", help="stop the central scheduler this project started")
    commands.add_parser("runs", help="the recent runs with their durations")
    commands.add_parser("test-warehouse", help="every dbt data test on every row of the warehouse")
    dbt = commands.add_parser("dbt", help="run any dbt command against the pipeline's database")
    dbt.add_argument("arguments", nargs=argparse.REMAINDER)
    args, unknown = parser.parse_known_args(argv)
    if args.command == "dbt":
        # dbt's own options before its command (`--debug run`) are dbt's, not ours; they come first.
        args.arguments = unknown + args.arguments
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command in ("load", "backfill") and args.force:
        # make passes FORCE to them too: ignored, it would look like a reprocess that did nothing
        parser.error(
            f"FORCE=1 reprocesses one date: make run-etl DATE=D FORCE=1, a date at a time (make {args.command}"
            " does what is missing and leaves what is done)"
        )
    return args


def run_warehouse_tests(run_started_at=None) -> int:
    """Every data test on every row (`make test-warehouse`; a backfill ends with it): 0, or
    Luigi's task_failed code with one FAILED line per failing test. For a run that started at
    `run_started_at` on a warehouse no build had written, its own builds wrote every row and tested
    what they wrote: nothing is left to check."""
    from tasks import transform

    if run_started_at and not transform.built_before(run_started_at):
        console.say("warehouse tests: every row comes from this run's builds, which tested what they wrote")
        return 0
    console.say("testing every row of the warehouse: every dbt data test")
    run = transform.check_warehouse()
    if run.returncode == 0:
        console.say(f"warehouse tests: {transform.status_counts([run])}")
        console.dbt_warnings(transform.results_summary([run])["warnings"])
        return 0
    console.failed("test-warehouse", transform.failures(run) or [f"dbt test exited {run.returncode}"], run.log_path)
    return luigi.retcodes.retcode().task_failed


def check_dates(args) -> str:
    """Why the command's dates cannot run, or ''."""
    first = getattr(args, "start", None) or args.date
    start = config.history_start()
    if first > args.date:
        return (
            f"the range runs backwards: FROM {first} is after TO {args.date} "
            f"(did you mean FROM={args.date} TO={first}?)"
        )
    if first < start:
        return f"{first} is before history_start {start}: the pipeline loads nothing earlier (ETL_HISTORY_START)"
    tomorrow = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)
    if args.date > tomorrow and not args.allow_future:
        return (
            f"{args.date} is in the future (after {tomorrow}, UTC); a daily source has no data yet. "
            f"Add FUTURE=1 (--allow-future) if you mean it"
        )
    return ""


def main(argv=None) -> int:
    args = parse_args(argv)
    if not config.luigi_cfg_found():
        print(f"error: no luigi.cfg in {os.getcwd()}: run from the project's folder, as make does", file=sys.stderr)
        return 2
    bad_setting = config.problem(runs_tasks=args.command in ("run-etl", "load", "backfill", "worker"))
    if bad_setting:
        print(f"error: {bad_setting}", file=sys.stderr)
        return 2
    try:
        if args.command == "db-url":
            print(db.describe(server.database_url()))
            return 0
        if args.command == "clean":
            clean(args.drop_foreign)
            return 0
        if args.command in ("luigid-start", "luigid-stop"):
            print(luigid.start() if args.command == "luigid-start" else luigid.stop())
            return 0
        if args.command == "runs":
            print(runs.table(runs.recent()))
            return 0
        if args.command == "dbt":
            from tasks import transform

            return transform.run_by_hand(args.arguments)
        if args.command == "test-warehouse":
            from tasks import transform

            # Every test would fail on a missing table: one line says why instead (and an embedded
            # database that does not exist yet is not made for it).
            unmade = not config.database_url_setting() and not (server.pgdata_dir() / "PG_VERSION").exists()
            if unmade or not transform.built_before():
                where = (
                    f"the embedded database in {server.pgdata_dir()}" if unmade else db.describe(server.database_url())
                )
                print(
                    f"error: nothing to test: no build has completed in {where}"
                    " (make run-etl DATE=… builds the warehouse)",
                    file=sys.stderr,
                )
                return 2
            return run_warehouse_tests()
        problem = "" if args.command == "worker" else check_dates(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        return run_command(args)
    except (ValueError, schemas.ForeignObjects, luigid.NotStarted) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except db.DatabaseUnavailable as err:
        # Not an input mistake: the server may come back, so a scheduler that retries on Luigi's
        # scheduling_error retries this too (the same code as a completion check that cannot answer).
        print(f"error: {err}", file=sys.stderr)
        return luigi.retcodes.retcode().scheduling_error
    except KeyboardInterrupt:
        # before the run's tasks began (waiting for a `make clean`, say): nothing was done
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def run_command(args) -> int:
    first, last = (getattr(args, "start", None) or getattr(args, "date", None)), getattr(args, "date", None)
    scheduler_args, where = scheduler()
    if args.command == "worker" and scheduler_args:
        print(f"error: a worker joins a running luigid, but {where.split('(')[1].rstrip(')')}", file=sys.stderr)
        return 2
    if args.command == "worker" and not config.database_url_setting():
        print(
            "error: workers share one warehouse: set ETL_DATABASE_URL (an embedded database is this machine's only)",
            file=sys.stderr,
        )
        return 2
    now = datetime.datetime.now(datetime.UTC)
    log_path = config.data_dir() / "logs" / f"run-{now:%Y%m%dT%H%M%S}-{os.getpid()}.log"
    run_id, started_at = runs.start(" ".join(["make", args.command] + sys.argv[2:]), first, last, where, log_path)
    log_to(log_path, args.verbose)
    console.configure(log_path)
    dates = "" if first is None else f" {first}" if first == last else f" {first} … {last}"
    console.say(f"run {run_id}: {args.command}{dates} on {where}")
    ended = {"status": "failed", "code": 1, "result": {}}
    try:
        return run_tasks(args, first, last, scheduler_args, started_at, ended)
    finally:
        # However the run ends (an error, Ctrl-C, a worker stopped), its record says it ended.
        runs.finish(run_id, ended["status"], ended["code"], ended["result"])


def run_tasks(args, first, last, scheduler_args, started_at, ended: dict) -> int:
    """Run the command's tasks and print the summary; `ended` receives how it ended, for etl.run."""
    from tasks import export, overwrite

    logging.getLogger("luigi-interface").addHandler(_SayUnanswered())

    if args.command == "worker":
        # An assistant takes any runnable task luigid hands out, for as long as it runs.
        luigi.configuration.get_config().set("worker", "keep_alive", "true")
        luigi.configuration.get_config().set("core", "no_configure_logging", "true")
        _this_run["assistant"] = True
        try:
            luigi.build([], workers=args.workers, assistant=True)
        except KeyboardInterrupt:
            # how a worker is stopped by hand ("until stopped"): what committed stays
            console.say("interrupted: this worker takes no more tasks")
            ended.update(status="interrupted", code=INTERRUPTED)
            return INTERRUPTED
        except Exception as err:
            if not luigid.lost_by(err):
                raise
            console.say(f"error: {luigid.lost(err)}")
            ended.update(code=luigi.retcodes.retcode().scheduling_error)
            return ended["code"]
        ended.update(status="success", code=0)
        return 0
    days = config.dates_between(first, last)
    from tasks import load, workflows

    if args.command == "load":
        task, root = ["LoadHistory", "--date", last.isoformat()], load.LoadHistory(last)
    elif args.command == "backfill":
        task = ["Backfill", "--start", first.isoformat(), "--date", last.isoformat()]
        root = workflows.Backfill(first, last)
    else:
        days = [args.date]
        if args.force:
            done, days = overwrite.invalidate(args.date)
            for line in done:
                console.say(line)
        day = args.date.isoformat()
        task, root = ["RunEtl", "--date", day, "--loaded-through", day], workflows.RunEtl(args.date, args.date)
        if len(days) > 1:
            task = ["RebuildReports", "--dates", json.dumps([day.isoformat() for day in days])]
            root = workflows.RebuildReports([day.isoformat() for day in days])
    console.plan(last)  # after a FORCE's removals: what this run will load
    tasks_done = False
    try:
        code = run_luigi(task, args.workers, scheduler_args, root)
        tasks_done = code == 0
        if tasks_done and args.command == "backfill":
            # Its builds tested the rows they wrote; a backfill ends with a check of every row.
            code = run_warehouse_tests(started_at)
        outcome = "done" if code == 0 else f"failed (exit {code})"
    except KeyboardInterrupt:
        code, outcome = INTERRUPTED, "interrupted"
    ended["code"] = code
    result = ended["result"] = console.summary(days, started_at)
    reports = []
    # The reports are made once the tasks are done, whatever the closing check of a backfill found.
    if tasks_done and args.command in ("run-etl", "backfill"):
        wanted = export.report_path(days[0] if args.command == "run-etl" else days[-1])
        if wanted in export.deliver(days):
            reports = [(wanted, console.report_rows(wanted))]
        else:
            # its records went between the export and now: another run reloaded an earlier date
            console.say(f"{wanted.name} was outdated by a reload (FORCE=1) of an earlier date while this run ran")
            code = ended["code"] = luigi.retcodes.retcode().task_failed
            outcome = f"failed (exit {code})"
    console.print_summary(result, days, outcome, reports)
    outdated = overwrite.outdated_reports() if args.command in ("run-etl", "backfill") else []
    if outdated:
        # Their records are gone, so no plain run would rebuild them; a forced run of the first does.
        console.say(
            f"the reports of {', '.join(map(str, outdated))} were outdated by a reload (FORCE=1) and are not"
            f" rebuilt yet: once any cause is fixed, `make run-etl DATE={outdated[0]} FORCE=1` rebuilds them"
        )
    if reports and args.command == "run-etl":
        console.print_report(reports[0][0])
    ended["status"] = "success" if code == 0 else outcome.split(" ")[0]
    return code


if __name__ == "__main__":
    sys.exit(main())
