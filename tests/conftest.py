"""Shared fixtures: a real PostgreSQL, a real S3 endpoint (moto's server), and a clean environment.

PostgreSQL comes from ETL_TEST_DATABASE_URL when set, else from testcontainers when a Docker
daemon answers, else from the embedded server wheel; every test gets a database of its own.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import luigi
import psycopg2
import psycopg2.extensions
import pytest

ROOT = Path(__file__).resolve().parent.parent

ENVIRONMENT = (
    "ETL_DATA_DIR",
    "ETL_DATABASE_URL",
    "ETL_HISTORY_START",
    "ETL_SOURCE_URL",
    "LUIGI_CONFIG_PATH",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_server():
    """Admin URL of a PostgreSQL server for the whole session; a server started here is stopped here."""
    url = os.environ.get("ETL_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    from tasks import server

    # Not under pytest's basetemp: any pytest run on the machine resets /tmp/pytest-of-<user> to
    # mode 0700, which would lock out the server's own system user (it runs unprivileged).
    folder = Path(tempfile.mkdtemp(prefix="etl-test-postgres-"))
    try:
        yield server.start_embedded(folder / "pgdata")
    finally:
        server.stop_embedded(folder / "pgdata")
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    """A loopback port nobody listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, seconds=300):
    """Until `condition()` holds: another process is to reach a state this test can see."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the other process never got there"
        time.sleep(0.1)


def with_dbname(url: str, dbname: str) -> str:
    return psycopg2.extensions.make_dsn(url, dbname=dbname)


@pytest.fixture
def database_url(postgres_server, monkeypatch):
    """A fresh, empty database for one test, named in ETL_DATABASE_URL; dropped afterwards."""
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(postgres_server)
    admin.autocommit = True
    try:
        admin.cursor().execute(f'create database "{name}"')
        url = with_dbname(postgres_server, name)
        monkeypatch.setenv("ETL_DATABASE_URL", url)
        yield url
        admin.cursor().execute(f'drop database "{name}" with (force)')
    finally:
        admin.close()


@pytest.fixture(autouse=True)
def etl_env(tmp_path, monkeypatch, settings):
    """Each test starts from the repo's luigi.cfg, a private data_dir and no ETL_* variables, and
    never reaches a luigid running on this machine (make luigid): that luigid's workers would run
    the test's tasks, into their own data dir and database. A test that wants luigid starts its own."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "work"))
    settings("core", scheduler_port=free_port())
    yield


@pytest.fixture
def settings(monkeypatch, tmp_path):
    """Set luigi.cfg values for this test, in this process and (via LUIGI_CONFIG_PATH) in children."""
    cfg = luigi.configuration.get_config()
    saved = []
    path = tmp_path / "override.cfg"
    values = {}

    def apply(section, **options):
        for key, value in options.items():
            had = cfg.has_option(section, key)
            saved.append((section, key, cfg.get(section, key) if had else None, had))
            if not cfg.has_section(section):
                cfg.add_section(section)
            cfg.set(section, key, str(value))
            values.setdefault(section, {})[key] = str(value)
        path.write_text(
            "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items()) for name, opts in values.items())
        )
        monkeypatch.setenv("LUIGI_CONFIG_PATH", str(path))

    yield apply
    for section, key, value, had in reversed(saved):
        if had:
            cfg.set(section, key, value)
        else:
            cfg.remove_option(section, key)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port, speaking the real HTTP protocol."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """An empty bucket on the moto server, with boto3's endpoint and credentials pointing there."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"bucket-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    yield client, name


def write_lines(path: Path, lines, gz: bool = False) -> Path:
    """Write NDJSON: dicts are dumped, str and bytes written as they are."""
    import gzip

    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(
        (line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n"
        for line in lines
    )
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def query(sql: str, params=()):
    """Rows of one query on the database in use."""
    from tasks import db

    with contextlib.closing(db.connect()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


# staging.event with each row's source key (a row names its object by number in the partition)
EVENT_WITH_KEY = "staging.event join staging.event_source_object using (date, object_number)"


@pytest.fixture(autouse=True)
def fresh_completion_memory():
    """Completion records a test saw are forgotten: each test has a database of its own."""
    from tasks import completion, staging

    yield
    for ledger in (completion.DOWNLOADS, completion.BUILDS, completion.REPORTS, *(d.ledger for d in staging.DATASETS)):
        ledger.forget()
    completion.close_checks()


def start_cli(*args, env=None, **popen) -> subprocess.Popen:
    """`python -m tasks ARGS` started in a child process with the test's environment (plus `env`);
    `popen` are subprocess.Popen's options (stdout, stderr, text, ...)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tasks", *args], cwd=ROOT, env={**os.environ, **(env or {})}, **popen
    )


def run_cli(*args, env=None, timeout=600):
    """`python -m tasks ARGS` in a child process with the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "tasks", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
