"""Workflows: the chains of tasks a command asks for.

Reads and writes nothing itself. `RunEtl(D)` is `make run-etl DATE=D`: download and load every date
from history_start to D, build the warehouse, export D's report. `Backfill(FROM, TO)` is the same
for every date of a range; Luigi batches the dates of each step into few task runs.
"""

import luigi

from tasks import config
from tasks.export import DrawCohortHeatmap
from tasks.partitions import LoadedThrough


class RunEtl(luigi.WrapperTask):
    """The whole chain for D: download, stage, build the warehouse, export the report and heatmap."""

    date = luigi.DateParameter(description="run date D")
    loaded_through = LoadedThrough()

    def requires(self):
        return DrawCohortHeatmap(self.date, self.loaded_through)


class Backfill(luigi.WrapperTask):
    """RunEtl for every date from `start` to `date`."""

    start = luigi.DateParameter(description="first date")
    date = luigi.DateParameter(description="last date")

    def requires(self):
        # Every date's build waits for the whole range to be loaded: one build for the range.
        return [RunEtl(day, loaded_through=self.date) for day in config.dates_between(self.start, self.date)]


class RebuildReports(luigi.WrapperTask):
    """RunEtl for each of `dates`: a forced date and every report after it that existed (FORCE=1)."""

    dates = luigi.ListParameter(description="report dates, YYYY-MM-DD")

    def requires(self):
        days = [config.parse_date(day) for day in self.dates]
        return [RunEtl(day, loaded_through=max(days)) for day in days]
