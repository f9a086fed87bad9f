"""Forced reprocessing: make date D and everything downstream of it incomplete again.

Reads nothing but the completion records; removes the outputs that say "done" (download
folders and staging markers of D, dbt markers and reports of D and later dates). No data is
deleted here: the next run reloads D in one transaction and rebuilds what depends on it.
"""

from tasks import config, database
from tasks.export import report_path
from tasks.extract import DownloadEvents, DownloadOrganizations
from tasks.load import EVENTS, ORGANIZATIONS
from tasks.transform import TARGET as DBT_TARGET


def invalidate(date) -> list:
    """Remove the completion records of D's chain and of every later report; returns what it did."""
    done = []
    for task in (DownloadEvents(date), DownloadOrganizations(date)):
        if task.output().exists():
            task.output().remove()
            done.append(f"removed download {task.output().path}")
    for table in (EVENTS.table, ORGANIZATIONS.table):
        with database.transaction() as conn:
            database.ensure_staging(conn)
            with conn.cursor() as cur:
                database.delete_marker(cur, table, date)
        done.append(f"marked {table} {date} for reload")
    # Every report from D on saw partition D, so each is stale until rebuilt.
    for day in database.remove_markers(DBT_TARGET, date):
        done.append(f"marked dbt build {day} for rebuild")
    for path in sorted((config.data_dir() / "reports").glob("cohort_summary_*.*")):
        if path.stem.rsplit("_", 1)[-1] >= date.isoformat():
            path.unlink()
            done.append(f"removed {path}")
    return done
