"""
### Materialize features

For each batch in the triggering `<problem>.curated` asset events (or the `batch_id` Param on a
manual run): engineer its features into the parquet offline store (one partition per batch),
register the Feast definitions if needed, and materialize the batch's window into the online
store. Idempotent per batch. Emits `<problem>.features`, which schedules `score_batch`.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag, task

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
    features = stage_asset(problem, "features")

    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=[stage_asset(problem, "curated")],
         params={"batch_id": batch_id_param("materialize")})
    def materialize_features_dag() -> None:
        @task(outlets=[features])
        def materialize_batch(batch_id: str) -> dict:
            return run_stage("mlcore.features.materialize_batch", problem, batch_id=batch_id,
                             outlet=features)

        materialize_batch.expand(batch_id=resolve_batches())

    materialize_features_dag()


for _spec in problem_specs():
    build(_spec.name)
