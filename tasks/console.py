"""What a run tells the terminal: a line per stage as it goes, one line per failure, then a summary.

Reads the tasks' outcomes (Luigi events, in whichever local process runs the task) and, for the
summary, the records of the run's dates in PostgreSQL (ledgers, builds, reports), so tasks run by
other workers count too. Writes to stdout only; Luigi's own logging goes to the run's log file.
"""

import sys
import time

import luigi

from tasks import config, db, luigid, staging
from tasks.partitions import dates

_run = {"log": None, "started": time.monotonic()}


def configure(log_path) -> None:
    _run["log"] = log_path
    _run["started"] = time.monotonic()


def say(line: str) -> None:
    if sys.stdout.isatty():
        line = "\r\033[K" + line
    print(line, flush=True)


def status(line: str) -> None:
    """A progress line that the next one replaces, on a terminal only (logs keep one line per step)."""
    if sys.stdout.isatty():
        print("\r\033[K" + line[:150], end="", flush=True)


def span(days) -> str:
    """Dates as a reader scans them: a range reads as consecutive, so one with gaps says so."""
    days = sorted(days)
    if len(days) == 1:
        return f"{days[0]}"
    between = (days[-1] - days[0]).days + 1
    of = "" if between == len(days) else f" of {between}"
    return f"{days[0]} … {days[-1]} ({len(days)}{of} dates)"


def _count(value) -> str:
    return f"{value:,}"


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _stage_done(task):
    line = getattr(task, "summary", None)
    if line:
        say(line)


def failed(what: str, lines, log) -> None:
    """A failure as the runbook describes it: one `FAILED <what>: <line>` per line, then its log."""
    for line in lines:
        say(f"FAILED {what}: {line}")
    say(f"       details: {log}")


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _stage_failed(task, exception):
    if luigid.lost_by(exception):
        return  # the task only lost luigid, as the whole run did: its end says so in one line
    what = f"{task.task_family} {span(dates(task)) if hasattr(task, 'date') else ''}"
    failed(what, str(exception).strip().splitlines() or [type(exception).__name__], _run["log"])


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_MISSING)
def _waiting(task):
    output = task.output()
    say(f"waiting: {task.task_family}({getattr(task, 'date', '')}) has not arrived: {getattr(output, 'key', output)}")


def summary(days, started_at) -> dict:
    """What the run loaded and built for its dates, from the records in PostgreSQL: the partitions
    up to its last date loaded since it started (a run that loads dates up to D reads no later
    ones; one running beside it may have loaded some of the same, which both then count). The
    events' figures at the top (etl.run records them), the organizations' under "organizations"."""
    with db.transaction() as conn, conn.cursor() as cur:
        result = {**_loads(cur, staging.EVENTS, started_at, max(days)), "dbt": None}
        result["organizations"] = _loads(cur, staging.ORGANIZATIONS, started_at, max(days))
        if db.exists(cur, "etl.build"):
            # every date of a build carries the same results: one per build
            cur.execute(
                "select distinct built_at, results from etl.build where built_at >= %s and results is not null",
                (started_at,),
            )
            builds = [row[1] for row in cur.fetchall()]
            if builds:
                result["dbt"] = {
                    "statuses": {
                        key: sum(b["statuses"].get(key, 0) for b in builds)
                        for key in {k for b in builds for k in b["statuses"]}
                    },
                    "warnings": [w for b in builds for w in b["warnings"]],
                }
    return result


def _loads(cur, dataset, started_at, last) -> dict:
    """One dataset's partitions up to `last` loaded since `started_at`, their rows and rejected
    lines, those without rows, and the dates whose rejects are stored without a load."""
    result = {"rows": 0, "rejects": 0, "loaded": 0, "empty": [], "refused": []}
    if not db.exists(cur, dataset.ledger_table):
        return result
    cur.execute(
        f"""
        select partition_date, row_count, reject_count from {dataset.ledger_table}
        where loaded_at >= %s and partition_date <= %s order by partition_date
        """,
        (started_at, last),
    )
    loaded = cur.fetchall()
    # A line whose day cannot be read is a reject of every partition: count each line once.
    cur.execute(
        f"select count(distinct (source_key, line_number)) from {dataset.rejected.name} where date = any(%s)",
        ([row[0] for row in loaded],),
    )
    result.update(
        loaded=len(loaded),
        rows=sum(row[1] for row in loaded),
        rejects=cur.fetchone()[0],
        empty=[row[0] for row in loaded if row[1] == 0],
    )
    # Rejects of a date with no ledger row: a load found too many and committed only them.
    cur.execute(
        f"select date, count(distinct (source_key, line_number)) from {dataset.rejected.name} as bad"
        f" where date <= %s and not exists (select from {dataset.ledger_table}"
        " where partition_date = bad.date) group by date order by date",
        (last,),
    )
    result["refused"] = cur.fetchall()
    return result


def plan(last) -> None:
    """Say which dates up to `last` have a partition to load (events, organizations or both)."""
    days = config.dates_between(config.history_start(), last)
    missing = sorted({day for dataset in staging.DATASETS for day in set(days) - dataset.ledger.done(days)})
    if missing:
        say(f"to load: {span(missing)}")


def print_summary(result: dict, days, outcome: str, reports) -> None:
    took = time.monotonic() - _run["started"]
    say(f"{outcome} in {took:.1f} s.")
    organizations = result["organizations"]
    if result["loaded"]:
        say(_loaded_line(staging.EVENTS, "events", result))
        if result["empty"]:
            shown = ", ".join(map(str, result["empty"][:5])) + (" …" if len(result["empty"]) > 5 else "")
            say(f"  no events in the source for {len(result['empty'])} date(s): {shown}")
    elif outcome == "done" and not organizations["loaded"]:
        say("  nothing to load: every partition was already loaded")
    # The organizations go with every date unremarked, unless they had bad lines or came alone.
    if organizations["rejects"] or (organizations["loaded"] and not result["loaded"]):
        say(_loaded_line(staging.ORGANIZATIONS, "organizations", organizations))
    for dataset, loads in ((staging.EVENTS, result), (staging.ORGANIZATIONS, organizations)):
        if loads["refused"]:
            # Over max_reject_ratio, or a reload (FORCE=1) that failed otherwise: the FAILED lines say which.
            shown = ", ".join(
                f"{day} ({_count(count)} rejected line{'' if count == 1 else 's'})"
                for day, count in loads["refused"][:5]
            )
            more = f" and {len(loads['refused']) - 5} more dates" if len(loads["refused"]) > 5 else ""
            say(f"  not loaded: {shown}{more}, in {dataset.rejected.name}; the FAILED lines above say why")
    if result["dbt"]:
        statuses = ", ".join(f"{count} {name.upper()}" for name, count in sorted(result["dbt"]["statuses"].items()))
        say(f"  dbt: {statuses}")
        dbt_warnings(result["dbt"]["warnings"])
    for path, rows in reports:
        say(f"  report {path} ({rows} rows; heatmap .png and .svg beside it)")
    say(f"  log: {_run['log']}")


def _loaded_line(dataset, name: str, loads: dict) -> str:
    where = f" (select * from {dataset.rejected.name} order by date, line_number)" if loads["rejects"] else ""
    return (
        f"  loaded {loads['loaded']} date(s) of {name}: {_count(loads['rows'])} rows, "
        f"{_count(loads['rejects'])} rejected line{'' if loads['rejects'] == 1 else 's'}{where}"
    )


def dbt_warnings(warnings: list) -> None:
    """Each warning of dbt's on a line of its own (tasks.transform.results_summary)."""
    for warning in warnings:
        say(f"  dbt WARN {warning['node']}: {warning['message']}")


def report_rows(path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1)


# A report of decades (one event dated 1970) is tens of thousands of rows: the file holds them all.
MAX_PRINTED_ROWS = 1000


def print_report(path) -> None:
    """The report's CSV on standard output: its header and first MAX_PRINTED_ROWS rows."""
    lines = path.read_text().splitlines(keepends=True)
    print("".join(lines[: MAX_PRINTED_ROWS + 1]), end="")
    if len(lines) > MAX_PRINTED_ROWS + 1:
        print(f"… {len(lines) - MAX_PRINTED_ROWS - 1} more rows in {path}")
