"""
### Backfill batches

Re-runs one stage (`materialize`, `score` or `monitor`) over a list of published batch IDs, by
hand. `plan_backfill` applies the reprocess policy (`missing`: not done yet; `failed`: the
latest attempt in the backfill ledger failed; `all`), then `run_stage` runs once per batch and
appends each attempt to the ledger (`<MLCORE_HOME>/backfill/problem=<p>/<stage>.jsonl`).
Unknown batch IDs get a `run_stage` task of their own that fails, without retries, naming the
batch; the others go on. Nothing to do under the policy: `run_stage` is skipped.

**Design: one mapped task per batch.** Each batch has its own state, log and retries in the UI,
and clearing one failed batch re-runs only that batch. Airflow reads a mapped task's
concurrency (`max_active_tis_per_dagrun`) when the DAG is parsed, so no Param can set it: this
DAG runs at most 4 batches of a run at once, and has no concurrency Param (a knob that could
not take effect); `mlcore backfill --max-workers N` sets it for a one-process run.
Materializations are serialized anyway by the Feast online-store lock. `order` sets the map
index order; Airflow starts mapped tasks roughly in that order, not strictly (use the CLI with
`--max-workers 1` when strict order matters).

A backfill emits no stage asset events: it redoes the one stage asked for, and does not
re-trigger the stages downstream.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Param, dag, task

from batchloop_airflow import dag_kwargs, problem_specs, run_stage
from batchloop_airflow.tasks import BATCH_ID_PATTERN

STAGE = Path(__file__).stem
CONFIG = "mlcore.backfill.BackfillConfig"
MAX_PARALLEL = 4  # mapped run_stage tasks of one run at once (fixed at parse time, see doc)


def build(problem: str) -> None:
    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=None, params={
        "stage": Param("materialize", enum=["materialize", "score", "monitor"], title="Stage",
                       description="The stage to run again for each batch."),
        "batch_ids": Param([], type="array", minItems=1, maxItems=500, title="Batch IDs",
                           items={"type": "string", "pattern": BATCH_ID_PATTERN},
                           description="Published batches to process (1 to 500 IDs)."),
        "policy": Param("missing", enum=["missing", "failed", "all"], title="Reprocess policy",
                        description="missing: not done yet; failed: the last backfill attempt "
                                    "failed; all: every batch given."),
        "order": Param("given", enum=["given", "event_time"], title="Order",
                       description="Run in the order given, or oldest event time first."),
    })
    def backfill_batches_dag() -> None:
        @task
        def plan_backfill() -> list[str]:
            items = run_stage("mlcore.backfill.plan", problem, config=CONFIG,
                              params=("stage", "batch_ids", "policy", "order"),
                              log="{batch_id}: {action} ({reason})")
            return [i["batch_id"] for i in items if i["action"] != "skip"]

        @task(task_id="run_stage", max_active_tis_per_dagrun=MAX_PARALLEL)
        def run_stage_again(batch_id: str) -> dict:
            return run_stage("mlcore.backfill.run_stage", problem, batch_id=batch_id,
                             config=CONFIG, params=("stage",))

        run_stage_again.expand(batch_id=plan_backfill())

    backfill_batches_dag()


for _spec in problem_specs():
    build(_spec.name)
