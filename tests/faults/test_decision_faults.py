"""A worse or broken contender is never promoted, on SQLite and PostgreSQL, and the reason is
recorded (the retrain path's evaluation; ``mlcore promote``'s checks run the same function, see
tests/mlcore/test_promotion.py).

The contenders are real fitted pipelines registered next to a real champion; the holdout is the
``loop`` fixture's frozen 2017 part (neither model trained on it, which the check verifies).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sqlalchemy import select

from mlcore.evaluation import UnfairHoldout
from mlcore.model.evaluation import KEEP_WORSE, REJECT_FLOOR
from mlcore.model.preprocessing import build_pipeline
from mlcore.model.registry import alias_holder, alias_log, move_alias, register_version
from mlcore.problems import ProblemSpec
from mlcore.promotion import evaluate_contender
from mlcore.store.models import Evaluation
from mlcore.store.session import session_scope
from mlcore.training import save_artifact


def register(spec, settings, loop, pipeline, name: str) -> int:
    uri, sha = save_artifact(pipeline, settings, spec.name)
    return register_version(
        spec, settings, algorithm=name, artifact_uri=uri, artifact_sha256=sha,
        hyperparameters={}, dataset=loop.dataset, train_rows=loop.dataset.train_rows,
        validation={}, timings={}, reproducibility={"dataset": loop.dataset.to_dict()})


@pytest.fixture
def champion(spec, settings, loop) -> int:
    train = pd.read_parquet(loop.dataset.train_uri)
    pipe = build_pipeline(spec, "logistic_regression").fit(train[spec.feature_names],
                                                           train["employed"])
    version = register(spec, settings, loop, pipe, "logistic_regression")
    move_alias(spec.name, expected=None, new=version, reason="first", url=settings.db_url)
    return version


def nan_model(spec, loop):
    """A fitted pipeline whose scores are all NaN (a corrupted coefficient vector)."""
    train = pd.read_parquet(loop.dataset.train_uri)
    pipe = build_pipeline(spec, "logistic_regression").fit(train[spec.feature_names],
                                                           train["employed"])
    pipe.named_steps["model"].coef_[:] = np.nan
    return pipe


def constant_model(spec, loop):
    """Predicts the base rate for everyone: ROC AUC 0.5."""
    train = pd.read_parquet(loop.dataset.train_uri)
    return DummyClassifier(strategy="prior").fit(train[spec.feature_names], train["employed"])


def recorded(settings, evaluation_id: int) -> Evaluation:
    with session_scope(settings.db_url) as s:
        return s.scalar(select(Evaluation).where(Evaluation.id == evaluation_id))


@pytest.mark.parametrize("make, floor, outcome, words", [
    (nan_model, 0.75, REJECT_FLOOR, "NaN"),
    (constant_model, 0.75, REJECT_FLOOR, "misses the floor"),
    (constant_model, 0.4, KEEP_WORSE, "worse than the champion"),
], ids=["nan", "below-floor", "worse"])
def test_a_worse_or_nan_contender_is_never_promoted_and_why_is_recorded(
        spec, settings, loop, champion, make, floor, outcome, words):
    spec = ProblemSpec.model_validate(
        {**spec.model_dump(), "promotion": {**spec.promotion.model_dump(), "min_metric": floor}})
    contender = register(spec, settings, loop, make(spec, loop), "bad")

    decision = evaluate_contender(spec, loop.dataset, contender, settings)

    assert (decision["outcome"], decision["promote"]) == (outcome, False)
    assert words in decision["reason"]
    row = recorded(settings, decision["evaluation_id"])
    assert (row.outcome, row.promote, row.reason) == (outcome, False, decision["reason"])
    assert row.champion_version == champion and row.holdout_rows == 300
    card = json.loads((Path(row.run_card_uri).parent / "run_card.json").read_text())
    assert card["outcome"] == outcome and card["reason"] == decision["reason"]
    assert alias_holder(spec.name, settings.db_url) == champion
    assert [h["to"] for h in alias_log(spec.name, settings.db_url)] == [champion]


def test_a_contender_that_trained_on_the_holdout_is_refused(spec, settings, loop, champion):
    holdout = pd.read_parquet(loop.dataset.holdout_uri)
    cheat = build_pipeline(spec, "logistic_regression").fit(holdout[spec.feature_names],
                                                            holdout["employed"])
    uri, sha = save_artifact(cheat, settings, spec.name)
    leaked = dict(loop.dataset.to_dict(), train_uri=loop.dataset.holdout_uri)
    version = register_version(
        spec, settings, algorithm="cheat", artifact_uri=uri, artifact_sha256=sha,
        hyperparameters={}, dataset=loop.dataset, train_rows=300, validation={}, timings={},
        reproducibility={"dataset": leaked})
    with pytest.raises(UnfairHoldout, match=f"v{version} trained on 300; only 0 rows neither "
                                            "trained on are left"):
        evaluate_contender(spec, loop.dataset, version, settings)
    assert alias_holder(spec.name, settings.db_url) == champion
