"""Configuration: `luigi.cfg` sections `[etl]` and `[source]`, overridden by four environment variables.

Reads luigi.cfg (and the file named by LUIGI_CONFIG_PATH, which Luigi layers on top) and the
environment; writes nothing. Every other module asks this one, so a setting lives in one place.
"""

import datetime
import os
import re
from pathlib import Path

import luigi


class etl(luigi.Config):  # noqa: N801 - Luigi names a Config class after its section
    data_dir = luigi.Parameter(default="data", description="working folder; env ETL_DATA_DIR")
    database_url = luigi.Parameter(
        default="", description="PostgreSQL URL or keyword DSN, empty for the embedded server; env ETL_DATABASE_URL"
    )
    history_start = luigi.Parameter(
        default="2024-01-01", description="first date ever loaded, YYYY-MM-DD; env ETL_HISTORY_START"
    )
    max_reject_ratio = luigi.FloatParameter(default=0.01, description="share of bad lines a load tolerates")
    database_timeout_seconds = luigi.IntParameter(
        default=30, description="how long PostgreSQL may leave a connection attempt or a check unanswered"
    )
    dbt_work_mem = luigi.Parameter(
        default="256MB", description="work_mem of dbt's sessions: a build's sorts and hashes stay in memory"
    )
    load_batch_size = luigi.IntParameter(
        default=7, description="dates of the daily layout one load task takes at most (one-file: all)"
    )
    draw_batch_size = luigi.IntParameter(default=7, description="report dates one heatmap task draws at most")


class source(luigi.Config):  # noqa: N801
    url = luigi.Parameter(default="data", description="s3://bucket[/prefix] or a local folder; env ETL_SOURCE_URL")
    events_key = luigi.Parameter(default="events_sample.json", description="events key; {date} makes it daily")
    orgs_key = luigi.Parameter(default="orgs_sample.json", description="organizations key")
    timeout_seconds = luigi.IntParameter(default=30, description="S3 connect and read timeout, per attempt")
    max_attempts = luigi.IntParameter(default=4, description="S3 attempts per request before a task fails")


def luigi_cfg_found() -> bool:
    """Whether Luigi read the project's settings. It looks for luigi.cfg in the working directory
    only; without it every [retcode] is 0, so a failed run would exit 0."""
    return luigi.configuration.get_config().has_section("retcode")


def _env(name):
    # An empty variable counts as unset, so `ETL_DATABASE_URL= make …` means "use the default".
    return os.environ.get(name) or None


def data_dir() -> Path:
    return Path(_env("ETL_DATA_DIR") or etl().data_dir).resolve()


def database_url_setting() -> str:
    """The configured connection string, or '' when the embedded server is to be used."""
    return _env("ETL_DATABASE_URL") or etl().database_url


def history_start() -> datetime.date:
    value = _env("ETL_HISTORY_START")
    return parse_date(value or etl().history_start, "ETL_HISTORY_START" if value else "[etl] history_start")


def max_reject_ratio() -> float:
    return float(etl().max_reject_ratio)


def database_timeout() -> int:
    return int(etl().database_timeout_seconds)


def dbt_work_mem() -> str:
    return etl().dbt_work_mem


def load_batch_size() -> int:
    return max(1, int(etl().load_batch_size))


def draw_batch_size() -> int:
    return max(1, int(etl().draw_batch_size))


def source_url() -> str:
    return _env("ETL_SOURCE_URL") or source().url


def events_key() -> str:
    return source().events_key


def orgs_key() -> str:
    return source().orgs_key


def source_timeout() -> int:
    return int(source().timeout_seconds)


def source_attempts() -> int:
    return max(1, int(source().max_attempts))


def parse_date(value: str, what: str = "DATE") -> datetime.date:
    """A strict YYYY-MM-DD date, or a ValueError whose text fits on one line."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value or ""):
        raise ValueError(f"{what} must be a date as YYYY-MM-DD, got {value!r}")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} is not a calendar date: {value!r}") from None


def is_daily(key: str) -> bool:
    """A key with `{date}` names one object or prefix per day (contract section 2)."""
    return "{date}" in key


def dates_between(start: datetime.date, end: datetime.date) -> list:
    """Every date from start to end, both included."""
    return [start + datetime.timedelta(days=n) for n in range((end - start).days + 1)]
