"""
### Monitor the champion

For each scored batch (from `<problem>.predictions` events or the `batch_id` Param): Evidently
drift of the batch (features and scores) against the champion's reference profile, judged by the
spec's effect-size thresholds, saved as JSON and HTML under `reports/` and recorded in the
metadata store. Then the retrain policy (`mlcore/policy.py`): schedule, drift, a drop of the
matured metric, new labelled data; several at once make one request, a pending request absorbs
new triggers, a cooldown holds back. A filed or merged request updates the
`<problem>.retrain_requests` asset, which triggers `retrain_model`.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from batchloop_airflow import (
    batch_id_param,
    dag_kwargs,
    fail_fast,
    problem_specs,
    publish_monitoring_page,
    resolve_batches,
    stage_asset,
)

STAGE = Path(__file__).stem


def build(problem: str) -> None:
    requests = stage_asset(problem, "retrain_requests")

    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=[stage_asset(problem, "predictions")],
         params={"batch_id": batch_id_param("check for drift")})
    def monitor_model_dag() -> None:
        @task
        def detect_drift(batch_id: str) -> dict:
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.monitoring import detect_drift as run
            from mlcore.problems import get_problem

            with fail_fast():
                return run(get_problem(problem), batch_id, mlcore_settings()).to_dict()

        @task
        def assess_retrain(results: list[dict]) -> list[dict]:
            """The retrain policy for each checked batch, in the order they were checked."""
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.policy import assess
            from mlcore.problems import get_problem

            spec, settings = get_problem(problem), mlcore_settings()
            with fail_fast():
                decisions = [assess(spec, r["batch_id"], settings, r).to_dict() for r in results]
            for d in decisions:
                print(f"batch {d['batch_id']}: {d['action']}: {d['reason']}")
            return decisions

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def requested(decisions: list[dict]) -> bool:
            return any(d["requested"] for d in decisions)

        @task(outlets=[requests])
        def request_retrain(decisions: list[dict]) -> list[int]:
            ids = sorted({d["request_id"] for d in decisions if d["requested"]})
            get_current_context()["outlet_events"][requests].extra = {"request_ids": ids}
            return ids

        decisions = assess_retrain(detect_drift.expand(batch_id=resolve_batches()))
        requested(decisions) >> request_retrain(decisions)
        decisions >> publish_monitoring_page(problem)

    monitor_model_dag()


for _spec in problem_specs():
    build(_spec.name)
