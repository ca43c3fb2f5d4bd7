"""Bounded waits on the metadata store, and readers that never queue behind a writer.

A "hung" database is a loopback socket that accepts TCP connections and never answers a byte.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_stack import free_port
from sqlalchemy import create_engine, select, text

from mlcore.config import get_settings
from mlcore.store.models import Batch
from mlcore.store.session import (
    DatabaseUnavailable,
    SchemaMissing,
    get_engine,
    read_only,
    session_scope,
    upgrade,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Settings and engines are cached per process: rebuild them around every test."""
    get_settings.cache_clear()
    get_engine.cache_clear()
    yield
    get_settings.cache_clear()
    get_engine.cache_clear()


@pytest.fixture
def timeouts(monkeypatch):
    """``timeouts(connect=2, statement=1, lock=0.2)``: set the MLCORE_DB_* waits for the test."""
    def _set(**seconds: float) -> None:
        for name, value in seconds.items():
            monkeypatch.setenv(f"MLCORE_DB_{name.upper()}_TIMEOUT", str(value))
        get_settings.cache_clear()
        get_engine.cache_clear()

    return _set


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A loopback port whose server accepts connections and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)  # hold it open, never read or write

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_server_fails_the_connect_in_seconds_naming_host_and_cause(hung_port, timeouts):
    timeouts(connect=2)
    url = f"postgresql+psycopg2://mlcore:hunter2-Pw@127.0.0.1:{hung_port}/db"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as err:
        with session_scope(url) as s:
            s.execute(text("select 1"))
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert f"127.0.0.1:{hung_port}" in message
    assert "connect timeout" in message and "within 2 s" in message
    assert "MLCORE_DATABASE_URL" in message
    assert "hunter2" not in message and "hunter2" not in repr(err.value)


def test_a_refused_port_fails_at_once(timeouts):
    timeouts(connect=2)
    port = free_port()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=f"127.0.0.1:{port} could not be reached"):
        with session_scope(f"postgresql+psycopg2://x@127.0.0.1:{port}/db") as s:
            s.execute(text("select 1"))
    assert time.monotonic() - started < 3


def test_a_missing_database_is_the_drivers_error_not_an_unavailable_one(postgres_url):
    # The server answered (FATAL: database does not exist): not a wait, left to the driver.
    from sqlalchemy.exc import OperationalError

    url = postgres_url.rsplit("/", 1)[0] + f"/nope_{uuid.uuid4().hex[:8]}"
    with pytest.raises(OperationalError, match="does not exist"):
        with session_scope(url) as s:
            s.execute(text("select 1"))


def test_the_statement_timeout_stops_a_long_query_on_postgres(postgres_url, timeouts):
    timeouts(statement=1)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=r"within 1 s \(statement timeout\)"):
        with session_scope(postgres_url) as s:
            s.execute(text("select pg_sleep(10)"))
    assert time.monotonic() - started < 5


def test_the_urls_own_options_are_kept_alongside_the_timeouts(postgres_url, timeouts):
    timeouts(statement=7, lock=3)
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with session_scope(postgres_url) as s:
        s.execute(text(f"create schema {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    with session_scope(url) as s:
        assert s.execute(text("show search_path")).scalar() == schema
        assert s.execute(text("show statement_timeout")).scalar() == "7s"
        assert s.execute(text("show lock_timeout")).scalar() == "3s"
    get_engine(url).dispose()


def test_missing_tables_say_run_mlcore_init_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(SchemaMissing, match="mlcore init"):
        with session_scope(url) as s:
            s.scalars(select(Batch)).all()


def test_missing_tables_say_run_mlcore_init_on_postgres(postgres_url):
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"create schema {schema}"))
    admin.dispose()
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    with pytest.raises(SchemaMissing, match="mlcore init"):
        with session_scope(url) as s:
            s.scalars(select(Batch)).all()
    get_engine(url).dispose()


def test_the_cli_gives_up_on_a_hung_database_within_seconds(hung_port, tmp_path):
    env = {**os.environ, "MLCORE_HOME": str(tmp_path / "home"),
           "MLCORE_DATABASE_URL": f"postgresql+psycopg2://x@127.0.0.1:{hung_port}/db",
           "MLCORE_DB_CONNECT_TIMEOUT": "2", "MLCORE_PROBLEMS_DIR": str(ROOT / "problems")}
    mlcore = Path(sys.executable).with_name("mlcore")
    started = time.monotonic()
    proc = subprocess.run([str(mlcore), "batches", "--problem", "census_employment"], env=env,
                          capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0, proc.stdout
    assert elapsed < 10, f"took {elapsed:.1f} s"


# --- readers don't block -------------------------------------------------------------------


def _batch(batch_id: str) -> Batch:
    return Batch(problem="census_employment", batch_id=batch_id, source_uri="file:///x",
                 sha256="0" * 64, row_count=10, schema_hash="h", schema={}, state="published")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'mlcore.db'}"
    upgrade(url)
    with session_scope(url) as s:
        s.add(_batch("b1"))
    return url


@pytest.fixture
def writer_holding_the_lock(sqlite_url) -> Iterator[sqlite3.Connection]:
    """A second connection in the middle of a long write: BEGIN IMMEDIATE + an uncommitted row."""
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("insert into batches (problem, batch_id, source_uri, sha256, row_count, "
                 "schema_hash, schema, quarantine_count, state, created_at) values "
                 "('census_employment', 'b2', 'x', 'x', 1, 'h', '{}', 0, 'staged', "
                 "'2024-01-01 00:00:00')")
    yield conn
    conn.rollback()
    conn.close()


def test_a_reader_sees_the_committed_state_at_once_behind_a_writer(
        sqlite_url, writer_holding_the_lock, timeouts):
    from mlcore.reporting import batches

    timeouts(lock=5)
    started = time.monotonic()
    with read_only():
        with session_scope(sqlite_url) as s:
            ids = s.scalars(select(Batch.batch_id).order_by(Batch.id)).all()
        rows = batches("census_employment", sqlite_url)
    assert time.monotonic() - started < 1
    assert ids == ["b1"]  # the committed state, not the writer's uncommitted b2
    assert [r["batch_id"] for r in rows] == ["b1"]
    with session_scope(sqlite_url, readonly=True) as s:
        assert s.scalars(select(Batch.batch_id)).all() == ["b1"]


def test_a_writer_still_waits_for_the_lock_and_then_gives_up(
        sqlite_url, writer_holding_the_lock, timeouts):
    timeouts(lock=0.5)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="lock timeout"):
        with session_scope(sqlite_url) as s:
            s.scalars(select(Batch.batch_id)).all()
    assert 0.4 < time.monotonic() - started < 5


def test_a_write_inside_read_only_is_refused_and_the_connection_writes_again_after(sqlite_url):
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError, match="readonly"), read_only():
        with session_scope(sqlite_url) as s:
            s.add(_batch("b9"))
            s.flush()
    with session_scope(sqlite_url) as s:  # the pooled connection is writable again
        s.add(_batch("b3"))
    with session_scope(sqlite_url, readonly=True) as s:
        assert s.scalars(select(Batch.batch_id).order_by(Batch.id)).all() == ["b1", "b3"]


def test_read_only_on_postgres_is_a_read_only_transaction(postgres_url):
    from sqlalchemy.exc import InternalError

    with session_scope(postgres_url, readonly=True) as s:
        assert s.execute(text("show transaction_read_only")).scalar() == "on"
    with pytest.raises(InternalError, match="read-only transaction"):
        with read_only(), session_scope(postgres_url) as s:
            s.execute(text("create table should_not_exist (x int)"))
    with session_scope(postgres_url) as s:
        assert s.execute(text("show transaction_read_only")).scalar() == "off"
