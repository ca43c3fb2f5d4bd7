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
    problem_specs,
    publish_monitoring_page,
    resolve_batches,
    run_stage,
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
            return run_stage("mlcore.monitoring.detect_drift", problem, batch_id=batch_id)

        @task
        def assess_retrain(results: list[dict]) -> list[dict]:
            """The retrain policy for each checked batch, in the order they were checked."""
            return [run_stage("mlcore.policy.assess", problem, batch_id=r["batch_id"], drift=r,
                              log="batch {batch_id}: {action}: {reason}") for r in results]

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
