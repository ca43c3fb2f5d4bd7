"""Metadata store: migrations and SQLite pragmas, on SQLite and the real PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect, text

from mlcore.store.session import get_engine, session_scope, upgrade

TABLES = {"batches", "quarantined_rows", "materializations", "model_versions", "evaluations",
          "aliases", "alias_history", "predictions", "drift_reports", "retrain_requests",
          "stream_events", "stream_segments"}


def test_migration_creates_every_table_and_is_idempotent(db_url):
    upgrade(db_url)  # second run: nothing to do, no error
    names = set(inspect(get_engine(db_url)).get_table_names())
    assert TABLES <= names
    with session_scope(db_url) as s:
        assert s.execute(text("select version_num from alembic_version")).scalar() == "0010"


def test_sqlite_runs_in_wal_mode_with_busy_timeout(sqlite_settings):
    with session_scope(sqlite_settings.db_url) as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_failed_transaction_leaves_nothing(db_url):
    from mlcore.store.models import RetrainRequest

    try:
        with session_scope(db_url) as s:
            s.add(RetrainRequest(problem="p", trigger="manual", reason="x"))
            s.flush()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with session_scope(db_url) as s:
        assert s.query(RetrainRequest).count() == 0
