"""A PostgreSQL database of a test's own on the local server (``BATCHLOOP_TEST_PG``, default
``postgres@127.0.0.1:5432``), created fresh and dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("BATCHLOOP_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """Create the database ``<prefix>_<10 hex>`` and yield its name; on exit drop it, ending
    any session still connected to it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
