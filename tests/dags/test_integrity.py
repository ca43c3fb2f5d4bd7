"""DAG integrity: imports, ids, tags, retries, schedules, params <-> config, parse-light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["ingest_batch", "materialize_features", "score_batch", "monitor_model", "retrain_model",
          "backfill_batches", "ingest_labels", "sweep_backlog"]
HEAVY = ["pandas", "sklearn", "feast", "evidently", "scipy", "mlcore.training", "mlcore.features"]


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(bag):
    assert bag.import_errors == {}


def test_one_dag_per_problem_and_stage(bag, spec):
    from mlcore.problems import load_problems

    names = load_problems(ROOT / "problems")
    assert spec.name in names and len(names) >= 3  # census, multiclass, regression
    assert sorted(bag.dags) == sorted(f"{p}__{s}" for p in names for s in STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_dag_conventions(bag, spec, stage):
    dag = bag.dags[f"{spec.name}__{stage}"]
    assert {f"problem:{spec.name}", f"stage:{stage}"} <= set(dag.tags)
    assert dag.catchup is False
    assert dag.doc_md and dag.doc_md.strip().startswith("###")
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.on_failure_callback, task.task_id


def test_task_graphs(bag, spec):
    def graph(stage):
        dag = bag.dags[f"{spec.name}__{stage}"]
        return {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}

    assert graph("ingest_batch") == {"ingest_batch": []}
    assert graph("materialize_features") == {"resolve_batches": ["materialize_batch"],
                                             "materialize_batch": []}
    assert graph("retrain_model") == {
        "start_retrain": ["build_dataset", "release_retrain"],
        "build_dataset": ["evaluate_contender", "train_contender"],
        "train_contender": ["evaluate_contender"],
        "evaluate_contender": ["mark_challenger", "promote_contender", "should_promote"],
        "mark_challenger": ["publish_monitoring_page", "release_retrain"],
        "should_promote": ["promote_contender"],
        "promote_contender": ["publish_monitoring_page", "release_retrain"],
        "publish_monitoring_page": [], "release_retrain": []}
    retrain = bag.dags[f"{spec.name}__retrain_model"]
    assert retrain.get_task("start_retrain").is_setup
    assert retrain.get_task("release_retrain").is_teardown
    assert graph("backfill_batches") == {"plan_backfill": ["run_stage"], "run_stage": []}
    assert graph("monitor_model") == {
        "resolve_batches": ["detect_drift"], "detect_drift": ["assess_retrain"],
        "assess_retrain": ["publish_monitoring_page", "request_retrain", "requested"],
        "requested": ["request_retrain"], "request_retrain": [], "publish_monitoring_page": []}
    assert graph("ingest_labels") == {
        "ingest_labels": ["assess_retrain", "measure_performance"],
        "measure_performance": ["assess_retrain", "compare_shadow"],
        "assess_retrain": ["publish_monitoring_page", "request_retrain", "requested"],
        "requested": ["request_retrain"], "request_retrain": [],
        "compare_shadow": ["publish_monitoring_page"], "publish_monitoring_page": []}
    assert graph("sweep_backlog") == {
        "alert_stalled": ["nudge_materialize", "nudge_monitor", "nudge_score"],
        "nudge_materialize": [], "nudge_score": [], "nudge_monitor": [], "alert_stream": []}


def test_assets_chain_the_stages(bag, spec):
    p = spec.name

    def consumes(stage):
        return sorted(a.uri for a in bag.dags[f"{p}__{stage}"].timetable.asset_condition.objects)

    assert consumes("materialize_features") == [f"batchloop://{p}/curated"]
    assert consumes("score_batch") == [f"batchloop://{p}/features"]
    assert consumes("monitor_model") == [f"batchloop://{p}/predictions"]
    assert consumes("retrain_model") == [f"batchloop://{p}/retrain_requests"]
    # retrain also runs on the spec's cron
    assert bag.dags[f"{p}__retrain_model"].timetable.timetable.expression == spec.retrain.schedule
    # backfill is manual only and emits no stage asset (it must not re-trigger downstream)
    backfill = bag.dags[f"{p}__backfill_batches"]
    assert type(backfill.timetable).__name__ == "NullTimetable"
    assert all(not t.outlets for t in backfill.tasks)
    # labels arrive by hand (or an upstream system's trigger); the event follows the measurement
    labels = bag.dags[f"{p}__ingest_labels"]
    assert type(labels.timetable).__name__ == "NullTimetable"
    assert [a.uri for a in labels.get_task("measure_performance").outlets] == [
        f"batchloop://{p}/labels"]
    # the sweep re-announces each stage's input for batches that lost their event
    sweep = bag.dags[f"{p}__sweep_backlog"]
    assert {t.task_id: [a.uri for a in t.outlets] for t in sweep.tasks if t.outlets} == {
        "nudge_materialize": [f"batchloop://{p}/curated"],
        "nudge_score": [f"batchloop://{p}/features"],
        "nudge_monitor": [f"batchloop://{p}/predictions"]}


def test_backfill_runs_one_mapped_task_per_batch_with_a_fixed_cap(bag, spec):
    run_stage = bag.dags[f"{spec.name}__backfill_batches"].get_task("run_stage")
    assert run_stage.max_active_tis_per_dagrun == 4


def test_backfill_params_match_the_mlcore_config(bag, spec):
    from airflow.sdk.exceptions import ParamValidationError

    from mlcore.backfill import MAX_BATCHES, ORDERS, POLICIES, STAGES
    from mlcore.batches import BATCH_ID_RE

    params = bag.dags[f"{spec.name}__backfill_batches"].params
    schema = {k: params.get_param(k).schema for k in params}
    assert set(schema) == {"stage", "batch_ids", "policy", "order"}  # no knob without effect
    assert (schema["stage"]["enum"], schema["policy"]["enum"], schema["order"]["enum"]) == (
        list(STAGES), list(POLICIES), list(ORDERS))
    ids = schema["batch_ids"]
    assert (ids["type"], ids["minItems"], ids["maxItems"], ids["items"]["pattern"]) == (
        "array", 1, MAX_BATCHES, BATCH_ID_RE.pattern)
    for bad in ([], ["../etc"], ["a; rm -rf /"], ["x" * 65], [f"b{i}" for i in range(501)]):
        with pytest.raises(ParamValidationError):
            params.get_param("batch_ids").resolve(bad)
    assert params.get_param("batch_ids").resolve(["2015", "b-2.x_1"]) == ["2015", "b-2.x_1"]


def test_every_param_maps_to_a_config_field(bag):
    from mlcore.backfill import BackfillConfig
    from mlcore.config import IngestConfig, TrainConfig
    from mlcore.labels import LabelsConfig

    fields = set().union(*(m.model_fields for m in (IngestConfig, TrainConfig,
                                                     BackfillConfig, LabelsConfig)))
    for dag in bag.dags.values():
        for key, param in dag.params.items():
            assert key in fields, f"{dag.dag_id}: Param {key!r} maps to no mlcore.config field"
            assert param.description, f"{dag.dag_id}: Param {key!r} has no description"


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins"), **extra}
    return env


@pytest.mark.parametrize("stage", STAGES)
def test_parse_is_light(stage):
    code = (f"import runpy, sys, json; runpy.run_path({str(ROOT / 'dags' / stage)!r} + '.py'); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_subprocess_env(), cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_second_spec_adds_a_second_model_family(tmp_path):
    """Adding a YAML spec adds a full set of DAGs, with no code change; its approval flag puts a
    human approval step before promotion."""
    problems = tmp_path / "problems"
    problems.mkdir()
    census = (ROOT / "problems" / "census_employment.yaml").read_text()
    (problems / "census_employment.yaml").write_text(census)
    assert "require_approval: false" in census
    (problems / "census_small.yaml").write_text(
        census.replace("name: census_employment", "name: census_small")
        .replace("require_approval: false", "require_approval: true"))
    code = ("import json; from airflow.dag_processing.dagbag import DagBag; "
            f"b = DagBag(dag_folder={str(ROOT / 'dags')!r}); "
            "g = {d: {t.task_id: sorted(t.downstream_task_ids) for t in b.dags[d].tasks} "
            "for d in ('census_small__retrain_model', 'census_employment__retrain_model')}; "
            "print(json.dumps([sorted(b.dags), len(b.import_errors), g]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_subprocess_env(MLCORE_PROBLEMS_DIR=str(problems)), cwd=ROOT,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    dags, errors, graphs = json.loads(out.stdout.strip().splitlines()[-1])
    assert errors == 0
    gated, plain = graphs["census_small__retrain_model"], graphs["census_employment__retrain_model"]
    assert gated["should_promote"] == ["approve_promotion"]
    assert gated["approve_promotion"] == ["promote_contender"]
    assert "approve_promotion" not in plain
    assert len(dags) == 2 * len(STAGES)
    assert sorted(d for d in dags if d.startswith("census_small__")) == sorted(
        f"census_small__{s}" for s in STAGES)
