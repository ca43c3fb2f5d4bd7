"""
### Score a batch

Scores each batch from the triggering `<problem>.features` events (or the `batch_id` Param) with
the current `champion`, reading features point-in-time from Feast, and stores the predictions
keyed by (batch, entity, model version). Skipped when there is no champion yet. A shadow
`challenger` whose artifact cannot be loaded is skipped with an on-call alert. Emits
`<problem>.predictions`, which schedules `monitor_model`.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from batchloop_airflow import (
    batch_id_param,
    dag_kwargs,
    problem_specs,
    resolve_batches,
    run_stage,
    stage_asset,
)

STAGE = Path(__file__).stem


def build(problem: str) -> None:
    predictions = stage_asset(problem, "predictions")

    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=[stage_asset(problem, "features")],
         params={"batch_id": batch_id_param("score")})
    def score_batch_dag() -> None:
        @task(outlets=[predictions])
        def score_batch(batch_id: str) -> dict:
            from batchloop_airflow.alerting.callbacks import skipped_challenger

            result = run_stage("mlcore.scoring.score_batch", problem, batch_id=batch_id,
                               outlet=predictions)
            skipped_challenger(get_current_context(), batch_id, result["skipped_challenger"])
            return result

        score_batch.expand(batch_id=resolve_batches())

    score_batch_dag()


for _spec in problem_specs():
    build(_spec.name)
