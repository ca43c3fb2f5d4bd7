"""
### Materialize features

For each batch in the triggering `<problem>.curated` asset events (or the `batch_id` Param on a
manual run): engineer its features into the parquet offline store (one partition per batch),
register the Feast definitions if needed, and materialize the batch's window into the online
store. Idempotent per batch. Emits `<problem>.features`, which schedules `score_batch`.
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
    features = stage_asset(problem, "features")

    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=[stage_asset(problem, "curated")],
         params={"batch_id": batch_id_param("materialize")})
    def materialize_features_dag() -> None:
        @task(outlets=[features])
        def materialize_batch(batch_id: str) -> dict:
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.features import materialize_batch as run
            from mlcore.problems import get_problem

            with fail_fast():
                result = run(get_problem(problem), batch_id, mlcore_settings()).to_dict()
            get_current_context()["outlet_events"][features].extra = {"batch_id": batch_id}
            return result

        materialize_batch.expand(batch_id=resolve_batches())

    materialize_features_dag()


for _spec in problem_specs():
    build(_spec.name)
