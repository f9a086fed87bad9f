"""Load: one date's downloaded objects into the `staging` tables, atomically and idempotently.

Reads `<data_dir>/raw/<dataset>/<date>/` (written by tasks.extract); writes partition `date` of
`staging.event` / `staging.organization`, its rejected lines in `staging.*_rejected`, and the
partition's row in `etl.marker`, all in one transaction. Rows are streamed with COPY.
"""

import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import luigi
from psycopg2 import sql

from tasks import config, database, records
from tasks.extract import DownloadEvents, DownloadOrganizations, downloaded


@dataclass(frozen=True)
class Dataset:
    table: str
    rejected_table: str
    required: tuple
    key_field: str  # the required field copied into its own column


EVENTS = Dataset("staging.event", "staging.event_rejected", records.EVENT_REQUIRED, "id")
ORGANIZATIONS = Dataset(
    "staging.organization", "staging.organization_rejected", records.ORGANIZATION_REQUIRED, "organization_key"
)


class RejectRatioExceeded(Exception):
    """Too many bad lines: the partition's good rows are not loaded, its rejects are recorded."""


@dataclass
class LoadResult:
    load_id: int = 0
    lines_read: int = 0
    rows: int = 0
    rejects: int = 0
    first_rejects: list = field(default_factory=list)  # (source key, line number, reason)


def _text(value: str) -> str:
    """A value in COPY's text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


class _Reader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, so COPY streams without holding the file."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self):
        return True

    def read(self, size=-1):
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def _belongs(line: records.Line, date, one_file: bool) -> bool:
    """Whether a judged line is part of partition `date` (contract sections 2 and 4)."""
    if not one_file:
        return True  # everything in a day's objects belongs to that day, whatever its timestamp
    if line.received_at is None:
        return not line.is_valid  # a reject whose day cannot be read is recorded by every load
    return line.received_at.date() == date


def _identifier(table: str) -> sql.Identifier:
    # copy_from quotes "staging.event" as one name (psycopg2 2.9); an Identifier of two parts does not.
    return sql.Identifier(*table.split("."))


def _copy(cur, table: str, columns, chunks) -> None:
    statement = sql.SQL("copy {} ({}) from stdin").format(
        _identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    cur.copy_expert(statement, _Reader(chunks), size=1 << 16)


def _rows(dataset, date, objects, one_file, load_id, result, rejects, progress):
    """COPY rows of the valid lines of `date`; rejected ones go to the `rejects` spool."""
    first_seen = {}  # organization_key -> where it first appeared
    for key, path in objects:
        key_text = _text(key)
        for line in records.read_lines(path, dataset.required):
            result.lines_read += 1
            if dataset is ORGANIZATIONS and line.is_valid:
                # The list is keyed by organization_key; a second entry would fork its history.
                org_key = line.record["organization_key"]
                if org_key in first_seen:
                    line.reason = f"duplicate organization_key (first at {first_seen[org_key]})"
                else:
                    first_seen[org_key] = f"{key} line {line.line_number}"
            if progress and result.lines_read % 10000 == 0:
                progress(result)
            if not _belongs(line, date, one_file):
                continue
            if not line.is_valid:
                result.rejects += 1
                if len(result.first_rejects) < 5:
                    result.first_rejects.append((key, line.line_number, line.reason))
                rejects.write(
                    f"{date}\t{key_text}\t{line.line_number}\t\\\\x{line.raw.hex()}\t{_text(line.reason)}\t{load_id}\n"
                    .encode()
                )
                continue
            result.rows += 1
            columns = [date.isoformat(), key_text, str(line.line_number), _text(line.record[dataset.key_field])]
            if dataset is EVENTS:
                columns.append(line.received_at.isoformat())
            columns += [_text(line.text), str(load_id)]
            yield ("\t".join(columns) + "\n").encode()


def _columns(dataset):
    if dataset is EVENTS:
        return ("date", "source_key", "line_number", "event_id", "received_at", "json_content", "load_id")
    return ("date", "source_key", "line_number", "organization_key", "json_content", "load_id")


def _ratio_message(dataset, objects, result, limit) -> str:
    files = ", ".join(sorted({key for key, _ in objects}))
    first = "; ".join(f"{key} line {number}: {reason}" for key, number, reason in result.first_rejects)
    return (
        f"{dataset.table} partition rejected: {result.rejects} of {result.lines_read} lines read from {files} "
        f"are bad ({result.rejects / result.lines_read:.2%} > max_reject_ratio {limit}). "
        f"First bad lines: {first}. Fix the source, or raise [etl] max_reject_ratio in luigi.cfg."
    )


def load_partition(dataset: Dataset, date, objects, one_file: bool, progress=None) -> LoadResult:
    """Replace partition `date` of the dataset with the valid lines of `objects`, in one transaction.

    `objects` is a list of (source key, local path). Either everything commits (rows, rejects and
    the marker) or nothing does; a partition over the reject ratio commits only its rejects.
    """
    with database.transaction() as conn:
        database.ensure_staging(conn)
    result = LoadResult()
    limit = config.max_reject_ratio()
    with database.transaction() as conn, conn.cursor() as cur, tempfile.SpooledTemporaryFile(1 << 22) as rejects:
        database.lock_partition(cur, dataset.table, date)
        cur.execute("select nextval('etl.load_id_seq')")
        result.load_id = cur.fetchone()[0]
        for table in (dataset.table, dataset.rejected_table):
            cur.execute(sql.SQL("delete from {} where date = %s").format(_identifier(table)), (date,))
        database.delete_marker(cur, dataset.table, date)
        cur.execute("savepoint before_rows")
        _copy(cur, dataset.table, _columns(dataset), _rows(dataset, date, objects, one_file, result.load_id,
                                                           result, rejects, progress))
        over_limit = result.lines_read and result.rejects / result.lines_read > limit
        if over_limit:
            cur.execute("rollback to savepoint before_rows")
        rejects.seek(0)
        _copy(cur, dataset.rejected_table,
              ("date", "source_key", "line_number", "raw_line", "reason", "load_id"), iter(lambda: rejects.read(1 << 16), b""))
        if not over_limit:
            database.write_marker(cur, dataset.table, date, result.load_id, result.rows, result.rejects)
    if progress:
        progress(result)
    if over_limit:
        raise RejectRatioExceeded(_ratio_message(dataset, objects, result, limit))
    return result


class LoadDataset(luigi.Task):
    """Load one dataset's partition `date` into staging (see load_partition)."""

    date = luigi.DateParameter(description="partition date")
    dataset = None  # set by subclasses

    def output(self):
        return database.MarkerTarget(self.dataset.table, self.date)

    def one_file(self) -> bool:
        return False

    def run(self):
        objects = downloaded(Path(self.input().path))
        result = load_partition(self.dataset, self.date, objects, self.one_file(), progress=self._report)
        self.set_progress_percentage(100)
        self.set_status_message(
            f"{self.dataset.table} {self.date}: {result.rows} rows loaded, {result.rejects} rejected "
            f"of {result.lines_read} lines read"
        )

    def _report(self, result: LoadResult):
        self.set_status_message(f"{result.lines_read} lines read, {result.rows} rows, {result.rejects} rejects")


class LoadEvents(LoadDataset):
    """Events of partition `date` into staging.event (one-file layout: those received on `date`, UTC)."""

    dataset = EVENTS

    def requires(self):
        return DownloadEvents(self.date)

    def one_file(self) -> bool:
        return not config.is_daily(config.events_key())


class LoadOrganizations(LoadDataset):
    """The whole organization list into partition `date` of staging.organization."""

    dataset = ORGANIZATIONS

    def requires(self):
        return DownloadOrganizations(self.date)


class LoadStaging(luigi.WrapperTask):
    """Both staging datasets of `date`."""

    date = luigi.DateParameter(description="partition date")

    def requires(self):
        return [LoadEvents(self.date), LoadOrganizations(self.date)]

    @classmethod
    def bulk_complete(cls, dates):
        """The dates whose events and organizations are both loaded: two queries, not one per date."""
        dates = list(dates)
        return sorted(database.marked_dates(EVENTS.table, dates) & database.marked_dates(ORGANIZATIONS.table, dates))


class LoadHistory(luigi.WrapperTask):
    """Staging partitions of every date from `start` (default: history_start) to `date`."""

    date = luigi.DateParameter(description="last date to load")
    start = luigi.DateParameter(default=None, description="first date; default [etl] history_start")

    def requires(self):
        dates = config.dates_between(self.start or config.history_start(), self.date)
        done = set(LoadStaging.bulk_complete(dates))
        return [LoadStaging(day) for day in dates if day not in done]
