"""
### Retrain the model

Builds a point-in-time training set from Feast over the published labelled batches (the latest rows
of the newest one, by event time, are the frozen holdout; the contender trains on every row before
the cut; rows either model trained on are left out, checked by row key), trains a contender from
the spec's candidate algorithms and training windows (a small grid each, seeded, with a
reproducibility record), evaluates it against the `champion` on that holdout (metric delta with a
paired-bootstrap confidence interval, the spec's floor, improvement, margin and guardrails), writes
a run card, and promotes it by compare-and-set only on `promote`. Outcomes: `promote`,
`keep: worse`, `keep: too close to call` (the contender becomes the `challenger`, for shadow
scoring), `reject: failed floor/guardrail`; a better contender not promoted names the spec setting
that held it back. With `promotion.require_approval` in the spec, a human approves the promotion in
the UI (Required Actions) first; no answer in time means reject.

Runs on the spec's cron schedule, whenever `monitor_model` files a retrain request, or manually.
The run takes the pending request and answers it: `trained` by its contender, or `failed` with
the error and the run id when a task fails or is killed, or the run outlives the spec's
`lease_hours` (its `dagrun_timeout`); the policy files a new request on the next trigger.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Param, dag, task

from batchloop_airflow import problem_specs, publish_monitoring_page, run_stage, stage_asset
from batchloop_airflow.retrain_tasks import (
    approval_gate,
    claim_contender,
    promotion_gate,
    release_retrain,
    retrain_dag_kwargs,
    retrain_schedule,
    run_hours,
    start_retrain,
    with_summary,
)
from batchloop_airflow.stage import run_actor

STAGE = Path(__file__).stem
TRAIN, DATASET = "mlcore.config.TrainConfig", {"dataset": "mlcore.model.splits.DatasetRef"}


def build(problem: str, cron: str | None, algorithms: list[str], approval: bool,
          lease_hours: float, run_missed: bool = False) -> None:
    hours, champion = run_hours(lease_hours, approval), stage_asset(problem, "champion")

    @dag(**retrain_dag_kwargs(problem, STAGE, __doc__, hours),
         schedule=retrain_schedule(problem, cron, run_missed), params={
        "until_batch": Param(None, type=["null", "string"], title="Train up to batch",
                             description="Use labelled batches up to this one (its latest rows "
                                         "become the holdout). Empty: every published "
                                         "labelled batch."),
        "algorithm": Param("auto", enum=["auto", *algorithms], title="Algorithm",
                           description="auto: fit every candidate, keep the best on validation."),
        "validation_fraction": Param(0.2, type="number", minimum=0.05, maximum=0.45,
                                     description="Share of training entities used to pick "
                                                 "the algorithm."),
        "random_state": Param(0, type="integer", minimum=0, maximum=2**31 - 1,
                              description="Seed of the split, the search and the estimators."),
        "max_train_rows": Param(1_000_000, type="integer", minimum=100, maximum=50_000_000,
                                description="Train on a seeded sample of at most this many rows."),
        "reason": Param("", type="string", maxLength=500,
                        description="Why this retrain was run (kept with the decision)."),
    })
    def retrain_model_dag() -> None:
        @task
        def build_dataset() -> dict:
            return run_stage("mlcore.datasets.build_dataset", problem, config=TRAIN,
                             params={"until": "until_batch"})

        @task
        def train_contender(dataset: dict) -> dict:
            return claim_contender(problem, run_stage(
                "mlcore.training.train_contender", problem, dataset=dataset, rebuild=DATASET,
                config=TRAIN, config_arg="cfg"))

        @task
        def evaluate_contender(dataset: dict, contender: dict) -> dict:
            return with_summary(run_stage("mlcore.promotion.evaluate_contender", problem,
                                          dataset=dataset, contender=contender["version"],
                                          rebuild=DATASET))

        @task
        def mark_challenger(decision: dict) -> int | None:
            """A too-close contender is shadow-scored next to the champion as `challenger`."""
            return run_stage("mlcore.promotion.mark_challenger", problem, by_name=True,
                             decision=decision, actor=run_actor())

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def should_promote(decision: dict) -> bool:
            """False skips the promotion only: the monitoring page is still refreshed."""
            return promotion_gate(problem, decision)

        @task(outlets=[champion])
        def promote_contender(decision: dict) -> dict:
            return {"champion": run_stage("mlcore.promotion.promote_contender", problem,
                                          by_name=True, decision=decision, actor=run_actor())}

        lease, dataset = start_retrain(problem, hours), build_dataset()
        lease >> dataset
        decision = evaluate_contender(dataset, train_contender(dataset))
        challenger, gate = mark_challenger(decision), should_promote(decision)
        if approval:
            gate = gate >> approval_gate(problem)
        promoted = promote_contender(decision)
        gate >> promoted
        [challenger, promoted] >> publish_monitoring_page(problem)
        [challenger, promoted] >> release_retrain(problem, lease)

    retrain_model_dag()


for _spec in problem_specs():
    build(_spec.name, _spec.retrain.schedule, sorted(_spec.algorithms),
          _spec.promotion.require_approval, _spec.retrain.lease_hours,
          _spec.retrain.run_missed_schedule)
