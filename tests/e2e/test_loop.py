"""The whole loop through Airflow (``dag.test()``) on small real slices, checking every store."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
from sqlalchemy import func, select

from mlcore.store.models import (
    AliasHistory,
    Batch,
    DriftReport,
    Evaluation,
    Materialization,
    ModelVersion,
    Prediction,
)
from mlcore.store.session import session_scope


@pytest.fixture(scope="module")
def runner():
    from batchloop_airflow.runner import run_dag

    return run_dag


def _count(url, model, **where):
    with session_scope(url) as s:
        q = select(func.count()).select_from(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return s.scalar(q)


def test_loop_runs_every_dag_and_lands_in_every_store(airflow_db, mlcore_env, slices, spec,
                                                      runner):
    settings, p, url = mlcore_env, spec.name, mlcore_env.db_url
    run_ids: set[str] = set()

    def runner_logged(dag_id, conf):
        result = runner(dag_id, conf)
        run_ids.add(result["run_id"])
        return result

    for i, year in enumerate((2015, 2016, 2017)):
        b = str(year)
        ingest = runner_logged(f"{p}__ingest_batch", {"batch_id": b, "source": str(slices[year])})
        assert ingest["tasks"]["ingest_batch"]["value"]["published_rows"] == 1500
        runner_logged(f"{p}__materialize_features", {"batch_id": b})
        if i:
            scored = runner_logged(f"{p}__score_batch", {"batch_id": b})
            assert scored["tasks"]["score_batch[0]"]["value"]["rows"] == 1500
            runner_logged(f"{p}__monitor_model", {"batch_id": b})
        retrain = runner_logged(f"{p}__retrain_model", {"until_batch": b, "reason": "e2e"})
        decision = retrain["tasks"]["evaluate_contender"]["value"]
        assert decision["holdout_batches"] == [b]  # the newest batch's latest 20 %
        assert retrain["tasks"]["promote_contender"]["state"] == (
            "success" if decision["promote"] else "skipped")

    # metadata store: manifests, materializations, models, evaluations, predictions, drift
    assert _count(url, Batch, problem=p, state="published") == 3
    assert _count(url, Materialization, problem=p) == 3
    assert _count(url, ModelVersion, problem=p) == 3
    assert _count(url, Evaluation, problem=p) == 3
    assert _count(url, Prediction, problem=p, batch_id="2016") == 1500
    assert _count(url, DriftReport, problem=p) == 2
    assert _count(url, AliasHistory, problem=p) >= 1  # the first model became champion
    # files: curated + offline feature partitions, reports, artifacts
    for b in ("2015", "2016", "2017"):
        assert len(pd.read_parquet(settings.partition("curated", p, b))) == 1500
        assert len(pd.read_parquet(settings.partition("features", p, b))) == 1500
    for b in ("2016", "2017"):
        assert list(settings.partition("reports", p, b).glob("drift_v*.html"))
    # Feast online store (SQLite) holds every materialized entity
    online = sqlite3.connect(settings.home / "feast" / "online_store.db")
    (n,) = online.execute(
        f"select count(distinct entity_key) from batchloop_{p}_fv_wide").fetchone()
    assert n == 4500
    # Airflow's own DB recorded the runs (what `make up` shows)
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        runs = s.query(DagRun).filter(DagRun.run_id.in_(run_ids)).all()
    assert len(runs) == 13  # 3 ingest + 3 materialize + 2 score + 2 monitor + 3 retrain
    assert {r.dag_id.split("__")[1] for r in runs} == {
        "ingest_batch", "materialize_features", "score_batch", "monitor_model", "retrain_model"}
    assert all(str(r.state) == "success" for r in runs)


def test_asset_event_carries_the_batch_id(airflow_db, mlcore_env, slices, spec, runner):
    """ingest emits <problem>.curated with the batch ID: what schedules materialize_features."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    runner(f"{spec.name}__ingest_batch", {"batch_id": "ev-1", "source": str(slices[2015])})
    with create_session() as s:
        extras = [e.extra for e in s.query(AssetEvent).join(AssetModel, AssetEvent.asset_id ==
                                                            AssetModel.id)
                  .filter(AssetModel.uri == f"batchloop://{spec.name}/curated")]
    assert {"batch_id": "ev-1"} in extras
