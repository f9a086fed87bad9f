"""Completion records: the rows in PostgreSQL that say a task's date is done, and their Luigi targets.

Reads and writes the record tables named by each `Ledger` (`etl.download`, `staging.*_partition`,
`etl.build`, `etl.report`), and reads `etl.tested_through`, which a build writes with its records.
Creates `etl.outdated_report` (tasks.overwrite writes it, tasks.export clears it).
Every task the pipeline runs has a `LedgerTarget` as its `output()` (the `…Arrived` tasks, the
producer's objects, have source targets), so completion lives where every worker on every machine
sees it, never on one worker's disk. A record is written only once what it vouches for is
committed: a load's in the same transaction as its rows, a build's after dbt committed the models.
"""

import os
import threading

import luigi
from psycopg2 import sql

from tasks import db


class Ledger:
    """One completion table: a row per (date[, kind]) that is done."""

    def __init__(self, table: str, date_column: str = "partition_date", kind_column: str = None):
        self.table = table
        self.date_column = date_column
        self.kind_column = kind_column
        # (kind, date) known done in this process, so that scheduling asks each date once. Another
        # process may remove records (FORCE), so a task deciding what to do asks afresh (fresh=True).
        self._done = set()

    def _where(self, kind) -> tuple:
        if self.kind_column is None:
            return sql.SQL("true"), ()
        return sql.SQL("{} = %s").format(sql.Identifier(self.kind_column)), (kind,)

    def done(self, dates, kind=None, fresh=False) -> set:
        """The subset of `dates` with a record, in one query; `fresh` ignores what this process knew."""
        dates = set(dates)
        if fresh:
            self._done -= {(kind, date) for date in dates}
        missing = {date for date in dates if (kind, date) not in self._done}
        if missing:
            where, args = self._where(kind)
            query = sql.SQL("select {} from {} where {} = any(%s) and {}").format(
                sql.Identifier(self.date_column), _identifier(self.table), sql.Identifier(self.date_column), where
            )
            found = {row[0] for row in _checks.rows(self.table, query, (sorted(missing), *args))}
            self._done.update((kind, date) for date in found)
        return {date for date in dates if (kind, date) in self._done}

    def forget(self, dates=None) -> None:
        """Drop what this process remembers (after records were removed, e.g. by FORCE)."""
        self._done = set() if dates is None else {key for key in self._done if key[1] not in set(dates)}

    def target(self, date, kind=None) -> "LedgerTarget":
        return LedgerTarget(self, date, kind)


class LedgerTarget(luigi.Target):
    """Exists when its ledger holds a record for the date (and kind)."""

    def __init__(self, ledger: Ledger, date, kind=None):
        self.ledger = ledger
        self.date = date
        self.kind = kind

    def exists(self) -> bool:
        return self.date in self.ledger.done([self.date], self.kind)

    def __repr__(self):
        kind = f", {self.kind}" if self.kind else ""
        return f"LedgerTarget({self.ledger.table}, {self.date}{kind})"


def _identifier(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split("."))


class _CompletionChecks:
    """One connection per process for completion checks: Luigi asks them by the thousand."""

    def __init__(self):
        self._lock = threading.Lock()
        self._conn = None
        self._inherited = []
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A forked Luigi worker must not talk over its parent's socket, nor close it (closing
        # would end the parent's session too): keep the inherited connection, unused, and open anew.
        self._inherited.append(self._conn)
        self._conn = None
        self._lock = threading.Lock()

    def rows(self, table: str, query, args) -> list:
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    with db.guarded(conn), conn.cursor() as cur:
                        if not db.exists(cur, table):
                            return []  # nothing was ever recorded here
                        cur.execute(query, args)
                        return cur.fetchall()
                except Exception:
                    self.close()
                    if attempt == 2:
                        raise
        return []

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = db.connect()
            self._conn.autocommit = True
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


_checks = _CompletionChecks()


def close_checks() -> None:
    """Close this process's completion-check connection (a new one opens when needed)."""
    _checks.close()


DOWNLOADS = Ledger("etl.download", kind_column="dataset")
BUILDS = Ledger("etl.build", date_column="run_date")
REPORTS = Ledger("etl.report", date_column="run_date", kind_column="kind")

DDL = """
create schema if not exists etl;
-- A download: which source objects make up a dataset's partition, and where each was landed.
create table if not exists etl.download (
    dataset text not null,
    partition_date date not null,
    objects jsonb not null,
    downloaded_at timestamptz not null default now(),
    primary key (dataset, partition_date)
);
-- A warehouse build that produced the report of run_date.
create table if not exists etl.build (
    run_date date primary key,
    built_at timestamptz not null default now(),
    results jsonb  -- what dbt said: node counts by status, and each warning
);
-- The stamp (build_stamp) of the last build whose data tests all passed: one row. A build tests
-- the rows written after it, so rows a failed build wrote are tested again until a build passes.
create table if not exists etl.tested_through (
    only_row boolean primary key default true check (only_row),
    build_stamp timestamptz not null
);
-- An exported report file (csv, png): its bytes, so every machine can deliver it.
create table if not exists etl.report (
    run_date date not null,
    kind text not null,
    content bytea not null,
    exported_at timestamptz not null default now(),
    primary key (run_date, kind)
);
-- A report date a reload (FORCE=1) outdated, until an export writes its report again: the list
-- outlives a forced run that is killed, so running the same command again rebuilds them all.
create table if not exists etl.outdated_report (
    run_date date primary key,
    outdated_at timestamptz not null default now()
);
"""


def tested_through() -> str:
    """The stamp of the last build whose data tests passed (etl.tested_through), or -infinity."""
    rows = _checks.rows("etl.tested_through", "select build_stamp::text from etl.tested_through", ())
    return rows[0][0] if rows else "-infinity"


def ensure_tables(cur) -> None:
    """Create the etl schema's record tables when missing (serialised: concurrent DDL collides)."""
    db.lock(cur, "etl.ddl")
    cur.execute(DDL)
