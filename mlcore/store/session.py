"""Engines and transactions. SQLite: WAL, busy timeout, ``BEGIN IMMEDIATE``; PostgreSQL by URL.

Every wait on the metadata store is bounded (``MLCORE_DB_CONNECT_TIMEOUT``,
``MLCORE_DB_STATEMENT_TIMEOUT``, ``MLCORE_DB_LOCK_TIMEOUT``): a database that accepts TCP but
never answers fails the command with :class:`DatabaseUnavailable` instead of hanging it, and a
store that was never initialized fails with :class:`SchemaMissing`. Inside :func:`read_only`
(or ``session_scope(url, readonly=True)``) SQLite transactions begin deferred, so readers never
queue behind a long write (WAL), and PostgreSQL transactions are ``READ ONLY``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from mlcore.config import get_settings, home_of
from mlcore.store.fencing import ensure_current

_READ_ONLY: ContextVar[bool] = ContextVar("mlcore_read_only", default=False)
# The home the open session's paths are relative to (``models.HomePath``).
HOME: ContextVar[Path | None] = ContextVar("mlcore_home", default=None)
_READ_ONLY_OPTION = "mlcore_read_only"  # connection execution option the 'begin' hooks read
_QUERY_ONLY_FLAG = "mlcore_query_only"  # pooled-connection info: PRAGMA query_only is on


class DatabaseUnavailable(Exception):
    """The metadata store could not be reached or did not answer in time (no password shown)."""

    def __init__(self, message: str, *, where: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.reason = reason


class SchemaMissing(Exception):
    """The metadata store answers but its tables do not exist: run ``mlcore init``."""


@contextmanager
def read_only() -> Iterator[None]:
    """Within this block every ``session_scope`` is a read-only transaction (nestable)."""
    token = _READ_ONLY.set(True)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def _timeouts() -> tuple[float, float, float]:

    s = get_settings()
    return s.db_connect_timeout, s.db_statement_timeout, s.db_lock_timeout


def _libpq_connect_timeout(seconds: float) -> int:
    # libpq takes whole seconds and treats anything below 2 as 2; 0 means "wait forever".
    return max(2, math.ceil(seconds)) if seconds > 0 else 0


def _sqlite_pragmas(busy_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, issue BEGIN so that writers can take the lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return on_connect


def _sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get(_READ_ONLY_OPTION):
        # A deferred BEGIN takes no lock: in WAL mode a reader sees the last committed state
        # at once, however long a writer holds the write lock. query_only turns an accidental
        # write into a clear error rather than a lock upgrade that fails with "locked".
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("PRAGMA query_only=ON")
        conn.info[_QUERY_ONLY_FLAG] = True
        return
    if conn.info.pop(_QUERY_ONLY_FLAG, False):
        conn.exec_driver_sql("PRAGMA query_only=OFF")
    # A deferred BEGIN upgraded to a write lock mid-transaction fails with "database is locked"
    # instead of waiting; taking the write lock at BEGIN makes the busy timeout apply.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres_begin(conn: Any) -> None:
    if conn.get_execution_options().get(_READ_ONLY_OPTION):
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def _query_value(url: URL, key: str) -> str | None:
    value = url.query.get(key)
    if isinstance(value, tuple):
        return " ".join(value) if value else None
    return value


def _libpq_connect_args(url: URL) -> dict[str, Any]:
    """connect/statement/lock timeouts and TCP keepalives; what the URL sets itself wins."""
    connect, statement, lock = _timeouts()
    args: dict[str, Any] = {}
    wanted: dict[str, Any] = {
        "connect_timeout": _libpq_connect_timeout(connect),
        # A peer that vanishes mid-query (host down, network cut) is detected in ~idle +
        # interval * count seconds instead of never.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    for key, value in wanted.items():
        if key not in url.query:
            args[key] = value
    # connect_args replace the URL's query arguments, so the URL's own options are kept here.
    own = _query_value(url, "options") or ""
    options = [own] if own else []
    if statement > 0 and "statement_timeout" not in own:
        options.append(f"-c statement_timeout={int(statement * 1000)}")
    if lock > 0 and "lock_timeout" not in own:
        options.append(f"-c lock_timeout={int(lock * 1000)}")
    if options:
        args["options"] = " ".join(options)
    return args


@cache
def get_engine(url: str) -> Engine:
    """One engine per URL per process; timeouts from :func:`mlcore.config.get_settings`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _, _, lock = _timeouts()
        engine = create_engine(url, connect_args={"timeout": lock})
        event.listen(engine, "connect", _sqlite_pragmas(int(lock * 1000)))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
            "psycopg2", "psycopg"):
        engine = create_engine(url, pool_pre_ping=True,
                               connect_args=_libpq_connect_args(parsed))
        event.listen(engine, "begin", _postgres_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _where(engine: Engine) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return f"sqlite:{url.database or ':memory:'}"
    host = url.host or "localhost"
    port = url.port or (5432 if url.get_backend_name() == "postgresql" else None)
    return f"{host}:{port}" if port else host


def _cause(exc: DBAPIError, engine: Engine) -> str:
    orig = exc.orig if exc.orig is not None else exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    cause = "; ".join(lines[:2]) or type(orig).__name__
    password = engine.url.password
    if password:
        cause = cause.replace(str(password), "***")
    return cause


def _is_schema_missing(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "pgcode", None) == "42P01":  # undefined_table
        return True
    return isinstance(exc, OperationalError) and "no such table" in str(exc.orig)


# A server that answers the connect with FATAL is up; these FATALs still mean "not now".
_NOT_NOW = ("starting up", "shutting down", "in recovery mode", "too many clients",
            "remaining connection slots")


def _unreachable(cause: str) -> bool:
    lowered = cause.lower()
    return "fatal:" not in lowered or any(phrase in lowered for phrase in _NOT_NOW)


def translate_db_error(exc: DBAPIError, engine: Engine) -> Exception | None:
    """The mlcore error for a driver error, or None to let the original through."""
    where = _where(engine)
    if isinstance(exc, (OperationalError, ProgrammingError)) and _is_schema_missing(exc):
        return SchemaMissing(
            f"the metadata store at {where} has no mlcore tables ({_cause(exc, engine)}); "
            "run `mlcore init` (or check MLCORE_DATABASE_URL)")
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return None
    connect, statement, lock = _timeouts()
    cause = _cause(exc, engine)
    code = getattr(exc.orig, "pgcode", None)
    sqlite = engine.url.get_backend_name() == "sqlite"
    if exc.statement is None and not _unreachable(cause):
        return None  # the server answered (no such database, authentication failed): not a wait
    if exc.statement is None:  # raised while connecting (refused, timeout, unknown host)
        if "timeout" in cause.lower() or "timed out" in cause.lower():
            limit = _libpq_connect_timeout(connect) if not sqlite else connect
            what, reason = f"did not answer within {limit:g} s (connect timeout)", "connect"
        else:
            what, reason = "could not be reached", "connect"
    elif exc.connection_invalidated:
        what, reason = "dropped the connection", "disconnect"
    elif code == "57014":  # query_canceled: statement_timeout (or an operator's cancel)
        what, reason = f"did not answer within {statement:g} s (statement timeout)", "statement"
    elif code == "55P03" or (sqlite and "database is locked" in cause):
        what, reason = f"did not grant a lock within {lock:g} s (lock timeout)", "lock"
    else:
        return None
    return DatabaseUnavailable(
        f"database at {where} {what}: {cause}; check MLCORE_DATABASE_URL and that the "
        "database is up", where=where, reason=reason)


@contextmanager
def session_scope(url: str | None = None, *, readonly: bool = False) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any error.

    ``readonly`` (or an enclosing :func:`read_only`) makes it a read-only transaction that does
    not wait for writers. Raises :class:`DatabaseUnavailable` when the database cannot be
    reached or does not answer in time, :class:`SchemaMissing` when its tables do not exist.
    A write rolls back with :class:`mlcore.store.fencing.TryNotCurrent` when this process is an
    orphaned task try (``mlcore.store.fencing``).
    """
    if url is None:

        url = get_settings().db_url

    engine = get_engine(url)
    options = {_READ_ONLY_OPTION: True} if readonly or _READ_ONLY.get() else None
    factory = sessionmaker(engine, expire_on_commit=False)
    token = HOME.set(home_of(url))
    try:
        with factory.begin() as session:
            # Connect (and BEGIN) now, so an unreachable database fails here, in seconds.
            session.connection(execution_options=options)
            yield session
            if options is None:  # a write: an orphaned task try must not commit (fencing)
                ensure_current()
    except DBAPIError as exc:
        translated = translate_db_error(exc, engine)
        if translated is None:
            raise
        raise translated from exc
    finally:
        HOME.reset(token)


def upgrade(url: str) -> None:
    """Bring the schema at ``url`` to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("mlcore.store") / "migrations"))
    cfg.attributes["connection_url"] = url
    command.upgrade(cfg, "head")
