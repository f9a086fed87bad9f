"""Export: each report date's cohort report as CSV and its heatmap (PNG and SVG).

Reads `reporting.cohort_summary` rows of the dates (built by tasks.transform). Writes each file's
bytes into `etl.report` (its completion record, which every machine can read) and into
`<data_dir>/reports/cohort_summary_<D>.<csv|png|svg>`, atomically; `deliver` writes the files of
given dates on the machine that asked for them, whichever worker exported them.
"""

import csv
import io
import os

import luigi

from tasks import completion, config, console, db
from tasks.partitions import LoadedThrough, PartitionDate, dates
from tasks.transform import BuildWarehouse

HEADER = ("cohort_month", "months_since_signup", "cohort_size", "active_users", "retention_rate")
PICTURES = ("png", "svg")
KINDS = ("csv",) + PICTURES  # every file a report date has


def report_path(date, kind: str = "csv"):
    return config.data_dir() / "reports" / f"cohort_summary_{date.isoformat()}.{kind}"


def report_rows(days) -> dict:
    """Each date's report rows in the contract's order, read in one read-only snapshot."""
    with db.transaction() as conn:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute(
                """
                select as_of_date, cohort_month, months_since_signup, cohort_size, active_users, retention_rate
                from reporting.cohort_summary
                where as_of_date = any(%s)
                order by as_of_date, cohort_month, months_since_signup
                """,
                (list(days),),
            )
            rows = {day: [] for day in days}
            for as_of_date, *row in cur.fetchall():
                rows[as_of_date].append(row)
            return rows


def render_csv(rows) -> str:
    """The report's bytes: fixed header, `\\n` line ends, rates with exactly four decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for cohort_month, months, size, active, rate in rows:
        writer.writerow((cohort_month, months, size, active, f"{rate:.4f}"))
    return out.getvalue()


def write_file(path, content: bytes) -> None:
    """Write `path` through a temporary file renamed into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class OutdatedBuild(Exception):
    """The build a report was read from lost its records before the report was stored."""


def store(files: dict) -> None:
    """Record {(date, kind): bytes} in etl.report (one transaction) and write the local files."""
    days = sorted({day for day, _ in files})
    with db.transaction() as conn, conn.cursor() as cur:
        completion.ensure_tables(cur)
        # The build records must still be there: FORCE=1 removes them (and waits for this) when it
        # reloads a partition these reports read.
        cur.execute("select run_date from etl.build where run_date = any(%s) for share", (days,))
        outdated = set(days) - {row[0] for row in cur.fetchall()}
        if outdated:
            raise OutdatedBuild(
                f"the build of {console.span(outdated)} was outdated by a reload (FORCE=1) meanwhile:"
                " nothing exported; run it again"
            )
        cur.executemany(
            """
            insert into etl.report (run_date, kind, content) values (%s, %s, %s)
            on conflict (run_date, kind) do update set content = excluded.content, exported_at = now()
            """,
            [(day, kind, content) for (day, kind), content in files.items()],
        )
        cur.execute("delete from etl.outdated_report where run_date = any(%s)", (days,))
    for (day, kind), content in files.items():
        write_file(report_path(day, kind), content)


def stored(days, kind: str) -> dict:
    """{date: bytes} of the recorded files of a kind."""
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute(
            "select run_date, content from etl.report where run_date = any(%s) and kind = %s", (list(days), kind)
        )
        return {day: bytes(content) for day, content in cur.fetchall()}


def deliver(days) -> list:
    """Write the recorded report files of `days` here (another worker may have exported them);
    returns the paths of the CSVs recorded, in date order: a reload (FORCE=1) of an earlier date
    may have removed some since they were exported."""
    recorded = []
    for kind in KINDS:
        for day, content in stored(days, kind).items():
            path = report_path(day, kind)
            if not path.exists() or path.read_bytes() != content:
                write_file(path, content)
            if kind == "csv":
                recorded.append(day)
    return [report_path(day) for day in sorted(recorded)]


class ExportCohortSummary(luigi.Task):
    """Write each date's cohort report CSV from reporting.cohort_summary."""

    date = PartitionDate(description="report date D (a batch of dates when Luigi batches the runs)")
    loaded_through = LoadedThrough()

    def requires(self):
        return BuildWarehouse(dates(self), self.loaded_through)

    def output(self):
        return [completion.REPORTS.target(day, "csv") for day in dates(self)]

    def run(self):
        rows = report_rows(dates(self))
        store({(day, "csv"): render_csv(rows[day]).encode() for day in dates(self)})
        self.set_status_message(", ".join(f"{day}: {len(rows[day])} rows" for day in dates(self)))
        self.summary = f"exported the report of {console.span(dates(self))}"


class DrawCohortHeatmap(luigi.Task):
    """Draw each date's retention heatmap (PNG and SVG) from its exported CSV."""

    date = PartitionDate(description="report date D (a batch of dates when Luigi batches the runs)")
    loaded_through = LoadedThrough()

    @property
    def max_batch_size(self):
        # Drawing takes about 0.35 s a date, on one core: batches of a week's dates let several
        # workers draw side by side (one worker draws the batches one after another).
        return config.draw_batch_size()

    def requires(self):
        return ExportCohortSummary(dates(self), self.loaded_through)

    def output(self):
        return [completion.REPORTS.target(day, kind) for day in dates(self) for kind in PICTURES]

    def run(self):
        # matplotlib is imported only by the task that draws, not by every worker that schedules.
        from tasks import heatmap

        csvs = stored(dates(self), "csv")
        store(
            {
                (day, kind): heatmap.render(csvs[day].decode(), day.isoformat(), kind)
                for day in dates(self)
                for kind in PICTURES
            }
        )
