"""Exclusive claims the metadata store decides, so writers on different hosts (homes that share
no disk) take turns: the one place that says "one publish per batch ID" across workers.

:func:`store_lock` holds a named lock for a block:

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock`` on a 64-bit hash of the
  name), on a connection of its own held for the block. Polled, not waited on, so a long
  holder never trips ``lock_timeout``; the server releases it when the holder's connection ends
  (a killed worker frees it at once);
* SQLite: the database is a local file, so every writer is on one host: an ``flock`` beside it
  (``<dir of the db>/locks/<name>.lock``; under ``MLCORE_HOME`` for the default store).

A lock can still be lost under a live holder (its connection dropped): writers therefore also
compare-and-set what they commit (``mlcore.ingestion``: the manifest's claim token).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from mlcore.locks import file_lock
from mlcore.store.session import get_engine, translate_db_error

log = logging.getLogger(__name__)
POLL_SECONDS = 0.1


def lock_key(name: str) -> int:
    """The advisory-lock key of ``name``: the first 8 bytes of its SHA-256, signed."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_dir(url: str) -> Path:
    """Where SQLite stores' lock files go: ``locks/`` beside the database file."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return Path(tempfile.gettempdir()) / "batchloop-locks"
    return Path(database).resolve().parent / "locks"


@contextmanager
def store_lock(url: str, name: str) -> Iterator[None]:
    """Hold the exclusive lock ``name`` of the store at ``url`` for the block (waits for it).

    Raises:
        DatabaseUnavailable: the store could not be reached while taking the lock.
    """
    if make_url(url).get_backend_name() != "postgresql":
        with file_lock(lock_dir(url) / f"{name}.lock"):
            yield
        return
    engine, key = get_engine(url), lock_key(name)
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        waited = time.monotonic()
        while not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
            time.sleep(POLL_SECONDS)
    except DBAPIError as exc:
        translated = translate_db_error(exc, engine)
        raise (translated or exc) from exc
    if (held := time.monotonic() - waited) > 1:
        log.info("store lock %s: waited %.1f s for another holder", name, held)
    try:
        yield
    finally:
        try:
            conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        except DBAPIError:
            conn.invalidate()  # the connection is gone, and the server released the lock with it
        finally:
            conn.close()
