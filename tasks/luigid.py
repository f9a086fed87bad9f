"""The Luigi central scheduler and web UI (luigid) on port 8082, run in the background.

Reads [core] scheduler_host / scheduler_port; writes `<data_dir>/luigid/` (pid file, log, scheduler
state) and keeps luigid's task history in the pipeline's PostgreSQL, schema `etl`, so past runs
survive a restart of luigid and go away with `make clean`.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import luigi
import luigi.rpc
from sqlalchemy.engine import URL

from tasks import config, db

STARTUP_SECONDS = 30


def folder() -> Path:
    return config.data_dir() / "luigid"


def address() -> tuple:
    core = luigi.configuration.get_config()
    return core.get("core", "scheduler_host", "localhost"), core.getint("core", "scheduler_port", 8082)


def listen_address() -> str:
    """Where luigid listens: [luigid] address, loopback by default; 0.0.0.0 for workers on other machines."""
    return luigi.configuration.get_config().get("luigid", "address", "127.0.0.1")


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
    # libpq's effective parameters of a live connection, so every route to the password and every
    # TLS setting reaches luigid as it reached us.
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute("create schema if not exists etl")
        env = db.child_environment(conn)
    host, port = env.pop("PGHOST"), env.pop("PGPORT")
    query = {
        name: env[variable]
        for name, variable in db.LIBPQ_ENVIRONMENT.items()
        if variable in env and name not in ("host", "port", "user", "dbname")
    }
    query["options"] = (query.get("options", "") + " -csearch_path=etl").strip()
    if host.startswith("/"):  # a unix socket directory goes in the query, as libpq takes it
        query.update(host=host, port=port)
        host, port = None, None
    return URL.create(
        "postgresql+psycopg2",
        username=env.get("PGUSER"),
        password=env.get("PGPASSWORD"),
        host=host,
        port=int(port) if port else None,
        database=env.get("PGDATABASE"),
        query=query,
    ).render_as_string(hide_password=False)


# How luigid treats workers and failures (docs/scaling.md). A worker silent for
# worker_disconnect_delay seconds loses its running tasks to the others (pruned on every request);
# a failed task is retried after retry_delay seconds, and after retry_count failures within
# disable_window it is disabled for disable_persist seconds, so a run waiting on it ends and says so.
SCHEDULER_DEFAULTS = {
    "worker_disconnect_delay": "30",
    "prune_on_get_work": "true",
    "retry_delay": "5",
    "retry_count": "3",
    "disable_window": "3600",
    "disable_persist": "60",
}


def scheduler_settings() -> dict:
    """SCHEDULER_DEFAULTS, then any [scheduler] option of luigi.cfg or of LUIGI_CONFIG_PATH."""
    core = luigi.configuration.get_config()
    return {**SCHEDULER_DEFAULTS, **(dict(core.items("scheduler")) if core.has_section("scheduler") else {})}


def write_config(work: Path) -> Path:
    """luigid's configuration: scheduler_settings(), then the history settings. The database URL
    reaches luigid through its environment (Luigi expands ${...}), never a file."""
    options = scheduler_settings()
    options.update(record_task_history="true", state_path=str(work / "state.pickle"))
    path = work / "luigid.cfg"
    path.write_text(
        "[scheduler]\n"
        + "".join(f"{name} = {value}\n" for name, value in sorted(options.items()))
        + "[task_history]\ndb_connection = ${ETL_TASK_HISTORY_URL}\n"
    )
    return path


def lost_by(error) -> bool:
    """Whether an error that ended a run or worker is Luigi's client failing to talk to luigid:
    its RPC gave up after [core] rpc_retry_attempts tries, [core] rpc_retry_wait seconds apart (3
    and 30 by default), or what answers is not luigid (a reply that is not JSON)."""
    if isinstance(error, luigi.rpc.RPCError):
        return True
    frames = traceback.extract_tb(error.__traceback__) if isinstance(error, json.JSONDecodeError) else []
    return any(frame.filename.endswith(os.path.join("luigi", "rpc.py")) for frame in frames)


def lost(error: Exception) -> str:
    """The line for a run or worker that lost luigid (lost_by)."""
    host, port = address()
    sub = getattr(error, "sub_exception", None)
    cause = str(sub or error)
    if isinstance(error, json.JSONDecodeError):
        cause = f"what answers there is not luigid (its reply is not JSON: {error})"
    elif getattr(sub, "response", None) is not None:  # an HTTP error status: a server, not luigid
        cause = f"what answers there is not luigid ({sub})"
    # requests words a refused connection as a pool's repr around the one part that matters
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", cause)
    return (
        f"lost luigid at http://{host}:{port}: {errno.group(0) if errno else cause}. What committed stays; "
        "once luigid answers again (make luigid), run the same command again"
    )


def unanswered() -> str | None:
    """The line for Luigi's client failing a try to reach luigid, when it will try again: until it
    gives up (lost) the run or worker would otherwise wait in silence, 1.5 minutes per request by
    default. None when there is no try left to wait for. (Why it failed is not known here: Luigi
    logs the try after its exception is handled; the line of `lost` says it.)"""
    core = luigi.configuration.get_config()
    tries = core.getint("core", "rpc-retry-attempts", 3)  # Luigi's own reading (luigi/rpc.py)
    wait = core.getint("core", "rpc-retry-wait", 30)
    if tries < 2:
        return None
    host, port = address()
    return (
        f"luigid at http://{host}:{port} did not answer: Luigi's client tries each request {tries} times, {wait} s"
        " apart ([core] rpc_retry_attempts, rpc_retry_wait); should every try fail, this gives up (exit 35)"
    )


def disabled(task_ids) -> list:
    """A line for each of `task_ids` that luigid has disabled (why a run on it ends not run), or []."""
    host, port = address()
    if not answers(host, port):
        return []  # not to wait out the client's retries: the run has said luigid is gone
    try:
        tasks = luigi.rpc.RemoteScheduler(f"http://{host}:{port}").task_list("DISABLED", "")
    except luigi.rpc.RPCError:
        return []
    failures = scheduler_settings()["retry_count"]  # as make luigid sets it
    return [
        f"luigid disabled {task['display_name']} after {failures} failure{'' if failures == '1' else 's'}; it"
        " takes it again a while after ([scheduler] disable_persist, 60 s for make luigid). Fix the cause (the"
        " FAILED lines of the earlier runs; `make runs` lists their logs), then run again"
        for task_id, task in sorted(tasks.items(), key=lambda item: item[1]["display_name"])
        if task_id in task_ids
    ]


class NotStarted(Exception):
    """luigid exited, or did not answer in time, after it was started."""


def start() -> str:
    host, port = address()
    pid = running_pid()
    if pid:
        return f"luigid already runs (pid {pid}) on http://{host}:{port}"
    if answers(host, port):
        return f"something already answers on {host}:{port}; not starting another luigid"
    work = folder()
    work.mkdir(parents=True, exist_ok=True)
    # luigid saves its tasks when stopped and would take them up again: a task that a worker lost
    # with it was running stays "running" by that worker, a run that finds the task done cannot
    # say so, and once the worker counts as gone the task waits for a worker nobody will send. A
    # new luigid starts empty; runs and workers tell it their tasks again.
    (work / "state.pickle").unlink(missing_ok=True)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(write_config(work)), "ETL_TASK_HISTORY_URL": history_url()}
    with open(work / "luigid.log", "ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("luigid")), "--port", str(port), "--address", listen_address()],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    (work / "luigid.pid").write_text(str(process.pid))
    deadline = time.monotonic() + STARTUP_SECONDS
    while not answers(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            # its last line is the cause, e.g. "OSError: [Errno 99] Cannot assign requested address"
            lines = (work / "luigid.log").read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise NotStarted(f"luigid did not start: {lines[-1]} (log {work / 'luigid.log'})")
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
