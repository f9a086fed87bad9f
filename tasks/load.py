"""Load: the judged lines of each date's source objects into its staging partition, atomically.

Reads the objects a download recorded (`etl.download`: landed local copies, or S3 streamed
directly). Each object is read once per task run, however many dates it covers: its lines are
routed to their partitions in that pass (daily layout: the object's date; one-file layout: the
UTC day of `received_at`; organizations: every date). Writes, per partition and in one
transaction, its `staging.*` rows (COPY), its rejected lines, its source objects' keys
(`staging.*_source_object`), and its row in the partition ledger (`staging.*_partition`), the
load's completion record.
"""

import logging
import tempfile
from dataclasses import dataclass, field

import luigi
import psycopg2
from psycopg2 import errors

from tasks import config, console, db, records, staging
from tasks.extract import DownloadEvents, DownloadOrganizations, SourceError, SourceObject, downloaded, source
from tasks.partitions import PartitionDate, dates, previous_day

CHUNK_BYTES = 1 << 18  # what psycopg2 asks the reader for; the reader hands over a block's rows, whatever the size
SPOOL_BUFFER = 1 << 16  # bytes a routed partition keeps in memory before they go to the spool file
SUMMARIZE_ROWS = 5000  # about one range of a BRIN index (128 pages) of events; see _DateIndex


class RejectRatioExceeded(Exception):
    """Too many bad lines: the partition's good rows are not loaded, its rejects are recorded."""


class DownloadReplaced(Exception):
    """A partition's download changed while the load read it: the run that changed it loads it."""


class LoadFailed(Exception):
    """Partitions of a task run failed; the others committed. The message names each failure."""


@dataclass
class Partition:
    """One partition of a load: its load_id, what was read for it, and where its rows wait."""

    date: object
    load_id: int
    lines_read: int = 0
    rows: int = 0
    rejects: int = 0
    first_rejects: list = field(default_factory=list)  # (source key, line number, reason)
    skipped: bool = False  # loaded meanwhile by another run: nothing to do


class Spool:
    """COPY rows of many partitions written in one pass: each partition keeps up to SPOOL_BUFFER
    bytes in memory, then hands them to one shared temporary file as a chunk it reads back later,
    so memory stays flat whatever the size of the input."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the spool, closed by close()
        self._buffers = {}  # date -> [row bytes]
        self._sizes = {}
        self._chunks = {}  # date -> [(offset, length)]

    def write(self, date, rows: bytes) -> None:
        self._buffers.setdefault(date, []).append(rows)
        self._sizes[date] = self._sizes.get(date, 0) + len(rows)
        if self._sizes[date] >= SPOOL_BUFFER:
            data = b"".join(self._buffers.pop(date))
            self._file.seek(0, 2)
            self._chunks.setdefault(date, []).append((self._file.tell(), len(data)))
            self._file.write(data)
            self._sizes[date] = 0

    def read(self, date):
        for offset, length in self._chunks.get(date, []):
            self._file.seek(offset)
            yield self._file.read(length)
        if self._buffers.get(date):
            yield b"".join(self._buffers[date])

    def close(self) -> None:
        self._file.close()


class _Reader:
    """A file-like view of an iterator of COPY chunks: each read hands over the next chunk whole,
    so the cost stays linear however long one line is. A failure of the iterator (the source:
    a truncated gzip, a cut connection) is kept in `error`, since psycopg2 passes it on only as
    text inside its own COPY error."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self.error = None

    def read(self, size=-1) -> bytes:
        try:
            return next(self._chunks, b"")
        except Exception as err:
            self.error = err
            raise

    def readline(self, size=-1) -> bytes:
        return self.read(size)


class _Group:
    """Objects shared by one or more partitions, read once, every line routed to its partitions."""

    def __init__(self, dataset: staging.Dataset, objects, partitions: list, route_by_day: bool):
        self.dataset = dataset
        self.objects = objects
        # Every partition of the group has these objects, numbered in key order (Dataset.objects_ddl).
        self.keys = sorted({obj.key for obj in objects})
        self._object_numbers = {key: number for number, key in enumerate(self.keys)}
        self.partitions = {partition.date: partition for partition in partitions}
        self.route_by_day = route_by_day
        self.rejects = Spool()
        self._first_seen = {}  # _check_unique's values seen, by the day routed to (None: every day)
        self._writers = {}  # (table, partition date, source key) -> row function bound to that origin
        self.history_start = config.history_start()
        self.before_start = {}  # source key -> lines dated before history_start

    def blocks(self):
        """(partition, source key, valid lines) for every block of the source and every partition
        with valid lines in it; rejects go to the spool as they come."""
        src = source()
        lines_read = 0
        for obj in self.objects:
            with src.open(obj) as stream:
                for block in records.read_blocks(stream, obj.key, self.dataset.required):
                    lines_read += len(block)
                    yield from self._route(obj.key, block)
        # Every line read for a load is the ratio's base: all lines of the shared objects.
        for partition in self.partitions.values():
            partition.lines_read = lines_read

    def _route(self, key: str, block: list):
        if not self.route_by_day and not self.dataset.unique_field:
            # The usual case (a day's own objects): every line belongs to every partition, as is.
            rejects = [line for line in block if line.reason is not None]
            valid = [line for line in block if line.reason is None] if rejects else block
            for partition in self.partitions.values():
                partition.rows += len(valid)
                for line in rejects:
                    self._reject(partition, key, line)
                if valid:
                    yield partition, key, valid
            return
        routed = {}
        for line in block:
            targets = self._targets(line)
            if targets:
                line = self._check_unique(key, line)
            elif line.day is not None and line.day < self.history_start:
                self.before_start[key] = self.before_start.get(key, 0) + 1
            for partition in targets:
                if line.reason is None:
                    partition.rows += 1
                    routed.setdefault(partition.date, []).append(line)
                else:
                    self._reject(partition, key, line)
        for date, lines in routed.items():
            yield self.partitions[date], key, lines

    def _targets(self, line):
        if self.route_by_day and line.day is not None:
            # A line whose UTC day is readable belongs to that day only (contract, sections 2 and 4).
            partition = self.partitions.get(line.day)
            return (partition,) if partition else ()
        # Everything in a day's objects, every organization, and every reject whose day cannot be
        # read belongs to every partition the objects are read for.
        return self.partitions.values()

    def _check_unique(self, key: str, line):
        """The line, or the line as a reject when an earlier valid line of its partitions had its value."""
        name = self.dataset.unique_field
        if name and line.is_valid:
            # One verdict serves every partition the line goes to, since they all read the same lines
            # before it (routed by day, the lines of its day): one list of values per day routed to,
            # not one per partition, which would grow with the dates of a backfill.
            first_seen = self._first_seen.setdefault(line.day if self.route_by_day else None, {})
            value = line.record[name]
            if value in first_seen:
                return line._replace(reason=f"duplicate {name} (first at {first_seen[value]})")
            first_seen[value] = f"{key} line {line.number}"
        return line

    def _reject(self, partition: Partition, key: str, line) -> None:
        partition.rejects += 1
        if len(partition.first_rejects) < 5:
            partition.first_rejects.append((key, line.number, line.reason))
        self.rejects.write(partition.date, self.copy_rows(self.dataset.rejected, partition, key, [line]))

    def copy_rows(self, table: staging.Table, partition: Partition, key: str, lines) -> bytes:
        """The lines' rows of the table, in COPY's binary format."""
        writer = self._writers.get((table.name, partition.date, key))
        if writer is None:
            origin = staging.Origin(partition.date, key, partition.load_id, self._object_numbers[key])
            writer = self._writers[(table.name, partition.date, key)] = table.bind(origin)
        # map keeps the per-line loop in C: the row function is the only Python per line.
        return b"".join(map(writer, lines))

    def close(self) -> None:
        self.rejects.close()


def _rows(group: _Group):
    """(partition, COPY rows) for every block of the group's valid lines."""
    table = group.dataset.table
    for partition, key, lines in group.blocks():
        yield partition, group.copy_rows(table, partition, key, lines)


def _load_group(conn, group: _Group, progress, date_index: "_DateIndex") -> list:
    """Commit every partition of the group; a failure of one partition does not undo the others."""
    partitions = list(group.partitions.values())
    # One partition: COPY while reading the source, a block at a time, so that judging the next
    # block and the server's work on this one overlap. Several: their rows wait in a spool.
    spool = Spool() if len(partitions) > 1 else None
    try:
        if spool is None:
            batches = [(partitions[0], (data for _, data in _rows(group)))]
        else:
            for partition, data in _rows(group):
                spool.write(partition.date, data)
            batches = [(partition, spool.read(partition.date)) for partition in partitions]
        outcomes = []
        for partition, rows in batches:
            outcomes.append(_commit(conn, group, partition, rows, progress))
            date_index.wrote(partition.rows)
        return outcomes
    finally:
        if spool:
            spool.close()


class _DateIndex:
    """Keeps the date index of a load of many dates summarised as it writes.

    Each partition's load deletes its date first, through the date index, which skips only
    summarised pages: unsummarised, every delete of a task's next date read every page its earlier
    dates wrote, a cost that grew with the square of the dates a first run loads. Summarising costs
    a transaction of its own, so it runs once about a range of pages was written (SUMMARIZE_ROWS),
    not per date; a delete then reads at most the pages written since, besides its own date's.
    It is only a saving: when the index is busy (vacuum, another summary) or not the pipeline's
    to summarise, the load goes on without it."""

    def __init__(self, conn, dataset: staging.Dataset, dates: int):
        self.conn, self.dataset = conn, dataset
        self.many = dates > 1 and dataset.table.in_load_order  # the other date indexes are B-trees
        self.rows = 0  # written since the last summary

    def wrote(self, rows: int) -> None:
        self.rows += rows
        if not self.many or self.rows < SUMMARIZE_ROWS:
            return
        try:
            with self.conn, self.conn.cursor() as cur:
                # Give way within 100 ms, before a waiting lock would make autovacuum give way to it.
                cur.execute("set local lock_timeout = '100ms'")
                staging.summarize_date_index(cur, self.dataset.table)
            self.rows = 0
        except errors.LockNotAvailable:
            pass  # busy: the next date tries again
        except (errors.InsufficientPrivilege, errors.WrongObjectType) as err:
            self.many = False
            logging.getLogger(__name__).warning(
                "not summarising %s during this load: %s", self.dataset.table.date_index, err
            )


def _commit(conn, group: _Group, partition: Partition, rows, progress):
    """Replace the partition with its rows, rejects and ledger row, in one transaction.

    `rows` may still be reading the source, so the counts are final only once COPY has taken
    them all. Over the reject ratio only the rejects commit, and no ledger row is written.
    """
    dataset = group.dataset
    limit = config.max_reject_ratio()
    try:
        with conn, conn.cursor() as cur:
            db.lock_partition(cur, dataset.table.name, partition.date)
            cur.execute(
                f"select exists (select from {dataset.ledger_table} where partition_date = %s)", (partition.date,)
            )
            if cur.fetchone()[0]:
                partition.skipped = True  # another run loaded it while this one waited for the lock
                return partition
            # Under the lock a forced run takes to remove downloads (tasks/overwrite.py): rows read from
            # a download it replaced would be committed as current, and its own load would skip them.
            cur.execute(
                "select objects from etl.download where dataset = %s and partition_date = %s",
                (dataset.name, partition.date),
            )
            recorded = cur.fetchone()
            if recorded is None or [SourceObject(**obj) for obj in recorded[0]] != list(group.objects):
                return DownloadReplaced(
                    f"{dataset.table.name} {partition.date}: its download changed while this run read it (made"
                    " again by a FORCE=1 run, or by another run that found other objects); nothing of it is"
                    " committed here: run this command again"
                )
            # Through the date indexes, whatever the statistics say: before autovacuum has analysed a
            # new table (a first run), the planner reads all of it for each date (_DateIndex).
            cur.execute(
                "set local enable_seqscan = off;"
                + ";".join(
                    f"delete from {table} where date = %(date)s"
                    for table in (dataset.table.name, dataset.rejected.name, dataset.objects_table)
                ),
                {"date": partition.date},
            )
            cur.execute("savepoint before_rows")
            _copy(cur, dataset.table.copy_statement(), rows)
            over_limit = partition.lines_read and partition.rejects / partition.lines_read > limit
            if over_limit:
                cur.execute("rollback to savepoint before_rows")
            _copy(cur, dataset.rejected.copy_statement(), group.rejects.read(partition.date))
            if not over_limit:
                cur.execute(
                    f"insert into {dataset.objects_table} (date, object_number, source_key)"
                    " select %(date)s, number - 1, key"
                    " from unnest(%(keys)s::text[]) with ordinality as object (key, number);"
                    f"insert into {dataset.ledger_table} (partition_date, load_id, lines_read, row_count, reject_count)"
                    " values (%(date)s, %(load_id)s, %(lines_read)s, %(rows)s, %(rejects)s)",
                    {
                        "date": partition.date,
                        "keys": group.keys,
                        "load_id": partition.load_id,
                        "lines_read": partition.lines_read,
                        "rows": partition.rows,
                        "rejects": partition.rejects,
                    },
                )
        if over_limit:
            return RejectRatioExceeded(_ratio_message(dataset, group.keys, partition, limit))
        return partition
    finally:
        if progress:
            progress(partition)


def _copy(cur, statement: str, rows) -> None:
    """COPY the rows; a failure of the source while COPY reads it is raised as itself (its message
    names the object), not as COPY's text about it."""
    reader = _Reader(staging.copy_data(rows))
    try:
        cur.copy_expert(statement, reader, size=CHUNK_BYTES)
    except psycopg2.Error:
        if reader.error is not None:
            raise reader.error from None
        raise


def _ratio_message(dataset, keys, partition: Partition, limit: float) -> str:
    first = "; ".join(f"{key} line {number}: {reason}" for key, number, reason in partition.first_rejects)
    return (
        f"{dataset.table.name} {partition.date}: {partition.rejects} of {partition.lines_read} lines read from "
        f"{', '.join(keys)} are bad ({partition.rejects / partition.lines_read:.2%} "
        f"> max_reject_ratio {limit}); first bad lines: {first}. Every one is in {dataset.rejected.name}. "
        f"Fix the source and reprocess the date (make run-etl DATE={partition.date} FORCE=1, which takes the"
        " earlier dates refused from the same source with it), or raise [etl] max_reject_ratio in luigi.cfg."
    )


def load_partitions(dataset: staging.Dataset, days, route_by_day: bool, progress=None) -> list:
    """Load partitions `days` of the dataset from their recorded downloads; returns a Partition per
    date. Partitions that share objects are read in one pass. Raises LoadFailed, after the others
    committed, when partitions failed (over the reject ratio, unreadable source)."""
    manifests = downloaded(dataset.name, days)
    by_objects = {}
    for day in days:
        by_objects.setdefault(manifests[day], []).append(day)
    conn = db.connect()
    results, failures = [], []
    before_start = {}  # source key -> lines dated before history_start, which no load takes
    try:
        with db.guarded(conn):
            staging.ensure_tables(conn)
            conn.commit()
            with conn.cursor() as cur:
                cur.execute("select nextval('staging.load_id_seq') from generate_series(1, %s)", (len(days),))
                load_ids = iter(row[0] for row in cur.fetchall())
            conn.commit()
            date_index = _DateIndex(conn, dataset, len(days))
            for objects, group_days in by_objects.items():
                group = _Group(dataset, objects, [Partition(day, next(load_ids)) for day in group_days], route_by_day)
                try:
                    outcomes = _load_group(conn, group, progress, date_index)
                    for key, count in group.before_start.items():  # counted in a whole read only
                        before_start[key] = max(before_start.get(key, 0), count)  # each group read every line
                except (SourceError, records.SourceError) as err:
                    conn.rollback()
                    # the task's FAILED line names its dates; which of them failed, when not all
                    which = "" if len(by_objects) == 1 else f"{console.span(group_days)}: "
                    if isinstance(err, records.SourceError):  # the object's bytes: the landed copy is no use
                        end = " " if str(err).endswith("?") else ". "
                        err = f"{err}{end}Once it is fixed at the source: make run-etl DATE={group_days[-1]} FORCE=1"
                    outcomes = [SourceError(f"{which}{err}")]
                finally:
                    group.close()
                results += [o for o in outcomes if isinstance(o, Partition)]
                failures += [o for o in outcomes if isinstance(o, Exception)]
    finally:
        conn.close()
    for key, count in before_start.items():
        # not bad input, yet loaded by no run: a history_start later than the data should not hide them
        console.say(
            f"{key}: {count:,} line(s) dated before history_start {config.history_start()} are not loaded"
            " (ETL_HISTORY_START, [etl] history_start)"
        )
    if failures:
        raise LoadFailed("\n".join(str(failure) for failure in failures))
    return results


class LoadDataset(luigi.Task):
    """Load one dataset's partitions into staging: one date, or the batch Luigi hands over."""

    date = PartitionDate(description="partition date (a batch of dates when Luigi batches the runs)")
    dataset = None  # set by subclasses
    download = None

    def daily(self) -> bool:
        """Whether each date has objects of its own (the source key holds `{date}`)."""
        raise NotImplementedError

    @property
    def max_batch_size(self):
        # Shared objects are read once per run, so a one-file source loads every date in one run;
        # separate daily objects are split into batches that several workers can load side by side.
        return config.load_batch_size() if self.daily() else float("inf")

    def requires(self):
        return [self.download(day) for day in dates(self)]

    def output(self):
        return [self.dataset.ledger.target(day) for day in dates(self)]

    def run(self):
        todo = sorted(set(dates(self)) - self.dataset.ledger.done(dates(self), fresh=True))
        done = []

        def progress(partition):
            done.append(partition)
            self.set_progress_percentage(round(100 * len(done) / len(todo)))
            self.set_status_message(
                f"{self.dataset.table.name}: {len(done)}/{len(todo)} partitions, last {partition.date}: "
                f"{partition.rows} rows, {partition.rejects} rejects of {partition.lines_read} lines"
            )

        # A one-file source holds many days: each line goes to the partition of its UTC day.
        route_by_day = self.dataset.dated and not self.daily()
        load_partitions(self.dataset, todo, route_by_day, progress)


class LoadEvents(LoadDataset):
    """Events into staging.event (one-file layout: each line into the partition of its UTC day)."""

    dataset = staging.EVENTS
    download = DownloadEvents

    def daily(self) -> bool:
        return config.is_daily(config.events_key())


class LoadOrganizations(LoadDataset):
    """The whole organization list into each date's partition of staging.organization."""

    dataset = staging.ORGANIZATIONS
    download = DownloadOrganizations

    def daily(self) -> bool:
        return config.is_daily(config.orgs_key())


class LoadHistory(luigi.WrapperTask):
    """Every staging partition from history_start to `date`: this month's dates, and the history up
    to the end of last month (a task of its own), so a run whose history is loaded asks for a month
    of tasks at most, however long the history is."""

    date = luigi.DateParameter(description="last date to load")
    # Done the moment its loads are: run it before anything else, so that every build it unblocks
    # is ready at once and Luigi hands them to one worker as one batch.
    priority = 100

    def requires(self):
        start = config.history_start()
        first = max(start, self.date.replace(day=1))
        for day in config.dates_between(first, self.date):
            yield LoadEvents(day)
            yield LoadOrganizations(day)
        if first > start:
            yield LoadHistory(previous_day(first))

    def complete(self):
        # One query per ledger for the whole range instead of one per date; what it finds is
        # remembered, so the per-date tasks it would expand to are answered without a query.
        days = config.dates_between(config.history_start(), self.date)
        return all(len(dataset.ledger.done(days)) == len(days) for dataset in staging.DATASETS)
