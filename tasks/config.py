"""Configuration: `luigi.cfg` sections `[etl]` and `[source]`, overridden by four environment variables.

Reads luigi.cfg (and the file named by LUIGI_CONFIG_PATH, which Luigi layers on top) and the
environment; writes nothing. Every other module asks this one, so a setting lives in one place.
"""

import configparser
import datetime
import math
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
    # an empty setting is the default, as an empty variable is: never the working directory
    return Path(_env("ETL_DATA_DIR") or etl().data_dir or "data").resolve()


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
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} is not a calendar date: {value!r}") from None
    # Luigi writes a year before 1000 in fewer than four digits, and cannot read it back; a report
    # of D counts up to D + 1 day
    if not datetime.date(1000, 1, 1) <= day < datetime.date.max:
        raise ValueError(f"{what} must be from 1000-01-01 to 9999-12-30, got {value!r}")
    return day


def is_daily(key: str) -> bool:
    """A key with `{date}` names one object or prefix per day (contract section 2)."""
    return "{date}" in key


def key_of(key: str, day: datetime.date) -> str:
    """The key of `day`'s objects: `{date}` replaced, every other character as written (braces
    are legal in file names and S3 keys, so this is not str.format)."""
    return key.replace("{date}", day.isoformat())


PROJECT = Path(__file__).resolve().parents[1]
DBT_PROJECT = PROJECT / "dbt"


def problem(runs_tasks: bool = True) -> str:
    """Why the settings cannot be used, or ''. Luigi reads a section's values when its class is
    first made, which would be inside whichever task asked first, and its message would not say
    how to fix the value; read here, before anything runs, a bad one is one line naming it. A
    command that runs no task (`clean`, `luigid-stop`, ...) reads no source or load setting, so
    those do not stop it."""
    for section in (etl, source) if runs_tasks else (etl,):
        try:
            section()
        except ValueError as err:  # Luigi's, with the parser's error as its cause
            name = re.search(r"value of '(\w+)'", str(err))
            option = name.group(1) if name else ""
            cause = err.__cause__ or err
            # the parser's text quotes the value, and the database's may hold a password
            said = type(cause).__name__ if option == "database_url" else str(cause)
            percent = (configparser.InterpolationSyntaxError, configparser.InterpolationMissingOptionError)
            hint = " (write a literal % as %%)" if isinstance(cause, percent) else ""
            return f"[{section.__name__}] {option} cannot be read: {said}{hint}"
    timeouts = {"[etl] database_timeout_seconds": database_timeout()}
    if runs_tasks:
        try:
            history_start()
        except ValueError as err:
            return str(err)
        ratio = max_reject_ratio()
        if math.isnan(ratio) or not 0 <= ratio <= 1:
            return f"[etl] max_reject_ratio is {ratio}: give the share of bad lines a load tolerates, 0 to 1 (0.01: 1%)"
        timeouts["[source] timeout_seconds"] = source_timeout()
    for name, seconds in timeouts.items():
        if seconds < 1:
            # libpq reads a connect_timeout of 0 as "wait for ever"
            return f"{name} is {seconds}: give a number of seconds of at least 1"
    folder = data_dir()
    if PROJECT.is_relative_to(folder):
        # dbt's artifacts go to <data_dir>/dbt, and `clean` removes it: here, the dbt project itself
        return f"the data dir {folder} holds the project's own folders: give one of its own (the default is data)"
    return ""


def dates_between(start: datetime.date, end: datetime.date) -> list:
    """Every date from start to end, both included."""
    return [start + datetime.timedelta(days=n) for n in range((end - start).days + 1)]
