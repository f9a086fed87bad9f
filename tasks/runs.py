"""Runs you can look back on: one row per pipeline run (`etl.run`: run-etl, load, backfill, worker),
on luigid or the local scheduler.

Reads and writes `etl.run`: the command, its dates, where it ran, start and end, status, and at the
end the rows and rejects loaded for its dates, the dbt results of its builds and its log file.
`make runs` lists the recent ones with their durations. While it runs, a run holds the advisory
lock `etl.run` (shared) on a session of its own and a shared flock on `<data_dir>/.runs.lock`;
`make clean` must take both alone.
"""

import datetime
import fcntl
import json
import os
import socket
import time

from tasks import completion, config, db, processes

DDL = """
create table if not exists etl.run (
    run_id bigserial primary key,
    command text not null,
    first_date date,
    last_date date,
    scheduler text not null,
    host text not null,
    pid integer not null,
    log_path text not null,
    started_at timestamptz not null default now(),
    ended_at timestamptz,
    status text not null default 'running',
    exit_code integer,
    rows_loaded bigint,
    rejects bigint,
    dbt_results jsonb
);
"""


# The session that holds a run's share of the lock, until finish(). A session ends with its
# process however that dies, so a killed run holds nothing; a pid on record proves less (a new
# process may have it by now). Forked Luigi workers leave it alone: they end by os._exit. Beside
# it, a shared flock on the data dir's LOCK_FILE: the embedded server and the run's folders are
# the data dir's, and `make clean` stops and removes them (it takes the flock alone first).
_presence = {"session": None, "data_dir": None}
LOCK_FILE = ".runs.lock"


class InProgress(ValueError):
    """`make clean` met runs that are still running."""


def refuse_while_running(cur) -> None:
    """Keep runs from starting for the rest of `cur`'s transaction (they wait for it), or raise
    InProgress naming the runs that are running: `make clean` must not drop what they write. A
    `make dbt` or `make test-warehouse` holds no run's lock but the dbt lock (transform.dbt_lock)."""
    cur.execute("select pg_try_advisory_xact_lock(hashtext('etl.run'))")
    if cur.fetchone()[0]:
        cur.execute("select pg_try_advisory_xact_lock(hashtext('etl.dbt'))")
        if not cur.fetchone()[0]:
            raise InProgress("dbt is running on this database (make dbt or make test-warehouse): let it end first")
        return
    if not db.exists(cur, "etl.run"):  # one that has only just started
        raise InProgress("a run has just started on this database. Let it end (or stop it), then clean")
    cur.execute(
        """
        select format('run %s (%s, on %s, pid %s)', run.run_id, run.command, run.host, run.pid)
        from pg_stat_activity as session join etl.run on session.application_name = 'etl run ' || run.run_id
        where session.datname = current_database() order by run.run_id
        """
    )
    runs = [row[0] for row in cur.fetchall()] or ["a run"]
    raise InProgress(f"still running on this database: {'; '.join(runs)}. Let them end (or stop them), then clean")


def _data_dir_lock() -> int:
    config.data_dir().mkdir(parents=True, exist_ok=True)
    return os.open(config.data_dir() / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)


def hold_data_dir_alone() -> None:
    """For `make clean`: the data dir's flock alone, until this process ends; InProgress while a
    run of this data dir runs."""
    lock = _data_dir_lock()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise InProgress(
            f"a run is using the data dir {config.data_dir()} (make runs lists it). Let it end (or stop it), then clean"
        ) from None
    _presence["data_dir"] = lock


def _share_data_dir() -> None:
    lock = _data_dir_lock()
    try:
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        print("waiting for a make clean of this data dir to finish", flush=True)
        fcntl.flock(lock, fcntl.LOCK_SH)  # Ctrl-C ends the wait
    _presence["data_dir"] = lock


def _take_share(session) -> None:
    """The run's share of the lock on its own idle session, asked for each second while a `make
    clean` holds it (a wait inside the server would not end on Ctrl-C: libpq resumes it)."""
    session.autocommit = True
    with session.cursor() as cur:
        # A server's idle_session_timeout (PostgreSQL 14+, common on managed ones) would end the
        # idle session, and the lock with it, while the run goes on.
        cur.execute("set statement_timeout = 0")
        if session.server_version >= 140000:
            cur.execute("set idle_session_timeout = 0")
        waiting = False
        while True:
            cur.execute("select pg_try_advisory_lock_shared(hashtext('etl.run'))")
            if cur.fetchone()[0]:
                return
            if not waiting:
                print("waiting for a make clean of this database to finish", flush=True)
                waiting = True
            time.sleep(1)


def start(command: str, first_date, last_date, scheduler: str, log_path) -> tuple:
    """Record a run that starts now; returns its id and its start by the database's clock, which
    also stamps the loads and builds (a client's clock may disagree)."""
    _share_data_dir()  # before the database: the embedded server is the data dir's
    session = db.connect()
    try:
        _take_share(session)
    except BaseException:
        session.close()
        raise
    _presence["session"] = session
    with db.transaction() as conn, conn.cursor() as cur:
        completion.ensure_tables(cur)
        cur.execute(DDL)
        cur.execute(
            """
            insert into etl.run (command, first_date, last_date, scheduler, host, pid, log_path)
            values (%s, %s, %s, %s, %s, %s, %s) returning run_id, started_at
            """,
            (command, first_date, last_date, scheduler, socket.gethostname(), os.getpid(), str(log_path)),
        )
        run_id, started_at = cur.fetchone()
    with session.cursor() as cur:
        cur.execute("select set_config('application_name', %s, false)", (f"etl run {run_id}",))
    return run_id, started_at


def finish(run_id: int, status: str, exit_code: int, summary: dict) -> None:
    """Record how the run ended, with what it loaded and what dbt said; nothing when `make clean`
    dropped the record while the run ran (the run has already said how it ended)."""
    try:
        _record_end(run_id, status, exit_code, summary)
    finally:
        if _presence["session"] is not None:
            _presence["session"].close()
            _presence["session"] = None
        if _presence["data_dir"] is not None:
            os.close(_presence["data_dir"])
            _presence["data_dir"] = None


def _record_end(run_id: int, status: str, exit_code: int, summary: dict) -> None:
    with db.transaction() as conn, conn.cursor() as cur:
        if not db.exists(cur, "etl.run"):
            return
        cur.execute(
            """
            update etl.run set ended_at = now(), status = %s, exit_code = %s, rows_loaded = %s, rejects = %s,
                dbt_results = %s
            where run_id = %s and host = %s and pid = %s
            """,
            (
                status,
                exit_code,
                summary.get("rows"),
                summary.get("rejects"),
                json.dumps(summary.get("dbt")) if summary.get("dbt") else None,
                run_id,
                # ids start again after `make clean`: never another run's row
                socket.gethostname(),
                os.getpid(),
            ),
        )


def recent(limit: int = 20) -> list:
    """The latest runs, newest first, as dicts. A run still recorded as running whose process is
    gone from this machine (kill -9, the kernel's OOM killer) could not record its end: it is
    "killed", for how long it ran unknown. Runs on other machines are shown as recorded."""
    with db.transaction() as conn, conn.cursor() as cur:
        if not db.exists(cur, "etl.run"):
            return []
        cur.execute(
            """
            select run_id, command, first_date, last_date, scheduler, started_at, ended_at,
                   extract(epoch from coalesce(ended_at, now()) - started_at) as seconds, status, exit_code,
                   rows_loaded, rejects, dbt_results, log_path, host, pid
            from etl.run order by run_id desc limit %s
            """,
            (limit,),
        )
        names = [column.name for column in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    here = socket.gethostname()
    for row in rows:
        if row["status"] == "running" and row["host"] == here and not processes.alive(row["pid"]):
            row.update(status="killed", seconds=None)
    return rows


def table(rows: list) -> str:
    """The runs as an aligned text table for the terminal."""
    if not rows:
        return "no runs recorded yet (make run-etl DATE=…)"
    lines = [f"{'run':>4}  {'started (UTC)':19}  {'took':>8}  {'status':11}  {'rows':>10}  {'rejects':>7}  command"]
    for row in rows:
        started = row["started_at"].astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        took = _duration(row["seconds"])
        lines.append(
            f"{row['run_id']:>4}  {started:19}  {took:>8}  {row['status']:11}  {_number(row['rows_loaded']):>10}  "
            f"{_number(row['rejects']):>7}  {row['command']}"
        )
        if row["status"] != "success":  # where to look for why (or how far it got)
            lines.append(f"{'':>4}  log: {row['log_path']}")
    return "\n".join(lines)


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def _number(value) -> str:
    return "" if value is None else f"{value:,}"
