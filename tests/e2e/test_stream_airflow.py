"""A sealed stream batch runs on through the loop by itself: the stream service tells the real
Airflow (REST ``POST /api/v2/assets/events`` on the problem's ``curated`` asset) and the
scheduler runs ``materialize_features`` for that batch, nobody triggering it.

One private ``airflow standalone`` (tests/support/airflow_stack.py: own home, ports, SQLite
metadata DB) with mlcore's SQLite store and Feast's default stores under a temporary
MLCORE_HOME; the service runs in this process against the real Redis (a claimed db, flushed
after). Every DAG starts paused; only ``materialize_features`` is unpaused.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from airflow_stack import Stack
from sqlalchemy import select

from mlcore.store.models import Materialization
from mlcore.store.session import session_scope, upgrade
from mlcore.store.stream_tables import StreamSegment
from mlcore.streaming import Service, produce

pytestmark = pytest.mark.live  # starts a live Airflow (make test-live)

P = "census_employment"
DAG = f"{P}__materialize_features"
BATCH = f"{P}-stream-000001"


def test_a_sealed_stream_batch_is_materialized_by_the_scheduler(
        tmp_path, monkeypatch, spec, slices, claim_redis_db):
    from mlcore.config import Settings

    client, db = claim_redis_db()
    home = tmp_path / "mlcore"
    home.mkdir()
    url = f"sqlite:///{home / 'mlcore.db'}"
    upgrade(url)
    monkeypatch.setenv("MLCORE_HOME", str(home))
    stack = Stack(tmp_path / "airflow", {
        "MLCORE_HOME": str(home), "MLCORE_DATABASE_URL": url,
        "MLCORE_AIRFLOW_USER": None, "MLCORE_AIRFLOW_PASSWORD": None,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "BATCHLOOP_START_PAUSED": "true"}, dag_ids=(DAG,))
    try:
        with stack:
            stack.set_paused(DAG, False)
            settings = Settings(home=home, database_url=url, airflow_url=stack.base,
                                stream_url=f"redis://127.0.0.1:6379/{db}")
            stream = spec.model_copy(update={"stream": spec.stream.model_copy(
                update={"seal_every_events": 30, "seal_every_seconds": 3600})})
            rows = pd.read_parquet(slices[2016]).head(30).to_dict("records")
            produce(stream, settings, [json.dumps({"event_id": f"e{n}", **r})
                                       for n, r in enumerate(rows)])
            service = Service(stream, settings, "e2e")
            try:
                counts = service.run(lambda: bool(service.counts.sealed), max_seconds=120)
            finally:
                service.close()
            assert (counts.taken, counts.sealed) == (30, [BATCH])
            with session_scope(url) as s:
                segment = s.scalar(select(StreamSegment).where(StreamSegment.batch_id == BATCH))
                assert segment.state == "published"
                assert segment.notified_at is not None  # Airflow took the asset event

            def finished():
                runs = stack.api(f"/dags/{DAG}/dagRuns")["dag_runs"]
                done = [r for r in runs if r["state"] in ("success", "failed")]
                return done[0] if done else None

            run = stack.wait(f"a finished {DAG} run", finished, 180)
            assert run["state"] == "success", stack.tail()
            assert run["run_type"] == "asset_triggered"  # the service's event, nobody's trigger
            events = stack.api("/assets/events?limit=50")["asset_events"]
            assert any((e.get("extra") or {}).get("batch_id") == BATCH for e in events)
            with session_scope(url) as s:
                made = s.scalar(select(Materialization).where(
                    Materialization.problem == P, Materialization.batch_id == BATCH))
                assert made is not None and made.rows == 30
            assert list(settings.partition("features", P, BATCH).glob("*.parquet"))
    finally:
        client.flushdb()
        client.close()
