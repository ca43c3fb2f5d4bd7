"""
### Ingest labels

Late ground truth for a published batch: a parquet/CSV file with the entity key and the target
column (other columns are ignored) is validated as a whole and stored keyed by (batch, entity) in
one transaction. Re-running the same file is a no-op; a different label for a stored key is
refused as a conflict; a missing or non-0/1 label, a duplicate key or keys that are not rows of
the batch refuse the whole file (nothing stored, no retries).

Then measures every model version that scored the batch (the champion, a shadow challenger) on
the matured labelled rows only (`labels.maturity_days` in the problem spec), with the label
coverage; none yet: nothing to measure. Re-running with the same file re-measures (more rows may
have matured). Emits `<problem>.labels` with the batch ID once measured.

Then the evidence is used: the retrain policy sees the champion's matured metric (a drop below its
holdout metric files a `performance` request, which updates `<problem>.retrain_requests`), the
shadow challenger is judged against the champion on the matured labels (recorded with a run card;
`retrain.shadow_promotion` lets it become champion), and the monitoring page is rewritten.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task

from batchloop_airflow import (
    dag_kwargs,
    problem_specs,
    publish_monitoring_page,
    run_stage,
    stage_asset,
)
from batchloop_airflow.tasks import BATCH_ID_PATTERN

STAGE = Path(__file__).stem


def build(problem: str) -> None:
    labels = stage_asset(problem, "labels")
    requests = stage_asset(problem, "retrain_requests")

    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=None, params={
        "batch_id": Param("", type="string", pattern=BATCH_ID_PATTERN, title="Batch ID",
                          description="The published batch these labels belong to."),
        "source": Param("", type="string", minLength=1, title="Labels file",
                        description="Path or file:// URI of a parquet/CSV file with the entity "
                                    "key and target columns."),
    })
    def ingest_labels_dag() -> None:
        @task
        def ingest_labels() -> dict:
            return run_stage("mlcore.labels.ingest_labels", problem,
                             config="mlcore.labels.LabelsConfig", params=("source", "batch_id"))

        @task(outlets=[labels])
        def measure_performance(stored: dict) -> list[dict]:
            return run_stage("mlcore.labels.measure_performance", problem,
                             batch_id=stored["batch_id"], outlet=labels)

        @task
        def assess_retrain(stored: dict) -> dict:
            return run_stage("mlcore.policy.assess", problem, batch_id=stored["batch_id"],
                             log="retrain policy: {action}: {reason}")

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def requested(decision: dict) -> bool:
            return bool(decision["requested"])

        @task(outlets=[requests])
        def request_retrain(decision: dict) -> int:
            get_current_context()["outlet_events"][requests].extra = {
                "request_ids": [decision["request_id"]]}
            return int(decision["request_id"])

        @task
        def compare_shadow() -> dict | None:
            return run_stage("mlcore.shadow.compare_shadow", problem,
                             log="shadow: {outcome}: {reason}")

        stored = ingest_labels()
        measured = measure_performance(stored)
        decision = assess_retrain(stored)
        shadow = compare_shadow()
        measured >> [decision, shadow]
        requested(decision) >> request_retrain(decision)
        [decision, shadow] >> publish_monitoring_page(problem)

    ingest_labels_dag()


for _spec in problem_specs():
    build(_spec.name)
