"""Transform: `dbt build` of the warehouse layers for one date D, one dbt at a time.

Reads the staging partitions up to D (through tasks.load) and the dbt project in `dbt/`; writes
the `historical`, `snapshots`, `dimensional` and `reporting` schemas, dbt's log to
`<data_dir>/logs/dbt_build_<D>.log`, and the marker ('dbt.build', D) when the build passed.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import luigi

from tasks import config, database
from tasks.load import LoadHistory

DBT_PROJECT = Path(__file__).resolve().parent.parent / "dbt"
DBT = str(Path(sys.executable).with_name("dbt"))
TARGET = "dbt.build"
SNAPSHOT = "snap_organization"
_PROGRESS = re.compile(r"\b(\d+) of (\d+) (OK|PASS|WARN|ERROR|FAIL|SKIP)")


class DbtFailed(Exception):
    """dbt exited non-zero: a model or an error-severity test failed."""


def dbt_environment(url: str) -> dict:
    """dbt's process environment: ours, plus the variables dbt/profiles.yml reads, from libpq's
    reading of the database URL. Parsing the URL never connects."""
    params = database.connection_params(url)
    return {
        **os.environ,
        "ETL_DBT_HOST": params.get("host", "localhost"),
        "ETL_DBT_PORT": params.get("port", "5432"),
        "ETL_DBT_USER": params.get("user", os.environ.get("USER", "postgres")),
        "ETL_DBT_PASSWORD": params.get("password", ""),
        "ETL_DBT_DBNAME": params.get("dbname", params.get("user", "postgres")),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def dbt_command(subcommand: list, target_path: Path, run_date=None) -> list:
    """`dbt <subcommand>` on the project in dbt/, its artifacts in `target_path`, its log in
    `<data_dir>/logs`, and D as var run_date when given."""
    command = [
        DBT, *subcommand,
        "--project-dir", str(DBT_PROJECT), "--profiles-dir", str(DBT_PROJECT),
        "--target-path", str(target_path), "--log-path", str(config.data_dir() / "logs"),
    ]
    return command + (["--vars", json.dumps({"run_date": run_date.isoformat()})] if run_date else [])


@contextlib.contextmanager
def dbt_lock(url: str):
    """A session advisory lock so that two schedulers never run dbt on one warehouse at once."""
    conn = database.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_lock(hashtext('etl.dbt'))")
        yield
    finally:
        conn.close()  # ends the session, which releases the lock even if unlock is never reached


def snapshot_is_ahead(url: str, date) -> bool:
    """Whether the organization snapshot already recorded a change after `date`.

    dbt snapshots only move forward in time (dbt-core #9892, #7138): an older date must not
    insert versions behind newer ones, so its build leaves the snapshot alone.
    """
    with database.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('snapshots.snap_organization') is not null")
        if not cur.fetchone()[0]:
            return False
        # A closed or invalidated version carries its change date in dbt_valid_to.
        cur.execute(
            "select max(greatest(dbt_valid_from, dbt_valid_to))::date > %s from snapshots.snap_organization",
            (date,),
        )
        return bool(cur.fetchone()[0])


def run_dbt(date, progress=None) -> Path:
    """Run `dbt build` for `date`; returns the log file. Raises DbtFailed when dbt fails."""
    url = database.database_url()
    log_path = config.data_dir() / "logs" / f"dbt_build_{date.isoformat()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with dbt_lock(url):
        command = dbt_command(["build"], config.data_dir() / "dbt" / "target", date)
        if snapshot_is_ahead(url, date):
            command += ["--exclude", SNAPSHOT]
        with open(log_path, "w") as log, subprocess.Popen(
            command, cwd=DBT_PROJECT, env=dbt_environment(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        ) as dbt:
            for line in dbt.stdout:
                log.write(line)
                match = _PROGRESS.search(line)
                if progress and match:
                    progress(int(match[1]), int(match[2]), line.strip())
        if dbt.returncode != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
            raise DbtFailed(f"dbt build for {date} failed (exit {dbt.returncode}); log {log_path}:\n{tail}")
    return log_path


class RunDbt(luigi.Task):
    """Build every warehouse layer for D once every staging partition up to D is loaded."""

    date = luigi.DateParameter(description="the run date D, passed to dbt as var run_date")
    resources = {"dbt": 1}

    @property
    def priority(self):
        # Among ready builds the earliest date goes first, so the snapshot moves forward in time.
        return -self.date.toordinal()

    def requires(self):
        return LoadHistory(date=self.date)

    def output(self):
        return database.MarkerTarget(TARGET, self.date)

    def run(self):
        run_dbt(self.date, progress=self._progress)
        with database.transaction() as conn, conn.cursor() as cur:
            database.ensure_staging(conn)
            database.write_marker(cur, TARGET, self.date)

    def _progress(self, done, total, line):
        self.set_progress_percentage(round(100 * done / total))
        self.set_status_message(f"dbt: {line}")
