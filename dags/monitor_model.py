"""
### Monitor the champion

For each scored batch (from `<problem>.predictions` events or the `batch_id` Param): Evidently
data drift of the batch against the champion's training data, saved as JSON and HTML under
`reports/` and recorded in the metadata store. When the dataset drifted, a retrain request is
recorded and the `<problem>.retrain_requests` asset is updated, which triggers `retrain_model`.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from batchloop_airflow import (
    batch_id_param,
    dag_kwargs,
    fail_fast,
    problem_specs,
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
            from mlcore.config import get_settings
            from mlcore.monitoring import detect_drift as run
            from mlcore.problems import get_problem

            with fail_fast():
                return run(get_problem(problem), batch_id, get_settings()).to_dict()

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def drifted(results: list[dict]) -> bool:
            return any(r["dataset_drift"] for r in results)

        @task(outlets=[requests])
        def request_retrain(results: list[dict]) -> list[int]:
            ids = [r["retrain_request_id"] for r in results if r["retrain_request_id"]]
            get_current_context()["outlet_events"][requests].extra = {"request_ids": ids}
            return ids

        results = detect_drift.expand(batch_id=resolve_batches())
        drifted(results) >> request_retrain(results)

    monitor_model_dag()


for _spec in problem_specs():
    build(_spec.name)
