"""
### Retrain the model

Builds a point-in-time training set from Feast over the published labelled batches (the newest
one is the frozen holdout neither model trains on), trains a contender from the spec's candidate
algorithms, evaluates it against the `champion` on that holdout (metric delta with a bootstrap
confidence interval, the spec's thresholds), and promotes it by compare-and-set only when it is
clearly better. "Too close to call" keeps the champion.

Runs on the spec's cron schedule, whenever `monitor_model` files a retrain request, or manually.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)

from batchloop_airflow import dag_kwargs, fail_fast, problem_specs, stage_asset

STAGE = Path(__file__).stem


def build(problem: str, cron: str | None, algorithms: list[str]) -> None:
    requests, champion = stage_asset(problem, "retrain_requests"), stage_asset(problem, "champion")
    schedule = (AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"),
                                    assets=[requests]) if cron else [requests])

    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=schedule, params={
        "until_batch": Param(None, type=["null", "string"], title="Train up to batch",
                             description="Use labelled batches up to this one (it becomes the "
                                         "holdout). Empty: every published labelled batch."),
        "algorithm": Param("auto", enum=["auto", *algorithms], title="Algorithm",
                           description="auto: fit every candidate, keep the best on validation."),
        "validation_fraction": Param(0.2, type="number", minimum=0.05, maximum=0.45,
                                     description="Share of training entities used to pick "
                                                 "the algorithm."),
        "random_state": Param(0, type="integer", minimum=0, description="Seed."),
        "reason": Param("", type="string", maxLength=500,
                        description="Why this retrain was run (kept with the decision)."),
    })
    def retrain_model_dag() -> None:
        @task
        def build_dataset() -> dict:
            from mlcore.config import TrainConfig, get_settings
            from mlcore.datasets import build_dataset as run
            from mlcore.problems import get_problem

            with fail_fast():
                cfg = TrainConfig.from_params(get_current_context()["params"])
                return run(get_problem(problem), get_settings(), cfg.until_batch).to_dict()

        @task
        def train_contender(dataset: dict) -> dict:
            from mlcore.config import TrainConfig, get_settings
            from mlcore.datasets import DatasetRef
            from mlcore.problems import get_problem
            from mlcore.training import train_contender as run

            with fail_fast():
                cfg = TrainConfig.from_params(get_current_context()["params"])
                return run(get_problem(problem), DatasetRef.from_dict(dataset), cfg,
                           get_settings()).to_dict()

        @task
        def evaluate_contender(dataset: dict, contender: dict) -> dict:
            from mlcore.config import get_settings
            from mlcore.datasets import DatasetRef
            from mlcore.evaluation import evaluate_contender as run
            from mlcore.problems import get_problem

            with fail_fast():
                return run(get_problem(problem), DatasetRef.from_dict(dataset),
                           contender["version"], get_settings())

        @task.short_circuit
        def should_promote(decision: dict) -> bool:
            return bool(decision["promote"])

        @task(outlets=[champion])
        def promote_contender(decision: dict) -> dict:
            from mlcore.config import get_settings
            from mlcore.registry import move_alias

            with fail_fast():
                move_alias(problem, expected=decision["champion_version"],
                           new=decision["contender_version"], reason=decision["reason"],
                           url=get_settings().db_url, evaluation_id=decision["evaluation_id"],
                           actor=f"airflow:{get_current_context()['run_id']}")
            return {"champion": decision["contender_version"]}

        dataset = build_dataset()
        decision = evaluate_contender(dataset, train_contender(dataset))
        should_promote(decision) >> promote_contender(decision)

    retrain_model_dag()


for _spec in problem_specs():
    build(_spec.name, _spec.retrain.schedule, sorted(_spec.algorithms))
