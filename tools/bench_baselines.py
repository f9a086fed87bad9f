"""Reference loaders that the benchmark sets against the staging loader, each timed on the same file.

Reads an NDJSON events file (gzip when its name ends in .gz) and loads every non-blank line into
the PostgreSQL at a libpq URL or DSN. Writes only its own scratch schemas:

- `bench_baseline.bare_copy`: one plain COPY, the floor for any loader;
- `bench_baseline.copy_to_table` (and luigi's marker table `bench_baseline.table_updates`):
  luigi's own `CopyToTable`;
- `bench_baseline_dlt` (table `event` plus dlt's `_dlt_loads`, `_dlt_version` and
  `_dlt_pipeline_state`; and `bench_baseline_dlt_staging`, should dlt make one): dlt, which runs in
  a virtualenv of its own at a given folder, created and filled from the package index on first use.

Each loader returns its elapsed wall seconds; `drop_baselines` removes all of it.
"""

import datetime
import gzip
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import luigi
import luigi.contrib.postgres
import psycopg2
import psycopg2.extensions
from luigi.parameter import ParameterVisibility
from psycopg2 import sql

SCHEMA = "bench_baseline"
DLT_DATASET = "bench_baseline_dlt"
# dlt puts a staging dataset beside the main one (`<dataset>_staging`) for merges and some replaces.
DLT_SCHEMAS = (DLT_DATASET, DLT_DATASET + "_staging")

CHUNK = 1 << 16


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _execute(dsn: str, *statements) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def _fresh_table(dsn: str, table: str, columns: str) -> None:
    name = sql.Identifier(SCHEMA, table)
    _execute(
        dsn,
        sql.SQL("create schema if not exists {}").format(sql.Identifier(SCHEMA)),
        sql.SQL("drop table if exists {}").format(name),
        sql.SQL("create table {} (" + columns + ")").format(name),
    )


def _drop_schemas(dsn: str, schemas) -> None:
    _execute(dsn, *(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(s)) for s in schemas))


# ---------------------------------------------------------------------------------------------
# The floor: one COPY


class _ChunkReader:
    """File-like for copy_expert: each read() hands over the next whole chunk, so no buffer is re-sliced."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)

    def read(self, size=-1):
        return next(self._chunks, b"")


def _copy_chunks(path: Path, date: datetime.date):
    """COPY text rows `date<TAB>json` of the file's non-blank lines, joined into ~CHUNK-byte pieces."""
    prefix = date.isoformat().encode() + b"\t"
    parts, size = [], 0
    with _open(path) as lines:
        for line in lines:
            if line.isspace():
                continue
            if not line.endswith(b"\n"):
                line += b"\n"
            # Most lines need no escaping; testing first keeps the common case to a few scans.
            if b"\\" in line or b"\t" in line or b"\r" in line:
                body = line[:-1].replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
                line = body + b"\n"
            parts.append(prefix)
            parts.append(line)
            size += len(prefix) + len(line)
            if size >= CHUNK:
                yield b"".join(parts)
                parts, size = [], 0
    if parts:
        yield b"".join(parts)


def bare_copy_seconds(dsn: str, ndjson_path: Path, date: datetime.date) -> float:
    """Seconds for one COPY (and its commit) of the file into a fresh `bench_baseline.bare_copy`."""
    _fresh_table(dsn, "bare_copy", "date date not null, json_content jsonb not null")
    conn = psycopg2.connect(dsn)
    try:
        conn.set_client_encoding("UTF8")
        reader = _ChunkReader(_copy_chunks(Path(ndjson_path), date))
        start = time.perf_counter()
        with conn.cursor() as cur:
            cur.copy_expert("copy bench_baseline.bare_copy (date, json_content) from stdin", reader, size=CHUNK)
        conn.commit()
        return time.perf_counter() - start
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# luigi's CopyToTable


class _BaselineTarget(luigi.contrib.postgres.PostgresTarget):
    # Beside the scratch table, so drop_baselines takes the markers with it.
    marker_table = f"{SCHEMA}.table_updates"

    def __init__(self, host, database, user, password, table, update_id, port=None):
        # PostgresTarget would split the host at ":" (breaking IPv6 literals) and fail on no host at
        # all; libpq takes a host name, an address or a socket directory as given, and picks the
        # default port itself when none is set.
        super().__init__("", database, user, password, table, update_id, port)
        self.host, self.port = host, port


class _CopyLines(luigi.contrib.postgres.CopyToTable):
    dsn = luigi.Parameter(significant=False, visibility=ParameterVisibility.PRIVATE)
    ndjson_path = luigi.Parameter()
    date = luigi.DateParameter()
    # Part of the task id, which is CopyToTable's update_id: a new one per call, so it always runs.
    token = luigi.Parameter()

    table = f"{SCHEMA}.copy_to_table"
    columns = [("date", "date"), ("json_content", "jsonb")]

    def _param(self, key):
        return psycopg2.extensions.parse_dsn(self.dsn).get(key)

    @property
    def host(self):
        return self._param("host")

    @property
    def port(self):
        return self._param("port")

    @property
    def database(self):
        return self._param("dbname")

    @property
    def user(self):
        return self._param("user")

    @property
    def password(self):
        return self._param("password")

    def output(self):
        return _BaselineTarget(
            self.host, self.database, self.user, self.password, self.table, self.update_id, self.port
        )

    def rows(self):
        with _open(Path(self.ndjson_path)) as lines:
            for line in lines:
                if not line.isspace():
                    yield self.date, line.rstrip(b"\n").decode("utf-8")


def copy_to_table_seconds(dsn: str, ndjson_path: Path, date: datetime.date) -> float:
    """Seconds of a CopyToTable task's run() loading the file into `bench_baseline.copy_to_table`."""
    _fresh_table(dsn, "copy_to_table", "date date, json_content jsonb")
    task = _CopyLines(dsn=dsn, ndjson_path=str(ndjson_path), date=date, token=uuid.uuid4().hex)
    # run() alone, no scheduler around it, as our loader is timed (load_partitions): the two
    # loaders' own work, connection and commit included, and nothing else.
    start = time.perf_counter()
    task.run()
    elapsed = time.perf_counter() - start
    if not task.complete():
        raise RuntimeError(f"luigi CopyToTable baseline did not mark itself done: {task}")
    return elapsed


# ---------------------------------------------------------------------------------------------
# dlt, in its own virtualenv

# argv: path, dataset; the connection string in BENCH_DLT_DSN. Prints the seconds of pipeline.run
# (extract, normalize, load) last.
_DLT_SCRIPT = r"""
import getpass, gzip, json, os, sys, time
from urllib.parse import quote

import dlt
import psycopg2.extensions

dsn, (path, dataset) = os.environ["BENCH_DLT_DSN"], sys.argv[1:3]
params = psycopg2.extensions.parse_dsn(dsn)
host = params.pop("host", "")
# dlt requires a host (empty is libpq's default socket) and renders it into a URL, where libpq
# reads a socket directory percent-encoded.
if host.startswith("/"):
    host = quote(host, safe="")
user = params.pop("user", None) or getpass.getuser()
credentials = {
    "host": host,
    "port": int(params.pop("port", 5432)),
    "username": user,
    "password": params.pop("password", ""),
    "database": params.pop("dbname", None) or user,
    "query": params,
}

def rows():
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as lines:
        for line in lines:
            if not line.isspace():
                yield json.loads(line)

pipeline = dlt.pipeline(
    pipeline_name=dataset,
    destination=dlt.destinations.postgres(credentials=credentials),
    dataset_name=dataset,
)
start = time.perf_counter()
pipeline.run(rows(), table_name="event", write_disposition="replace")
print(time.perf_counter() - start)
"""


def _skip_dlt(why: str) -> None:
    print(f"warning: dlt baseline skipped: {why}", file=sys.stderr)


# One version of dlt, so that the row compares with the same code from run to run and machine to machine.
DLT_VERSION = "1.31.0"


def _dlt_python(venv_dir: Path):
    """The venv's python with dlt DLT_VERSION, making the venv first if needed; None when that fails."""
    python = venv_dir / "bin" / "python"
    has_dlt = f"import importlib.metadata as m; assert m.version('dlt') == {DLT_VERSION!r}"
    if python.exists() and subprocess.run([python, "-c", has_dlt], capture_output=True).returncode == 0:
        return python
    pip = venv_dir / "bin" / "pip"
    steps = (
        # The interpreter running the bench (the project's), not whichever python3 is first on PATH.
        ("could not create the virtualenv", [sys.executable, "-m", "venv", str(venv_dir)]),
        ("could not install dlt[postgres]", [str(pip), "install", "--quiet", f"dlt[postgres]=={DLT_VERSION}"]),
    )
    for why, command in steps:
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            _skip_dlt(f"{why}: {error}")
            return None
        if done.returncode:
            # pip also prints warnings; its error line is the one that says why.
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            error = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1])
            _skip_dlt(f"{why}: {error}")
            return None
    return python


def dlt_seconds(dsn: str, ndjson_path: Path, date: datetime.date, venv_dir: Path) -> float | None:
    """Seconds of dlt's pipeline.run loading the file into `bench_baseline_dlt.event`, or None without dlt.

    `date` is unused: dlt loads the JSON documents as they are, flattening them into columns.
    """
    python = _dlt_python(Path(venv_dir))
    if python is None:
        return None
    # A first load every time, like the other baselines' fresh tables.
    _drop_schemas(dsn, DLT_SCHEMAS)
    with tempfile.TemporaryDirectory(prefix="bench-dlt-") as work:
        # The pipeline's local state goes to the scratch folder, and no config is picked up from the
        # caller's folder; telemetry would try the network.
        # The connection string goes in the environment, not the command line, where ps shows it.
        env = dict(
            os.environ, DLT_DATA_DIR=work, DLT_PROJECT_DIR=work, RUNTIME__DLTHUB_TELEMETRY="false", BENCH_DLT_DSN=dsn
        )
        done = subprocess.run(
            [str(python), "-c", _DLT_SCRIPT, str(Path(ndjson_path).resolve()), DLT_DATASET],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
    if done.returncode:
        raise RuntimeError(f"dlt baseline failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def drop_baselines(dsn: str) -> None:
    """Drop every schema the baselines write: bench_baseline, and dlt's dataset and staging dataset."""
    _drop_schemas(dsn, (SCHEMA, *DLT_SCHEMAS))
