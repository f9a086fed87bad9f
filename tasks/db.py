"""Connections to the pipeline's PostgreSQL: opening them, transactions, advisory locks, and the
connection string read the way libpq reads it (for printing it without its password and for
handing the same connection to dbt).

Reads the connection string from tasks.server; writes nothing of its own.
"""

import contextlib
import datetime
import os
import re
import socket
import threading
import time
from urllib.parse import quote, urlencode

import psycopg2
import psycopg2.extensions

from tasks import config, server

APPLICATION = "product-events-etl"

# libpq parameters and the environment variables libpq reads them from, for processes (dbt, psql)
# that should connect exactly as we do.
LIBPQ_ENVIRONMENT = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "passfile": "PGPASSFILE",
    "channel_binding": "PGCHANNELBINDING",
    "options": "PGOPTIONS",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "service": "PGSERVICE",
    "require_auth": "PGREQUIREAUTH",
}
_QUOTED = re.compile(r'"[^"]*"')


class DatabaseSettingError(ValueError):
    """The configured connection string is not one libpq can read."""


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL refused or did not answer; the message never holds the password."""


def parameters(dsn: str) -> dict:
    """libpq's own reading of a URL or keyword DSN; the error never echoes the setting."""
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as err:
        # libpq quotes the offending part of the string, which may be the password: drop every quote.
        reason = _QUOTED.sub('"…"', str(err).strip().splitlines()[0])
        raise DatabaseSettingError(
            f"ETL_DATABASE_URL / [etl] database_url is not a connection string libpq can read ({reason})"
        ) from None


def describe(dsn: str) -> str:
    """The connection string as a URL without its password (replaced by ***), safe to print."""
    params = parameters(dsn)
    user = quote(params.pop("user", ""), safe="")
    if params.pop("password", None):
        user += ":***"
    host = params.pop("host", "")
    if host.startswith("/") or "," in host:
        params["host"] = host  # a socket directory or a host list goes in the query, as libpq takes it
        host = ""
    port = params.pop("port", "")
    netloc = (f"{user}@" if user else "") + quote(host, safe="") + (f":{port}" if port and host else "")
    if port and not host:
        params["port"] = port
    dbname = quote(params.pop("dbname", ""), safe="")
    query = urlencode(sorted(params.items()), safe="/")
    return f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else "")


def scrub(message: str, dsn: str) -> str:
    """`message` without the connection string's password, wherever it appears."""
    try:
        password = psycopg2.extensions.parse_dsn(dsn).get("password")
    except psycopg2.ProgrammingError:
        return _QUOTED.sub('"…"', message).replace(dsn, "***")
    return message.replace(password, "***") if password else message


def connect(dsn: str = None, application: str = APPLICATION):
    """A new connection (libpq: timeouts, keepalives, our application name); errors name no secret."""
    dsn = dsn or server.database_url()
    parameters(dsn)  # a malformed setting fails here, with a message that does not echo it
    try:
        return psycopg2.connect(
            dsn,
            application_name=application,
            connect_timeout=config.database_timeout(),
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg2.OperationalError as err:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {describe(dsn)}: {scrub(str(err).strip(), dsn)}"
        ) from None


@contextlib.contextmanager
def transaction(dsn: str = None):
    """A connection inside one transaction: committed on success, rolled back on any error, and
    failing within database_timeout when the server stops answering (see guarded)."""
    conn = connect(dsn)
    try:
        with guarded(conn, dsn), conn:
            yield conn
    finally:
        conn.close()


def exists(cur, relation: str) -> bool:
    """Whether the table (or view, index) `schema.name` exists: a command may run before the
    pipeline made it, or after `make clean` dropped it."""
    cur.execute("select to_regclass(%s) is not null", (relation,))
    return cur.fetchone()[0]


def _answers(dsn: str, timeout: int) -> bool:
    """Whether the server completes a new connection and a query within `timeout` seconds."""
    try:
        conn = psycopg2.connect(dsn, application_name=f"{APPLICATION}-watchdog", connect_timeout=timeout)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def _cut(conn) -> None:
    """End the connection's socket under libpq's feet: a call blocked on it fails at once."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def guarded(conn, dsn: str = None, on_dead=None, check_every: float = 5.0):
    """Bound the time a server that stops answering can hold the block: while inside, a thread asks
    the server for a fresh connection every `check_every` seconds; once it has not answered for
    [etl] database_timeout_seconds, the thread cuts `conn` (the blocked call fails), calls
    `on_dead` (e.g. to stop dbt), and the block raises DatabaseUnavailable naming the server.

    TCP keepalives cannot tell: the kernel of a stopped server or a hung proxy still answers them.
    """
    dsn = dsn or server.database_url()
    timeout = config.database_timeout()
    stop = threading.Event()
    dead = threading.Event()

    def watch():
        answered = time.monotonic()
        while not stop.wait(check_every):
            if _answers(dsn, timeout):
                answered = time.monotonic()
            elif time.monotonic() - answered >= timeout:
                dead.set()
                _cut(conn)
                if on_dead:
                    on_dead()
                return

    watcher = threading.Thread(target=watch, name="postgres-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    except Exception:
        if dead.is_set():
            raise DatabaseUnavailable(
                f"PostgreSQL at {describe(dsn)} stopped answering (nothing for {timeout} s, "
                f"[etl] database_timeout_seconds); nothing of the interrupted step was committed"
            ) from None
        raise
    finally:
        stop.set()
        watcher.join()
    if dead.is_set():
        raise DatabaseUnavailable(f"PostgreSQL at {describe(dsn)} stopped answering (nothing for {timeout} s)")


def lock_partition(cur, name: str, date: datetime.date) -> None:
    """Hold a transaction-scoped advisory lock on (name, date): one writer per partition."""
    cur.execute("select pg_advisory_xact_lock(hashtext(%s), (%s::date - date '1970-01-01'))", (name, date))


def lock(cur, name: str) -> None:
    """Hold a transaction-scoped advisory lock on `name`."""
    cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (name,))


def child_environment(conn) -> dict:
    """libpq environment variables that make a child process (dbt) connect as `conn` did.

    Taken from libpq's effective parameters of a live connection, so every route libpq knows
    (URL, keyword DSN, PGPASSWORD, ~/.pgpass, PGPASSFILE, sslmode, PGSSLROOTCERT…) reaches the child.
    """
    effective = conn.get_dsn_parameters()
    env = {LIBPQ_ENVIRONMENT[name]: value for name, value in effective.items() if name in LIBPQ_ENVIRONMENT and value}
    env["PGHOST"] = conn.info.host
    env["PGPORT"] = str(conn.info.port)
    env["PGUSER"] = conn.info.user
    env["PGDATABASE"] = conn.info.dbname
    if conn.info.password:
        env["PGPASSWORD"] = conn.info.password
    return env
