"""
### Ingest a batch

Validates a raw file (parquet or CSV) against the problem spec and publishes it under a batch ID:
manifest (source, SHA-256, rows, schema hash), row-level quarantine with reasons, atomic publish.
Re-running the same batch ID with the same file is a no-op; different content is refused.

On success emits the `<problem>.curated` asset event with the batch ID, which schedules
`materialize_features`.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Param, dag, task

from batchloop_airflow import dag_kwargs, problem_specs, run_stage, stage_asset
from batchloop_airflow.tasks import BATCH_ID_PATTERN

STAGE = Path(__file__).stem


def build(problem: str) -> None:
    curated = stage_asset(problem, "curated")

    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=None, params={
        "batch_id": Param("", type="string", pattern=BATCH_ID_PATTERN, title="Batch ID",
                          description="Unique ID of this batch (letters, digits, _ . -)."),
        "source": Param("", type="string", minLength=1, title="Source file",
                        description="Path or file:// URI of the raw parquet/CSV file."),
    })
    def ingest_batch_dag() -> None:
        @task(task_id="ingest_batch", outlets=[curated])
        def ingest() -> dict:
            return run_stage("mlcore.ingestion.ingest_batch", problem, outlet=curated,
                             config="mlcore.config.IngestConfig", params=("source", "batch_id"))

        ingest()

    ingest_batch_dag()


for _spec in problem_specs():
    build(_spec.name)
