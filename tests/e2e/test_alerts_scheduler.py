"""Alerts only the real scheduler can produce, under a private ``airflow standalone`` (own home,
ports, SQLite DB, problems dir), with real sinks started here (loopback HTTP + SMTP):

* a Batchloop task SIGKILLed at a precise point (``MLCORE_FAILPOINT=ingest.after_stage_write``,
  every try) never runs its own failure callback (apache/airflow#60858); the DAG-level sweep in
  the dag-processor still alerts, exactly once, as ``task_killed`` with the signal;
* a run still unfinished at its stage's deadline (a spec copy with a 3 s deadline for
  ``materialize_features``) alerts ``deadline_missed`` from the triggerer, and the run still
  finishes.

``dag.test`` cannot show either: it runs tasks in-process (a SIGKILL would kill pytest) and
never checks deadlines. One test here needs no standalone: each batch stage's DAG, parsed as
the dag-processor parses it, carries its spec deadline and the DAG-level sweep.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from airflow_stack import Stack, api, migrate, wait_for
from test_alerts import (
    alerts_at,
    assert_carries_the_payload,
    channel_env,
    email_text,
    start_http_sink,
    start_smtp_sink,
)
from test_runbook_drill import run_verbatim, section_commands, variables

from mlcore.store.session import upgrade

pytestmark = pytest.mark.live  # starts a live Airflow (make test-live)

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_MINUTES = 0.05  # 3 s; the test holds its run queued (DAG paused) past it


def _problems_dir(base: Path) -> Path:
    """A copy of the specs where materialize_features has a 3 s deadline, ingest none."""
    spec = yaml.safe_load((ROOT / "problems" / "census_employment.yaml").read_text())
    spec["alerts"] = {"deadline_minutes": {"materialize_features": DEADLINE_MINUTES}}
    folder = base / "problems"
    folder.mkdir()
    (folder / "census_employment.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def test_each_batch_stage_dag_gets_the_spec_deadline(spec, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from batchloop_airflow.defaults import deadlines_enabled
    from mlcore.spec_rules import DAG_STAGES

    assert not deadlines_enabled()  # a plain process (dag.test): none, see defaults.py
    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "client")  # as in the dag-processor
    assert deadlines_enabled()
    monkeypatch.setenv("BATCHLOOP_DEADLINES", "off")
    assert not deadlines_enabled()
    monkeypatch.setenv("BATCHLOOP_DEADLINES", "on")
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    for stage in DAG_STAGES:
        dag = bag.dags[f"{spec.name}__{stage}"]
        assert type(dag.on_failure_callback).__name__ == "RunFailureSweep"
        minutes = spec.alerts.deadline_minutes.get(stage)
        if minutes is None:
            assert not dag.deadline, stage
            continue
        [alert] = dag.deadline
        assert type(alert.reference).__name__ == "DagRunQueuedAtDeadline"
        assert alert.interval.total_seconds() == minutes * 60
        assert alert.callback.path == "batchloop_airflow.alerting.callbacks.deadline_missed"
        assert alert.callback.kwargs == {"minutes": minutes}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("alerts_standalone")
    http, smtp = start_http_sink(), start_smtp_sink()
    mlcore_home = home / "mlcore"
    airflow = Stack(home, {
        **channel_env(http.port, smtp.port), "MLCORE_HOME": str(mlcore_home),
        "MLCORE_PROBLEMS_DIR": str(_problems_dir(home)),
        "MLCORE_FAILPOINT": "ingest.after_stage_write", "BATCHLOOP_RETRY_DELAY": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "BATCHLOOP_START_PAUSED": "true",  # each test unpauses the DAG it exercises
        "MLCORE_DATABASE_URL": None, "AIRFLOW_CONN_MLCORE_DB": None, "BATCHLOOP_DEADLINES": None},
        dag_ids=("census_employment__materialize_features",))
    mlcore_home.mkdir()
    upgrade(f"sqlite:///{mlcore_home / 'mlcore.db'}")
    migrate(airflow.env)
    airflow.start()
    try:
        airflow.wait_ready(timeout=240)
        yield SimpleNamespace(base=airflow.base, home=home, mlcore_home=mlcore_home,
                              log=airflow.log_path, http=http, smtp=smtp,
                              problems=Path(airflow.env["MLCORE_PROBLEMS_DIR"]), env=airflow.env)
    finally:
        airflow.stop()
        http.server.shutdown()
        smtp.controller.stop()


def _trigger(stack, dag_id: str, conf: dict) -> str:
    api(stack.base, f"/dags/{dag_id}", {"is_paused": False}, "PATCH")
    run = api(stack.base, f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf},
               "POST")
    return str(run["dag_run_id"])


def _finished(stack, dag_id: str, run_id: str) -> str:
    def state():
        s = api(stack.base, f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
        return s if s in ("success", "failed") else None

    return str(wait_for(f"{dag_id} run {run_id} to finish", state, 240, stack.log))


def _alerts_for(stack, run_id: str, count: int = 1) -> dict[str, list]:
    """Wait for ``count`` webhook alerts of the run, then a little longer: a duplicate would
    arrive within seconds (both alert paths run right after the run fails)."""
    def mine():
        got = [a for a in alerts_at(stack.http, stack.smtp)["webhook"] if a["run_id"] == run_id]
        return got if len(got) >= count else None

    wait_for(f"{count} alert(s) of run {run_id}", mine, 120, stack.log)
    time.sleep(5)
    got = alerts_at(stack.http, stack.smtp)
    return {"webhook": [a for a in got["webhook"] if a["run_id"] == run_id],
            "slack": [t for t in got["slack"] if run_id in t],
            "email": [m for m in got["email"] if run_id in email_text(m)]}


def test_a_killed_task_still_alerts_once_with_its_signal(stack, slices):
    dag_id = "census_employment__ingest_batch"
    run_id = _trigger(stack, dag_id, {"batch_id": "killed-1", "source": str(slices[2015])})
    assert _finished(stack, dag_id, run_id) == "failed"
    [ti] = api(stack.base, f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    assert (ti["state"], ti["try_number"]) == ("failed", 3)  # killed on every try

    got = _alerts_for(stack, run_id)
    assert {k: len(v) for k, v in got.items()} == {"webhook": 1, "slack": 1, "email": 1}
    [alert] = got["webhook"]
    assert (alert["kind"], alert["dag_id"], alert["task_id"], alert["try_number"]) == (
        "task_killed", dag_id, "ingest_batch", 3)
    assert alert["batch_id"] == "killed-1" and alert["problem"] == "census_employment"
    assert alert["exit"] == {"exit_code": -9, "signal": "SIGKILL", "source": "attempt=3.log"}
    assert "SIGKILL" in alert["error"] and "out of memory" in alert["error"]
    assert alert["runbook"] == f"{stack.base}/batchloop/runbook#task-killed"  # a real link
    assert alert["log_url"].startswith(f"{stack.base}/dags/{dag_id}/runs/")
    assert alert["log_url"].endswith("/tasks/ingest_batch?try_number=3")
    assert_carries_the_payload(email_text(got["email"][0]), alert)
    entry = json.loads((stack.mlcore_home / "alerts" / f"{alert['dedup_key']}.json").read_text())
    assert entry["deliveries"] == {"webhook": "sent", "webhook_connection": "sent",
                                   "slack": "sent", "email": "sent"}

    # the on-call drill: the RUNBOOK's task-killed section, verbatim, against this stack
    filled = {**stack.env, **variables(alert)}
    out = run_verbatim(section_commands("task-killed"), filled)
    assert "ingest_batch" in out[0].stdout and "failed" in out[0].stdout  # states-for-dag-run
    runs = api(stack.base, f"/dags/{dag_id}/dagRuns")["dag_runs"]
    assert [r["conf"] for r in runs if r["dag_run_id"] != run_id] == [  # a new run, same Params
        {"batch_id": "killed-1", "source": str(slices[2015])}]


def test_a_missed_deadline_alerts_and_the_run_still_finishes(stack, slices):
    from mlcore.config import Settings
    from mlcore.ingestion import ingest_batch
    from mlcore.problems import get_problem

    settings = Settings(home=stack.mlcore_home, problems_dir=stack.problems,
                        feature_repo=ROOT / "feature_repo")
    ingest_batch(get_problem("census_employment", stack.problems), str(slices[2016]), "late-1",
                 settings)  # published here: the standalone's ingest is failpointed
    dag_id = "census_employment__materialize_features"
    # Triggered while paused, the run waits queued past its deadline (counted from queued):
    # late for sure, however fast the task (with the preloading executor it can finish in 3 s).
    api(stack.base, f"/dags/{dag_id}", {"is_paused": True}, "PATCH")
    run_id = str(api(stack.base, f"/dags/{dag_id}/dagRuns",
                      {"logical_date": None, "conf": {"batch_id": "late-1"}}, "POST")["dag_run_id"])

    got = _alerts_for(stack, run_id)
    [alert] = got["webhook"]
    # the on-call drill: the RUNBOOK's deadline-missed section, verbatim; its
    # `airflow dags unpause "$DAG"` is what lets the late run finish
    out = run_verbatim(section_commands("deadline-missed"),
                       {**stack.env, **variables(alert, AIRFLOW=stack.base)})
    assert "is_paused" in out[0].stdout and '"scheduler"' in out[4].stdout  # details, health
    assert _finished(stack, dag_id, run_id) == "success"  # late is not failed
    assert {k: len(v) for k, v in got.items()} == {"webhook": 1, "slack": 1, "email": 1}
    assert (alert["kind"], alert["dag_id"], alert["batch_id"]) == (
        "deadline_missed", dag_id, "late-1")
    assert alert["deadline_minutes"] == DEADLINE_MINUTES and alert["task_id"] is None
    assert "not finished 0.05 min after it was queued" in alert["error"]
    assert alert["runbook"].endswith("/batchloop/runbook#deadline-missed")
    assert alert["log_url"].startswith(f"{stack.base}/dags/{dag_id}/runs/")
    assert_carries_the_payload(email_text(got["email"][0]), alert)
    assert (stack.mlcore_home / "alerts" / f"{alert['dedup_key']}.json").is_file()
