"""The labels DAG through Airflow (``dag.test()``): late labels of a scored batch stored and the
champion and shadow challenger measured; a repeat is a no-op; a conflicting file fails once
(no retries) and stores nothing."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import func, select

from mlcore.config import TrainConfig
from mlcore.datasets import build_dataset
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.registry import CHALLENGER, move_alias
from mlcore.scoring import score_batch
from mlcore.store.models import GroundTruth, PerformanceReport
from mlcore.store.session import session_scope
from mlcore.training import train_contender


@pytest.fixture
def scored_2016(mlcore_env, spec, slices):
    """2015 and 2016 published and materialized, a champion and a challenger trained on 2015,
    both of which scored 2016."""
    settings = mlcore_env
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
        materialize_batch(spec, str(year), settings)
    dataset = build_dataset(spec, settings)
    versions = [train_contender(spec, dataset, TrainConfig(algorithm="logistic_regression",
                                                           random_state=seed), settings).version
                for seed in (0, 1)]
    for alias, version in zip(("champion", CHALLENGER), versions, strict=True):
        move_alias(spec.name, expected=None, new=version, reason="e2e", url=settings.db_url,
                   alias=alias)
        score_batch(spec, "2016", settings, version=version)
    return versions


def _labels_events(spec):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        return [e.extra for e in s.query(AssetEvent).join(AssetModel, AssetEvent.asset_id ==
                                                          AssetModel.id)
                .filter(AssetModel.uri == f"batchloop://{spec.name}/labels")]


def _stored(url):
    with session_scope(url) as s:
        labels = s.scalar(select(func.count()).select_from(GroundTruth))
        reports = s.execute(select(PerformanceReport.model_version, PerformanceReport.role,
                                   PerformanceReport.labelled_rows)
                            .order_by(PerformanceReport.model_version)).all()
    return labels, [tuple(r) for r in reports]


def test_labels_dag_stores_and_measures_then_refuses_a_conflict(
        airflow_db, mlcore_env, spec, slices, scored_2016, run_or_error, tmp_path, task_tries):
    dag_id, (champion, challenger) = f"{spec.name}__ingest_labels", scored_2016
    conf = {"batch_id": "2016", "source": str(slices[2016])}  # the yearly file, features and all

    result, error = run_or_error(dag_id, conf)
    assert error is None
    stored = result["tasks"]["ingest_labels"]["value"]
    assert (stored["batch_id"], stored["inserted"], stored["batch_labels"]) == ("2016", 1500, 1500)
    measured = result["tasks"]["measure_performance"]["value"]
    assert [(m["model_version"], m["role"], m["labelled_rows"]) for m in measured] == [
        (champion, "champion", 1500), (challenger, "challenger", 1500)]
    assert all(0.5 < m["value"] < 1 and m["coverage"] == 1.0 for m in measured)
    assert _stored(mlcore_env.db_url) == (1500, [(champion, "champion", 1500),
                                                 (challenger, "challenger", 1500)])
    assert {"batch_id": "2016"} in _labels_events(spec)

    again, error = run_or_error(dag_id, conf)
    assert error is None and again["tasks"]["ingest_labels"]["value"]["inserted"] == 0

    flipped = tmp_path / "flipped.parquet"
    frame = pd.read_parquet(slices[2016])
    frame.assign(employed=1 - frame["employed"]).to_parquet(flipped, index=False)
    _, error = run_or_error(dag_id, {"batch_id": "2016", "source": str(flipped)})
    assert error is not None and "ingest_labels" in error
    tries = task_tries(dag_id)
    assert tries["ingest_labels"] == ("failed", 1)  # bad input: no retries
    assert tries["measure_performance"][0] == "upstream_failed"
    assert _stored(mlcore_env.db_url)[0] == 1500
