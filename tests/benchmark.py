"""Load benchmark (`make bench`): speed and memory of the staging load on generated data.

Measures the wall time and rows per second of download + load of every date (LoadHistory, run by
Luigi's local scheduler in this process with one worker, as `python -m tasks load` does), the
process's peak RSS (the load streams rows with COPY, so it should stay flat whatever the input
size, which is printed beside it), and with --with-dbt the time of `dbt build` for the last date
(RunDbt). Checks the result while at it: every date's staging.event partition holds exactly the
events generated for it, nothing is rejected, every date has its organizations. Prints a table,
and exits 1 when a check fails or a target below is missed.

Reads its flags and ETL_DATABASE_URL. Writes one temporary folder (the generated source via
`python -m tasks.generate bench`, the pipeline's data_dir and, without ETL_DATABASE_URL, an embedded
PostgreSQL), removed at the end with that server stopped; with --json PATH, the results there.
ETL_DATABASE_URL, when set, must name a scratch database without the pipeline's schemas: the bench
creates them and drops them again, and refuses to start when one exists.

    .venv/bin/python tests/benchmark.py [--events-per-day N] [--days N] [--layout daily|one-file]
                                        [--gzip|--no-gzip] [--with-dbt] [--json PATH]
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Targets, set with a margin of about 3 from what the default run (7 days x 20,000 events, daily
# gzip) measured on a 2-core machine with other work running: 36,000-53,000 rows/s (47,000
# typical) and 49-50 MiB peak RSS, 48 MiB of it before the first load (Python, Luigi, psycopg2).
# The peak stayed at 50 MiB from 1,000 to 1,400,000 events and for 1,000,000 events in one
# partition, so MAX_PEAK_RSS_MIB holds for any size.
MIN_ROWS_PER_SECOND = 15_000  # download + load, staging.event rows per second of wall time
MAX_PEAK_RSS_MIB = 150  # peak RSS of this process, which runs Luigi and every load
# The throughput target is checked on the daily layout from this many events on. Below it, fixed
# costs (Luigi, a connection per task: tenths of a second) dominate; the one-file layout reads the
# whole file for every date, so its rows per second fall with the number of days by design.
MIN_EVENTS_FOR_THROUGHPUT = 100_000

START = datetime.date(2024, 1, 1)
ORGS = 100


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def generate(source: Path, args, end: datetime.date) -> int:
    """Write the data set with tasks.generate in a child process (its memory is not ours); returns events."""
    command = [sys.executable, "-m", "tasks.generate", "bench", "--out", str(source),
               "--start", START.isoformat(), "--end", end.isoformat(), "--events-per-day", str(args.events_per_day),
               "--layout", args.layout, "--orgs", str(ORGS)] + (["--gzip"] if args.gzip else [])
    output = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    lines = int(re.search(r"(\d+) files, (\d+) lines", output)[2])  # the generator's last line
    return lines - ORGS  # orgs.json holds ORGS lines, the rest are events


def configure(tmp: Path, args) -> None:
    """Point the pipeline at the generated source and a private data_dir (env and an extra luigi.cfg)."""
    import luigi.configuration

    os.environ["ETL_SOURCE_URL"] = str(tmp / "source")
    os.environ["ETL_DATA_DIR"] = str(tmp / "work")
    os.environ["ETL_HISTORY_START"] = START.isoformat()
    suffix = ".json.gz" if args.gzip else ".json"
    events_key = "events/date={date}/" if args.layout == "daily" else "events" + suffix
    cfg = tmp / "bench.cfg"
    cfg.write_text(f"[source]\nevents_key = {events_key}\norgs_key = orgs.json\n")
    luigi.configuration.add_config_path(str(cfg))


def query(sql: str):
    from tasks import database

    with database.transaction() as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def check(days, events_per_day: int) -> list:
    """What is wrong with staging after the load; empty when it holds exactly what was generated."""
    problems = []
    per_date = dict(query("select date, count(*) from staging.event group by date"))
    expected = {day: events_per_day for day in days}
    if per_date != expected:
        wrong = sorted(set(per_date) | set(expected))
        problems += [f"staging.event {day}: {per_date.get(day, 0)} rows, generated {expected.get(day, 0)}"
                     for day in wrong if per_date.get(day, 0) != expected.get(day, 0)][:5]
    rejected = query("select count(*) from staging.event_rejected")[0][0]
    if rejected:
        problems.append(f"staging.event_rejected: {rejected} rows, the generator writes only valid lines")
    orgs = dict(query("select date, count(*) from staging.organization group by date"))
    if orgs != {day: ORGS for day in days}:
        problems.append(f"staging.organization: {sorted(orgs.items())[:3]}..., expected {ORGS} rows per date")
    marked = query("select coalesce(sum(row_count), 0) from etl.marker where target = 'staging.event'")[0][0]
    if marked != events_per_day * len(days):
        problems.append(f"etl.marker counts {marked} staging.event rows, generated {events_per_day * len(days)}")
    return problems


def build(task):
    """Run `task` and what it needs with Luigi's local scheduler in this process; None on success, else why not."""
    import luigi
    from luigi.execution_summary import LuigiStatusCode

    outcome = luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING", detailed_summary=True)
    if outcome.status in (LuigiStatusCode.SUCCESS, LuigiStatusCode.SUCCESS_WITH_RETRY):
        return None
    return f"{task}: {outcome.status.value[1]} (Luigi's log above says which)"


def run(args, tmp: Path, result: dict) -> list:
    """The benchmark proper; fills `result` and returns the failures."""
    from tasks import config, database
    from tasks.load import LoadHistory

    days = config.dates_between(START, START + datetime.timedelta(days=args.days - 1))
    end = days[-1]
    started = time.perf_counter()
    generated = generate(tmp / "source", args, end)
    result["generate_s"] = time.perf_counter() - started
    result["events"] = generated
    result["input_bytes"] = folder_bytes(tmp / "source")
    if generated != args.events_per_day * args.days:
        return [f"the generator reports {generated} events, asked for {args.events_per_day * args.days}"]

    started = time.perf_counter()
    database.database_url()  # starts the embedded server when there is no URL; not part of the load's time
    result["database_start_s"] = time.perf_counter() - started
    result["rss_before_load_mib"] = peak_rss_mib()

    started = time.perf_counter()
    failed = build(LoadHistory(date=end, start=START))
    result["load_s"] = time.perf_counter() - started
    result["peak_rss_mib"] = peak_rss_mib()
    result["rows_per_s"] = generated / result["load_s"]
    if failed:
        return [failed]
    failures = check(days, args.events_per_day)
    result["staging_bytes"] = query("select pg_total_relation_size('staging.event')")[0][0]

    if args.with_dbt:
        from tasks.transform import RunDbt

        started = time.perf_counter()
        failed = build(RunDbt(date=end))
        result["dbt_s"] = time.perf_counter() - started
        if failed:
            failures.append(failed)

    if throughput_checked(args) and result["rows_per_s"] < MIN_ROWS_PER_SECOND:
        failures.append(f"load throughput {result['rows_per_s']:,.0f} rows/s < target {MIN_ROWS_PER_SECOND:,}")
    if result["peak_rss_mib"] > MAX_PEAK_RSS_MIB:
        failures.append(f"peak RSS {result['peak_rss_mib']:.0f} MiB > target {MAX_PEAK_RSS_MIB} MiB")
    return failures


def throughput_checked(args) -> bool:
    return args.layout == "daily" and args.events_per_day * args.days >= MIN_EVENTS_FOR_THROUGHPUT


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(args, result: dict, failures: list) -> None:
    mib = 1 << 20
    rows = [
        ("data set", f"{args.days} days x {args.events_per_day:,} events/day, {args.layout} layout"
                     f"{', gzip' if args.gzip else ''}", ""),
        ("input", f"{result.get('events', 0):,} events, {result.get('input_bytes', 0) / mib:.1f} MiB on disk"
                  f" (generated in {result.get('generate_s', 0):.1f} s)", ""),
        ("database", f"{result['database']}, ready in {result.get('database_start_s', 0):.1f} s", ""),
    ]
    if "load_s" in result:
        rows += [
            ("download+load", f"{result['load_s']:.1f} s, {result['rows_per_s']:,.0f} rows/s",
             f">= {MIN_ROWS_PER_SECOND:,} rows/s  {verdict(result['rows_per_s'] >= MIN_ROWS_PER_SECOND)}"
             if throughput_checked(args) else "not checked: needs the daily layout and >= "
             f"{MIN_EVENTS_FOR_THROUGHPUT:,} events"),
            ("peak RSS", f"{result['peak_rss_mib']:.0f} MiB ({result['rss_before_load_mib']:.0f} MiB before the load)",
             f"<= {MAX_PEAK_RSS_MIB} MiB  {verdict(result['peak_rss_mib'] <= MAX_PEAK_RSS_MIB)}"),
        ]
    if "staging_bytes" in result:
        rows.append(("staging.event", f"{result['staging_bytes'] / mib:.1f} MiB in PostgreSQL", ""))
    if "dbt_s" in result:
        rows.append(("dbt build", f"{result['dbt_s']:.1f} s for {result['last_date']}", ""))
    for name, value, target in rows:
        print(f"{name:<15} {value:<58} {target}".rstrip())
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAIL")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-day", type=int, default=20_000, help="events per day (default 20,000)")
    parser.add_argument("--days", type=int, default=7, help=f"days from {START} (default 7)")
    parser.add_argument("--layout", choices=("daily", "one-file"), default="daily", help="source layout (default daily)")
    parser.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=True, help="gzip the events (default yes)")
    parser.add_argument("--with-dbt", action="store_true", help="also time dbt build for the last date")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.events_per_day < 1 or args.days < 1:
        parser.error("--events-per-day and --days must be positive")

    os.chdir(ROOT)  # luigi.cfg is read from the working directory
    sys.path.insert(0, str(ROOT))
    from tasks import config, database

    tmp = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    try:
        configure(tmp, args)
        url = config.database_url_setting()
        found = database.pipeline_schemas(url) if url else []
        if found:
            print(f"error: {config.redact(url)} already has schemas {', '.join(found)}; "
                  "ETL_DATABASE_URL must name a scratch database without them", file=sys.stderr)
            return 2
        result = {"events_per_day": args.events_per_day, "days": args.days, "layout": args.layout, "gzip": args.gzip,
                  "last_date": (START + datetime.timedelta(days=args.days - 1)).isoformat(),
                  "database": config.redact(url) if url else "embedded PostgreSQL",
                  "targets": {"min_rows_per_s": MIN_ROWS_PER_SECOND, "max_peak_rss_mib": MAX_PEAK_RSS_MIB,
                              "min_events_for_throughput": MIN_EVENTS_FOR_THROUGHPUT}}
        try:
            failures = run(args, tmp, result)
        except Exception as err:  # report what was measured so far, then fail
            failures = [f"{type(err).__name__}: {err}"]
        finally:
            if url:
                database.drop_pipeline_schemas(url)  # only what the bench created: none existed before
            else:
                database.stop_embedded(database.pgdata_dir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, result, failures)
    result["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
