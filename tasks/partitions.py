"""The partition date of a task, batchable: Luigi may hand one task run many pending dates.

Reads and writes nothing. A task declares `date = PartitionDate()`; scheduled alone it runs for
one date, and when the scheduler batches several pending runs of the same task family (Luigi's
batch mode, `batch_method`), the one run receives every date as a sorted tuple. Each date keeps
its own task id, output and status in the scheduler; `dates(task)` gives the tuple either way.
"""

import datetime

import luigi


def _sorted_dates(values) -> tuple:
    dates = set()
    for value in values:
        dates.update(value if isinstance(value, tuple) else (value,))
    return tuple(sorted(dates))


class PartitionDate(luigi.DateParameter):
    """A date, or in a batched run the tuple of dates (serialised as `D1,D2,…`)."""

    def __init__(self, **kwargs):
        super().__init__(batch_method=_sorted_dates, **kwargs)

    def parse(self, s):
        if "," in s:
            return tuple(super(PartitionDate, self).parse(part) for part in s.split(","))
        return super().parse(s)

    def serialize(self, dt):
        if isinstance(dt, tuple):
            return ",".join(super(PartitionDate, self).serialize(day) for day in dt)
        return super().serialize(dt)

    def next_in_enumeration(self, value):
        # Luigi's summary shows runs of consecutive dates as a range; a batch is not one date.
        return None if isinstance(value, tuple) else super().next_in_enumeration(value)

    def normalize(self, value):
        if isinstance(value, (tuple, list)):
            value = _sorted_dates(super(PartitionDate, self).normalize(day) for day in value)
            return value[0] if len(value) == 1 else value  # one date is a date, whatever it came in
        return super().normalize(value)


class LoadedThrough(luigi.DateParameter):
    """The date staging must be loaded up to before a build, when later than the build's own dates.

    A backfill gives its last date to every report of its range, so the first builds do not start
    on the first loaded dates and build again when the rest arrive: one build takes the range. A
    report never depends on later partitions, so waiting for them changes no report. Default
    (date.min): the build's own dates decide. Part of the task's id: luigid keeps the parameters a
    task id first came with, and hands those out (in batches, to other workers), so a build that
    shared its id with a backfill's of a later, missing date waited for that date and failed.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("description", "load staging up to this date first (a backfill's last)")
        super().__init__(default=datetime.date.min, **kwargs)

    def serialize(self, dt):
        # strftime writes year 1 as "1-01-01", which parse() refuses; luigid and batches parse it back.
        return dt.isoformat()


def dates(task) -> tuple:
    """The dates a task run covers: its one date, or every date of its batch."""
    value = task.date
    return value if isinstance(value, tuple) else (value,)


def previous_day(date: datetime.date) -> datetime.date:
    return date - datetime.timedelta(days=1)
