"""The backfill DAG through Airflow (``dag.test()``): two batches, a no-op re-run, an unknown
batch failing alone without retries, and invalid IDs refused by the Params."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from mlcore.ingestion import ingest_batch
from mlcore.store.models import Materialization
from mlcore.store.session import session_scope


def _ledger(settings, problem):
    path = settings.home / "backfill" / f"problem={problem}" / "materialize.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _materialized(url):
    with session_scope(url) as s:
        return {m.batch_id: (m.id, m.created_at) for m in s.scalars(select(Materialization))}


def _tries(dag_id):
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session

    with create_session() as s:
        last = s.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
        return {(ti.task_id, ti.map_index): (str(ti.state), ti.try_number) for ti in
                s.query(TaskInstance).filter(TaskInstance.run_id == last.run_id,
                                             TaskInstance.dag_id == dag_id)}


def test_backfill_dag_over_two_batches(airflow_db, mlcore_env, slices, spec, run_or_error):
    dag_id, settings = f"{spec.name}__backfill_batches", mlcore_env
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)

    result, error = run_or_error(dag_id, {"stage": "materialize", "batch_ids": ["2016", "2015"],
                                          "order": "event_time"})
    assert error is None
    tasks = result["tasks"]
    assert tasks["plan_backfill"]["value"] == ["2015", "2016"]
    assert [tasks[f"run_stage[{i}]"]["value"]["batch_id"] for i in (0, 1)] == ["2015", "2016"]
    assert all(tasks[f"run_stage[{i}]"]["value"]["rows"] == 1500 for i in (0, 1))
    done = _materialized(settings.db_url)
    assert set(done) == {"2015", "2016"}
    # Mapped tasks may finish in either order (the DAG doc promises map-index order only for
    # starting them; the CLI's strict order is tested in tests/mlcore/test_backfill.py).
    assert sorted((e["batch_id"], e["status"]) for e in _ledger(settings, spec.name)) == [
        ("2015", "ok"), ("2016", "ok")]

    # re-run under "missing": nothing to plan, run_stage skipped, nothing rewritten
    again, error = run_or_error(dag_id, {"stage": "materialize", "batch_ids": ["2015", "2016"]})
    assert error is None and again["tasks"]["plan_backfill"]["value"] == []
    assert {k: v["state"] for k, v in again["tasks"].items() if k.startswith("run_stage")} == {
        "run_stage": "skipped"}
    assert _materialized(settings.db_url) == done and len(_ledger(settings, spec.name)) == 2

    # an unknown batch fails alone (bad input: no retry); the other batch still runs
    _, error = run_or_error(dag_id, {"stage": "materialize", "batch_ids": ["nope", "2016"],
                                     "policy": "all"})
    assert error is not None and "run_stage" in error
    tries = _tries(dag_id)
    assert tries[("run_stage", 0)] == ("failed", 1) and tries[("run_stage", 1)][0] == "success"
    assert _materialized(settings.db_url)["2016"] != done["2016"]  # policy all redid it
    ledger = [e["batch_id"] for e in _ledger(settings, spec.name)]  # first run: either order
    assert sorted(ledger[:2]) == ["2015", "2016"] and ledger[2:] == ["2016"]


@pytest.mark.parametrize("conf", [
    *({"stage": "materialize", "batch_ids": ["2015", evil]} for evil in (
        "../../etc/passwd", "a; rm -rf /", "x' OR '1'='1", "/etc/passwd", "x" * 10_240)),
    {"stage": "materialize", "batch_ids": []},
    {"stage": "train", "batch_ids": ["2015"]},
    {"stage": "score", "batch_ids": ["2015"], "policy": "some"},
], ids=["traversal", "shell", "sql", "absolute", "10kb", "empty", "stage", "policy"])
def test_bad_params_are_refused_before_the_run(airflow_db, mlcore_env, spec, conf):
    from airflow.sdk.exceptions import ParamValidationError

    from batchloop_airflow.runner import run_dag

    with pytest.raises(ParamValidationError):
        run_dag(f"{spec.name}__backfill_batches", conf)
    assert all(p.name.startswith("mlcore.db") for p in mlcore_env.home.iterdir())
