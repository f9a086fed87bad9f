"""Export: the cohort report of date D as CSV (and its heatmap), and the whole-chain task RunEtl.

Reads `reporting.cohort_summary` rows with as_of_date = D (built by tasks.transform); writes
`<data_dir>/reports/cohort_summary_<D>.csv` and `cohort_summary_<D>.png`, each atomically.
"""

import csv
import io

import luigi

from tasks import config, database
from tasks.transform import RunDbt

HEADER = ("cohort_month", "months_since_signup", "cohort_size", "active_users", "retention_rate")


def report_path(date, suffix: str = "csv"):
    return config.data_dir() / "reports" / f"cohort_summary_{date.isoformat()}.{suffix}"


def report_rows(date) -> list:
    """D's report rows in the contract's order, read in one read-only snapshot."""
    with database.transaction() as conn:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute(
                """
                select cohort_month, months_since_signup, cohort_size, active_users, retention_rate
                from reporting.cohort_summary
                where as_of_date = %s
                order by cohort_month, months_since_signup
                """,
                (date,),
            )
            return cur.fetchall()


def render_csv(rows) -> str:
    """The report's bytes: fixed header, `\\n` line ends, rates with exactly four decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for cohort_month, months, size, active, rate in rows:
        writer.writerow((cohort_month, months, size, active, f"{rate:.4f}"))
    return out.getvalue()


class ExportCohortSummary(luigi.Task):
    """Write D's cohort report CSV from reporting.cohort_summary."""

    date = luigi.DateParameter(description="report date D")

    def requires(self):
        return RunDbt(self.date)

    def output(self):
        return luigi.LocalTarget(str(report_path(self.date)))

    def run(self):
        rows = report_rows(self.date)
        self.output().makedirs()
        with self.output().temporary_path() as temporary:
            with open(temporary, "w", newline="") as out:
                out.write(render_csv(rows))
        self.set_status_message(f"{len(rows)} report rows written")


class DrawCohortHeatmap(luigi.Task):
    """Draw D's retention heatmap next to its CSV."""

    date = luigi.DateParameter(description="report date D")

    def requires(self):
        return ExportCohortSummary(self.date)

    def output(self):
        return luigi.LocalTarget(str(report_path(self.date, "png")))

    def run(self):
        # matplotlib is imported only by the task that draws, not by every worker that schedules.
        from tasks.heatmap import write_heatmap

        write_heatmap(self.input().path, self.output().path)


class RunEtl(luigi.WrapperTask):
    """The whole chain for D: download, stage, dbt build, report and heatmap."""

    date = luigi.DateParameter(description="run date D")

    def requires(self):
        return DrawCohortHeatmap(self.date)


class Backfill(luigi.WrapperTask):
    """RunEtl for every date from `start` to `date`: loads run in parallel, dbt builds one by one."""

    start = luigi.DateParameter(description="first date")
    date = luigi.DateParameter(description="last date")

    def requires(self):
        return [RunEtl(day) for day in config.dates_between(self.start, self.date)]
