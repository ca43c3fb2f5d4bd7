"""Bad input through Airflow: clear errors naming the batch, no retries, nothing half written."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from sqlalchemy import select

from mlcore.store.models import Batch, Prediction
from mlcore.store.session import session_scope


def _batches(url):
    with session_scope(url) as s:
        return {(b.batch_id, b.state) for b in s.scalars(select(Batch))}


def test_missing_source_fails_once_and_publishes_nothing(airflow_db, mlcore_env, spec, run_or_error,
                                                         tmp_path, task_tries):
    dag_id = f"{spec.name}__ingest_batch"
    missing = str(tmp_path / "nope.parquet")
    result, error = run_or_error(dag_id, {"batch_id": "b1", "source": missing})
    assert result is None and "failed" in error
    assert task_tries(dag_id)["ingest_batch"] == ("failed", 1)  # bad input: no retries
    assert _batches(mlcore_env.db_url) == set()
    assert not (mlcore_env.home / "curated").exists()


@pytest.mark.parametrize("batch_id", ["../etc", "../../etc/passwd", "a; rm -rf /",
                                      "x' OR '1'='1", "/etc/passwd", "x" * 10_240])
def test_hostile_batch_id_param_is_refused_before_the_run(airflow_db, mlcore_env, spec, slices,
                                                          batch_id):
    from airflow.sdk.exceptions import ParamValidationError

    from batchloop_airflow.runner import run_dag

    with pytest.raises(ParamValidationError, match="does not match"):
        run_dag(f"{spec.name}__ingest_batch", {"batch_id": batch_id, "source": str(slices[2015])})
    assert _batches(mlcore_env.db_url) == set()
    assert all(p.name.startswith("mlcore.db") for p in mlcore_env.home.iterdir())


@pytest.mark.parametrize("stage", ["materialize_features", "score_batch", "monitor_model"])
def test_hostile_batch_id_is_refused_by_every_per_batch_stage(airflow_db, mlcore_env, spec,
                                                              stage):
    from airflow.sdk.exceptions import ParamValidationError

    from batchloop_airflow.runner import run_dag

    with pytest.raises(ParamValidationError, match="does not match"):
        run_dag(f"{spec.name}__{stage}", {"batch_id": "x' OR '1'='1"})
    assert all(p.name.startswith("mlcore.db") for p in mlcore_env.home.iterdir())


def test_conflicting_reingest_is_refused_and_published_data_kept(airflow_db, mlcore_env, spec,
                                                                 slices, run_or_error, tmp_path,
                                                                 task_tries):
    dag_id = f"{spec.name}__ingest_batch"
    assert run_or_error(dag_id, {"batch_id": "b2", "source": str(slices[2015])})[1] is None
    curated = mlcore_env.partition("curated", spec.name, "b2") / "part-0.parquet"
    before = hashlib.sha256(curated.read_bytes()).hexdigest()
    other = tmp_path / "other.parquet"
    pd.read_parquet(slices[2015]).head(100).to_parquet(other)
    _, error = run_or_error(dag_id, {"batch_id": "b2", "source": str(other)})
    assert error is not None
    assert task_tries(dag_id)["ingest_batch"] == ("failed", 1)
    assert hashlib.sha256(curated.read_bytes()).hexdigest() == before
    assert _batches(mlcore_env.db_url) == {("b2", "published")}


def test_rejected_batch_names_batch_and_cause(airflow_db, mlcore_env, spec, slices, run_or_error,
                                              tmp_path, caplog):
    bad = tmp_path / "bad.parquet"
    pd.read_parquet(slices[2015]).drop(columns=["AGEP"]).to_parquet(bad)
    dag_id = f"{spec.name}__ingest_batch"
    _, error = run_or_error(dag_id, {"batch_id": "b3", "source": str(bad)})
    assert error is not None
    assert _batches(mlcore_env.db_url) == {("b3", "rejected")}
    assert not mlcore_env.partition("curated", spec.name, "b3").exists()
    assert "batch 'b3': missing required columns ['AGEP']" in caplog.text


def test_materialize_without_batch_id_fails_fast(airflow_db, mlcore_env, spec, run_or_error,
                                                  task_tries):
    dag_id = f"{spec.name}__materialize_features"
    _, error = run_or_error(dag_id, {})
    assert error is not None
    assert task_tries(dag_id)["resolve_batches"] == ("failed", 1)


def test_scoring_without_champion_is_skipped_not_failed(airflow_db, mlcore_env, spec, slices,
                                                        run_or_error):
    run_or_error(f"{spec.name}__ingest_batch", {"batch_id": "s1", "source": str(slices[2016])})
    result, error = run_or_error(f"{spec.name}__score_batch", {"batch_id": "s1"})
    assert error is None
    assert result["tasks"]["score_batch[0]"]["state"] == "skipped"


def test_tampered_artifact_is_never_loaded(airflow_db, mlcore_env, spec, slices, run_or_error,
                                           task_tries):
    p = spec.name
    run_or_error(f"{p}__ingest_batch", {"batch_id": "t1", "source": str(slices[2015])})
    run_or_error(f"{p}__materialize_features", {"batch_id": "t1"})
    result, error = run_or_error(f"{p}__retrain_model", {"until_batch": "t1"})
    assert error is None
    artifact = result["tasks"]["train_contender"]["value"]["artifact_uri"]
    with open(artifact, "ab") as fh:
        fh.write(b"tampered")
    _, error = run_or_error(f"{p}__score_batch", {"batch_id": "t1"})
    assert error is not None
    assert task_tries(f"{p}__score_batch")["score_batch"] == ("failed", 1)
    with session_scope(mlcore_env.db_url) as s:
        assert s.scalars(select(Prediction)).first() is None


def test_a_run_never_inherits_the_previous_runs_params(airflow_db, mlcore_env, spec, run_or_error,
                                                       task_tries):
    """Regression: in-process runs leaked one run's batch_id into the next run's Params."""
    dag_id = f"{spec.name}__materialize_features"
    _, error = run_or_error(dag_id, {"batch_id": "zzz"})
    assert "materialize_batch" in error  # got as far as the (unpublished) batch
    _, error = run_or_error(dag_id, {})
    assert task_tries(dag_id)["resolve_batches"] == ("failed", 1)
