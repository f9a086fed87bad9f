"""The Luigi central scheduler and web UI (luigid) on port 8082, run in the background.

Reads [core] scheduler_host / scheduler_port; writes `<data_dir>/luigid/` (pid file, log, scheduler
state) and keeps luigid's task history in the pipeline's PostgreSQL, schema `etl`, so past runs
survive a restart of luigid and go away with `make clean`.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import luigi

from sqlalchemy.engine import URL

from tasks import config, database

STARTUP_SECONDS = 30


def folder() -> Path:
    return config.data_dir() / "luigid"


def address() -> tuple:
    core = luigi.configuration.get_config()
    return core.get("core", "scheduler_host", "localhost"), core.getint("core", "scheduler_port", 8082)


def answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def running_pid():
    """The pid of the luigid this project started, if it still runs."""
    pid_file = folder() / "luigid.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"luigid" in cmdline else None  # the pid may have been reused by another program


def history_url() -> str:
    """SQLAlchemy URL of the pipeline's database, with luigid's tables in schema `etl`.

    Luigi's SQLite history does not run on SQLAlchemy 2 (raw-string PRAGMA), PostgreSQL does.
    """
    params = database.connection_params(database.database_url())
    with database.transaction() as conn, conn.cursor() as cur:
        cur.execute("create schema if not exists etl")
    host, port = params.get("host"), params.get("port")
    query = {"options": "-csearch_path=etl"}
    if host and host.startswith("/"):  # a unix socket directory goes in the query, as libpq takes it
        query["host"] = host
        query.update({"port": port} if port else {})
        host, port = None, None
    return URL.create(
        "postgresql+psycopg2", username=params.get("user"), password=params.get("password"),
        host=host, port=int(port) if port else None, database=params.get("dbname"), query=query,
    ).render_as_string(hide_password=False)


def write_config(work: Path) -> Path:
    # The URL reaches luigid through its environment (Luigi expands ${...}), never a file.
    path = work / "luigid.cfg"
    path.write_text(
        "[scheduler]\n"
        "record_task_history = true\n"
        f"state_path = {work / 'state.pickle'}\n"
        "[task_history]\n"
        "db_connection = ${ETL_TASK_HISTORY_URL}\n"
    )
    return path


def start() -> str:
    host, port = address()
    pid = running_pid()
    if pid:
        return f"luigid already runs (pid {pid}) on http://{host}:{port}"
    if answers(host, port):
        return f"something already answers on {host}:{port}; not starting another luigid"
    work = folder()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(write_config(work)), "ETL_TASK_HISTORY_URL": history_url()}
    with open(work / "luigid.log", "ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("luigid")), "--port", str(port), "--address", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    (work / "luigid.pid").write_text(str(process.pid))
    deadline = time.monotonic() + STARTUP_SECONDS
    while not answers(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"luigid did not start; see {work / 'luigid.log'}")
        time.sleep(0.1)  # polling for the port to open, bounded by the deadline above
    return f"luigid runs (pid {process.pid}): http://{host}:{port}  (log {work / 'luigid.log'})"


def stop() -> str:
    pid = running_pid()
    pid_file = folder() / "luigid.pid"
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return "luigid was not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STARTUP_SECONDS
    while running_pid() and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_pid():
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return f"luigid (pid {pid}) stopped"
