"""PostgreSQL databases of a test's own on the local server (``BATCHLOOP_TEST_PG``, default
``postgres@127.0.0.1:5432``), created fresh and dropped afterwards, and the URLs and Feast
environment that point at them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("BATCHLOOP_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
PG = urlsplit(PG_ADMIN_URL)


def pg_url(database: str, scheme: str = "postgresql+psycopg2") -> str:
    """The URL of ``database`` on the test server, with ``scheme`` (``postgresql`` for an
    Airflow Connection URI, ``postgresql+psycopg`` for Airflow's async URL)."""
    return urlunsplit(PG._replace(scheme=scheme, path=f"/{database}"))


def feast_pg_env(database: str) -> dict[str, str]:
    """The ``FEAST_PG_*`` variables ``deploy/feature_store.*.yaml`` read, for ``database``."""
    return {"FEAST_PG_HOST": PG.hostname or "127.0.0.1", "FEAST_PG_PORT": str(PG.port or 5432),
            "FEAST_PG_USER": PG.username or "postgres", "FEAST_PG_DATABASE": database,
            "FEAST_PG_PASSWORD": PG.password or "unused-trust-auth"}


@contextmanager
def _created(names: list[str]) -> Iterator[None]:
    """Create ``names``; on exit drop them all, ending any session still connected."""
    admin = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def fresh_databases(*roles: str, prefix: str = "batchloop") -> Iterator[dict[str, str]]:
    """One fresh database ``<prefix>_<role>_<8 hex>`` per role: yields ``{role: name}``."""
    names = {role: f"{prefix}_{role}_{uuid.uuid4().hex[:8]}" for role in roles}
    with _created(list(names.values())):
        yield names


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """One fresh database ``<prefix>_<10 hex>``: yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _created([name]):
        yield name
