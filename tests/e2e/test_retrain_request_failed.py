"""A retrain request is answered even by failure (issue 15, item 4), through real ``dag.test``
runs of ``retrain_model``: a run that fails marks the request it took ``failed`` with the error
and the run id, releases the lease, and the next request is a new one, which the next
successful run answers (``trained``). The killed and timed-out runs need the real scheduler:
``test_retrain_request_scheduler.py``."""

from __future__ import annotations

from sqlalchemy import select

from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.policy import list_requests, request_manual
from mlcore.store.models import RetrainLease
from mlcore.store.session import session_scope


def newest_run_id(dag_id: str) -> str:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        return str(s.query(DagRun).filter(DagRun.dag_id == dag_id)
                   .order_by(DagRun.id.desc()).first().run_id)


def leases(url: str) -> list[str]:
    with session_scope(url) as s:
        return [lease.holder for lease in s.scalars(select(RetrainLease))]


def test_a_failed_retrain_fails_its_request_and_the_next_one_is_answered(
        airflow_db, mlcore_env, spec, slices, run_or_error, task_tries):
    settings, dag_id = mlcore_env, f"{spec.name}__retrain_model"
    url = settings.db_url
    first = request_manual(spec.name, "retrain before any data", url)

    result, error = run_or_error(dag_id, {"reason": "test"})  # nothing published: NotEnoughData

    assert result is None and "build_dataset" in error
    run_id = newest_run_id(dag_id)
    tries = task_tries(dag_id)
    assert tries["build_dataset"][0] == "failed"
    assert tries["release_retrain"][0] == "success"  # the teardown ran
    [failed] = list_requests(spec.name, url)
    assert (failed["id"], failed["state"], failed["run_id"]) == (first, "failed", run_id)
    assert failed["error"] == ("build_dataset: NotEnoughData: no labelled published batch to "
                               "train on")
    assert failed["taken_by"] == f"{dag_id}/{run_id}" and failed["resolved_at"]
    assert leases(url) == []

    # The next trigger files a new request; a run that succeeds answers it, not the failed one.
    second = request_manual(spec.name, "retrain with data", url)
    assert second != first
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
        materialize_batch(spec, str(year), settings)
    done, error = run_or_error(dag_id, {"until_batch": "2016",
                                        "algorithm": "logistic_regression", "reason": "test"})
    assert error is None
    version = done["tasks"]["train_contender"]["value"]["version"]
    rows = {r["id"]: r for r in list_requests(spec.name, url)}
    assert (rows[first]["state"], rows[first]["run_id"]) == ("failed", run_id)
    assert (rows[second]["state"], rows[second]["resolved_by_version"], rows[second]["run_id"],
            rows[second]["error"]) == ("trained", version, done["run_id"], None)
    assert leases(url) == []


def test_the_retrain_dag_answers_its_request_on_every_failure_path(spec):
    from datetime import timedelta

    from batchloop_airflow.alerting.callbacks import RunFailureSweep
    from batchloop_airflow.retrain_tasks import RetrainTaskFailed, end_failed_run
    from batchloop_airflow.runner import dagbag

    dag = dagbag().dags[f"{spec.name}__retrain_model"]
    assert dag.dagrun_timeout == timedelta(hours=spec.retrain.lease_hours)  # no approval step
    assert isinstance(dag.on_failure_callback, RunFailureSweep)
    assert dag.on_failure_callback.also is end_failed_run
    for task in dag.tasks:
        if task.task_id != "approve_promotion":
            assert any(isinstance(cb, RetrainTaskFailed) for cb in task.on_failure_callback)
