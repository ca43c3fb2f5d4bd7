"""mlcore settings for DAG tasks: the metadata store's credentials from an Airflow Connection.

Production keeps the mlcore store's credentials in the Airflow Connection ``mlcore_db`` (an
``AIRFLOW_CONN_MLCORE_DB`` env var, the metadata DB or a secrets backend). When it exists, a task
uses it as the store URL (over ``MLCORE_DATABASE_URL``); otherwise ``mlcore.config.get_settings()``
as before. Looked up when a task first asks, never at DAG parse time; mlcore never imports Airflow.

The production profile (``MLCORE_REQUIRE_DATABASE=true``) requires the connection: Airflow
reports a failing secrets backend (a transient Execution API error) exactly like a connection
that is not defined, so a fallback there could point one worker at a private store (split
brain). With the flag set, a look-up that does not return the connection fails the task with
:class:`StoreLookupFailed` (retried by Airflow), and nothing is cached.

Light at import: stdlib only (every DAG file imports the package at parse time).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlcore.config import Settings

MLCORE_DB_CONN_ID = "mlcore_db"
DRIVER_EXTRA = "sqlalchemy_scheme"  # optional extra: another SQLAlchemy driver, e.g. +psycopg
POSTGRES_DRIVER = "postgresql+psycopg2"
# URL query keys whose values are credentials (libpq ``sslpassword``, ``password``): masked in
# task logs like the password itself.
_SECRET_QUERY_KEYS = ("password", "passwd", "secret", "token")

log = logging.getLogger(__name__)
_lock = threading.Lock()
_cached: tuple[Any, Any] | None = None  # (mlcore's process settings, the task settings from it)


class StoreLookupFailed(RuntimeError):
    """The required ``mlcore_db`` connection was not returned (not defined, or the Execution
    API / a secrets backend failed: Airflow does not tell them apart). Retryable."""


class ConnectionLike(Protocol):
    """The fields of an Airflow Connection this module reads."""

    conn_id: str
    conn_type: str | None
    host: str | None
    schema: str | None
    login: str | None
    password: str | None
    port: int | None

    @property
    def extra_dejson(self) -> dict[str, Any]:
        """The connection's extra, parsed."""


def sqlalchemy_url(conn: ConnectionLike) -> str:
    """The SQLAlchemy URL of an Airflow Connection (postgres/postgresql or sqlite type).

    Built from the connection's fields, not by rewriting ``get_uri()``: Airflow writes
    ``postgres://`` (which SQLAlchemy 2 refuses) and percent-quotes the host (a socket
    directory would break; it becomes libpq's ``host`` option here). PostgreSQL gets the
    ``postgresql+psycopg2`` driver (or the ``sqlalchemy_scheme`` extra); the other extras are
    libpq options (``sslmode``, ``options``, ...) passed as URL query parameters. Errors name
    fields, never values.

    Raises:
        ValueError: an unsupported connection type, no database, or a nested extra.
    """
    from sqlalchemy.engine import URL

    kind = (conn.conn_type or "").lower().replace("-", "_")
    if kind == "sqlite":
        path = conn.host or conn.schema
        if not path:
            raise ValueError(f"connection {conn.conn_id!r}: a sqlite connection needs the "
                             "database file path as its host")
        return f"sqlite:///{path}"
    if kind not in ("postgres", "postgresql"):
        raise ValueError(f"connection {conn.conn_id!r}: conn_type {conn.conn_type!r} is not "
                         "supported for the mlcore store (postgres or sqlite)")
    if not conn.schema:
        raise ValueError(f"connection {conn.conn_id!r}: set its schema to the database name")
    extra = dict(conn.extra_dejson)
    driver = str(extra.pop(DRIVER_EXTRA, None) or POSTGRES_DRIVER)
    if not driver.startswith("postgresql"):
        raise ValueError(f"connection {conn.conn_id!r}: extra {DRIVER_EXTRA} must name a "
                         "postgresql driver")
    query: dict[str, str] = {}
    for key, value in extra.items():
        if isinstance(value, dict | list) or value is None:
            raise ValueError(f"connection {conn.conn_id!r}: extra {key!r} must be a string or "
                             "number (extras are libpq connection options)")
        query[key] = str(value).lower() if isinstance(value, bool) else str(value)
    host = conn.host or None
    if host and host.startswith("/"):  # a Unix socket directory: libpq's host option, since
        query.setdefault("host", host)  # a URL cannot hold a path as its host
        host = None
    url = URL.create(driver, username=conn.login or None, password=conn.password or None,
                     host=host, port=conn.port or None, database=conn.schema, query=query)
    return url.render_as_string(hide_password=False)


def mlcore_db_url(conn_id: str = MLCORE_DB_CONN_ID) -> str | None:
    """The store URL from the Airflow Connection ``conn_id``; None when it is not defined.

    Call it inside a task: there the lookup asks env vars, then the Execution API (metadata DB)
    and configured backends; outside a task only env vars and configured backends. Note that
    Airflow treats a failing backend (e.g. a transient Execution API error) like "not defined"
    (only an explicit access denial raises): :func:`settings` decides what None means
    (a fallback, or with ``MLCORE_REQUIRE_DATABASE`` a retryable failure).
    """
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return sqlalchemy_url(conn)


def _mask_credentials(url: str) -> None:
    """Register the URL's password and credential-like query values with Airflow's log
    masker, whichever source the URL came from (connection or ``MLCORE_DATABASE_URL``): raw
    and in the quoted forms a printed URL holds (Airflow masks only the raw value)."""
    from urllib.parse import quote, quote_plus

    from airflow.sdk.log import mask_secret
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    values = [str(parsed.password)] if parsed.password else []
    for key, value in parsed.query.items():
        if any(word in key.lower() for word in _SECRET_QUERY_KEYS):
            values.extend((value,) if isinstance(value, str) else value)
    for value in values:
        for form in {value, quote(value, safe=""), quote(value, safe=" +"), quote_plus(value)}:
            mask_secret(form)


def _describe(url: str) -> str:
    """Where the store is, without credentials or options: ``dialect host:port/db``."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite {parsed.database}"
    return f"{parsed.get_backend_name()} {parsed.host}:{parsed.port or ''}/{parsed.database}"


def settings() -> Settings:
    """mlcore's settings for a DAG task, with the ``mlcore_db`` connection's URL if defined.

    Cached per process and per ``mlcore.config.get_settings()`` object: clearing mlcore's
    settings cache (tests, a changed environment) makes the next call look the connection up
    again. Use this in tasks instead of ``get_settings()``.

    Raises:
        StoreLookupFailed: ``MLCORE_REQUIRE_DATABASE`` is set and the look-up did not return
            the connection (never cached: the next call asks again).
    """
    global _cached
    from mlcore.config import get_settings

    base = get_settings()
    with _lock:
        hit = _cached[1] if _cached is not None and _cached[0] is base else None
    if hit is None:
        url = mlcore_db_url()
        if url is None and base.require_database:
            raise StoreLookupFailed(
                f"the Airflow connection {MLCORE_DB_CONN_ID!r} was not returned (not defined, "
                "or the Execution API / secrets backend failed) and MLCORE_REQUIRE_DATABASE is "
                "set: refusing to fall back to MLCORE_DATABASE_URL or a local store; the try "
                "is retried")
        if url is None:
            hit = base
        else:
            hit = base.model_copy(update={"database_url": url})
            log.info("mlcore store: Airflow connection %r (%s)", MLCORE_DB_CONN_ID,
                     _describe(url))
        with _lock:
            _cached = (base, hit)
    if hit.database_url:
        _mask_credentials(hit.database_url)  # each call: in-process runs may reset the masker
    return hit


def clear_cache() -> None:
    """Forget the looked-up settings: the next ``settings()`` looks the connection up again."""
    global _cached
    with _lock:
        _cached = None
