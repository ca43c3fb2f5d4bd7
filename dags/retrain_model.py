"""
### Retrain the model

Builds a point-in-time training set from Feast over the published labelled batches (the latest
rows of the newest one, by event time, are the frozen holdout; the contender trains on every row
before the cut; rows either model trained on are left out, checked by row key), trains a
contender from the spec's candidate algorithms and training windows (a small grid each, seeded,
with a reproducibility record),
evaluates it against the `champion` on that holdout (metric delta with a paired-bootstrap
confidence interval, the spec's floor, improvement, margin and guardrails), writes a run card,
and promotes it by compare-and-set only on `promote`. Outcomes: `promote`, `keep: worse`,
`keep: too close to call` (the contender becomes the `challenger`, for shadow scoring),
`reject: failed floor/guardrail`; a better contender not promoted names the spec setting that
held it back. With `promotion.require_approval` in the spec, a human approves
the promotion in the UI (Required Actions) first; no answer in time means reject.

Runs on the spec's cron schedule, whenever `monitor_model` files a retrain request, or manually.
The run takes the pending request and answers it: `trained` by its contender, or `failed` with
the error and the run id when a task fails or is killed, or the run outlives the spec's
`lease_hours` (its `dagrun_timeout`); the policy files a new request on the next trigger.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import (
    AssetOrTimeSchedule,
    Param,
    dag,
    get_current_context,
    task,
)

from batchloop_airflow import fail_fast, problem_specs, publish_monitoring_page, stage_asset
from batchloop_airflow.retrain_tasks import (
    APPROVAL_HOURS,
    release_retrain,
    retrain_dag_kwargs,
    run_hours,
    start_retrain,
)
from batchloop_airflow.timetables import retrain_timetable

STAGE = Path(__file__).stem


SUMMARY = """**{outcome}** — contender v{contender_version} vs champion v{champion_version}

{reason}

Run card: `{run_card}`"""


def build(problem: str, cron: str | None, algorithms: list[str], approval: bool,
          lease_hours: float, run_missed: bool = False) -> None:
    hours = run_hours(lease_hours, approval)
    requests, champion = stage_asset(problem, "retrain_requests"), stage_asset(problem, "champion")
    # a tick missed while paused runs only if the spec asks (batchloop_airflow.timetables)
    schedule = (AssetOrTimeSchedule(timetable=retrain_timetable(cron, run_missed),
                                    assets=[requests]) if cron else [requests])

    @dag(**retrain_dag_kwargs(problem, STAGE, __doc__, hours), schedule=schedule, params={
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
                                description="Train on a seeded sample of at most this many "
                                            "rows."),
        "reason": Param("", type="string", maxLength=500,
                        description="Why this retrain was run (kept with the decision)."),
    })
    def retrain_model_dag() -> None:
        @task
        def build_dataset() -> dict:
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.config import TrainConfig
            from mlcore.datasets import build_dataset as run
            from mlcore.problems import get_problem

            with fail_fast():
                cfg = TrainConfig.from_params(get_current_context()["params"])
                return run(get_problem(problem), mlcore_settings(), cfg.until_batch).to_dict()

        @task
        def train_contender(dataset: dict) -> dict:
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.config import TrainConfig
            from mlcore.model.splits import DatasetRef
            from mlcore.policy import claim_trained
            from mlcore.problems import get_problem
            from mlcore.training import train_contender as run

            ctx, settings = get_current_context(), mlcore_settings()
            with fail_fast():
                ref = run(get_problem(problem), DatasetRef.from_dict(dataset),
                          TrainConfig.from_params(ctx["params"]), settings)
            claim_trained(problem, ctx["run_id"], ref.version, settings.db_url)  # fails with us
            return ref.to_dict()

        @task
        def evaluate_contender(dataset: dict, contender: dict) -> dict:
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.model.splits import DatasetRef
            from mlcore.problems import get_problem
            from mlcore.promotion import evaluate_contender as run

            with fail_fast():
                decision = run(get_problem(problem), DatasetRef.from_dict(dataset),
                               contender["version"], mlcore_settings())
            summary = SUMMARY.format(**decision)
            print(summary)  # the task log shows the outcome and where the run card is
            return {**decision, "summary": summary}

        @task
        def mark_challenger(decision: dict) -> int | None:
            """A too-close contender is shadow-scored next to the champion as `challenger`."""
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.promotion import mark_challenger as run

            settings = mlcore_settings()
            with fail_fast():
                return run(problem, decision, settings,
                           actor=f"airflow:{get_current_context()['run_id']}")

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def should_promote(decision: dict) -> bool:
            """The decision, unless monitoring of the champion's newest batch failed. False skips
            the promotion only: the monitoring page (``none_failed``) is still refreshed."""
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.policy import promotion_hold

            if not decision["promote"]:
                return False
            hold = promotion_hold(problem, mlcore_settings().db_url)
            if hold:
                print(f"promotion held: {hold}")
            return hold is None

        @task(outlets=[champion])
        def promote_contender(decision: dict) -> dict:
            from batchloop_airflow import settings as mlcore_settings
            from mlcore.promotion import promote_contender as run

            settings = mlcore_settings()
            with fail_fast():
                run(problem, decision, settings, actor=f"airflow:{get_current_context()['run_id']}")
            return {"champion": decision["contender_version"]}

        lease = start_retrain(problem, hours)
        dataset = build_dataset()
        lease >> dataset
        decision = evaluate_contender(dataset, train_contender(dataset))
        challenger = mark_challenger(decision)
        gate = should_promote(decision)
        if approval:
            gate = gate >> ApprovalOperator(
                task_id="approve_promotion", subject=f"Promote the {problem} contender?",
                body="{{ ti.xcom_pull(task_ids='evaluate_contender')['summary'] }}",
                defaults=["Reject"], response_timeout=timedelta(hours=APPROVAL_HOURS))
        promoted = promote_contender(decision)
        gate >> promoted
        [challenger, promoted] >> publish_monitoring_page(problem)
        [challenger, promoted] >> release_retrain(problem, lease)

    retrain_model_dag()


for _spec in problem_specs():
    build(_spec.name, _spec.retrain.schedule, sorted(_spec.algorithms),
          _spec.promotion.require_approval, _spec.retrain.lease_hours,
          _spec.retrain.run_missed_schedule)
