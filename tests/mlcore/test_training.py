"""Training: spec algorithms as sklearn pipelines, candidate selection, artifacts, contenders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from mlcore.config import TrainConfig
from mlcore.ingestion import curate
from mlcore.problems import ProblemSpec
from mlcore.registry import get_version, load_model
from mlcore.training import build_pipeline, save_artifact, select_and_fit, spec_hash


def variant(spec, **changes) -> ProblemSpec:
    """The census spec with some top-level sections replaced (validated again)."""
    return ProblemSpec.model_validate({**spec.model_dump(), **changes})


@pytest.fixture(scope="module")
def curated(spec, slices) -> pd.DataFrame:
    """1,500 typed rows of 2015 plus 1,500 of 2016, as the curated store holds them."""
    return pd.concat([curate(pd.read_parquet(slices[y]), spec) for y in (2015, 2016)],
                     ignore_index=True)


@pytest.fixture(scope="module")
def fast(spec) -> ProblemSpec:
    """Both candidates, with a small boosting budget so fits take well under a second."""
    return variant(spec, algorithms={
        "logistic_regression": {"C": 1.0, "max_iter": 300},
        "hist_gradient_boosting": {"learning_rate": 0.1, "max_iter": 30, "max_leaf_nodes": 15}})


@pytest.mark.parametrize("algorithm", ["logistic_regression", "hist_gradient_boosting"])
def test_each_spec_algorithm_fits_and_predicts_probabilities(spec, curated, algorithm):
    small = curated.head(400)
    pipe = build_pipeline(spec, algorithm, seed=0).fit(small[spec.feature_names],
                                                      small["employed"])
    proba = pipe.predict_proba(curated.tail(200)[spec.feature_names])
    assert proba.shape == (200, 2)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert pipe.named_steps["model"].get_params()["random_state"] == 0


def test_pipelines_take_the_spec_hyperparameters(spec):
    model = build_pipeline(spec, "hist_gradient_boosting").named_steps["model"]
    assert (model.max_iter, model.max_leaf_nodes) == (200, 31)
    assert build_pipeline(spec, "logistic_regression").named_steps["model"].max_iter == 300


def test_an_unseen_category_does_not_break_prediction(spec, curated):
    small = curated.head(400)
    for algorithm in spec.algorithms:
        pipe = build_pipeline(spec, algorithm).fit(small[spec.feature_names], small["employed"])
        odd = small.head(3)[spec.feature_names].assign(SCHL=99)
        assert pipe.predict_proba(odd).shape == (3, 2)


@pytest.mark.parametrize("algorithms, name, message", [
    ({"logistic_regression": {}}, "svm", "not a candidate"),
    ({"logistic_regression": {}}, "hist_gradient_boosting", "not a candidate"),
    ({"svm": {"C": 1.0}}, "svm", "not in the library"),
])
def test_an_algorithm_outside_the_spec_or_library_is_refused(spec, algorithms, name, message):
    with pytest.raises(ValueError, match=message):
        build_pipeline(variant(spec, algorithms=algorithms), name)


@pytest.mark.parametrize("metric, direction", [("roc_auc", "maximize"),
                                               ("log_loss", "minimize"),
                                               ("accuracy", "maximize")])
def test_auto_fits_every_candidate_and_keeps_the_best(fast, curated, metric, direction):
    spec = variant(fast, metric={"name": metric, "direction": direction})
    trained = select_and_fit(spec, curated, TrainConfig(algorithm="auto"))

    assert set(trained.validation) == {"logistic_regression", "hist_gradient_boosting"}
    for scores in trained.validation.values():
        assert set(scores) == {"roc_auc", "accuracy", "log_loss"}
        assert 0.5 < scores["roc_auc"] <= 1.0
    pick = min if direction == "minimize" else max
    assert trained.algorithm == pick(trained.validation,
                                     key=lambda n: trained.validation[n][metric])
    assert trained.pipeline.named_steps["model"].__class__.__name__ == {
        "logistic_regression": "LogisticRegression",
        "hist_gradient_boosting": "HistGradientBoostingClassifier"}[trained.algorithm]


def test_a_named_algorithm_is_the_only_one_fitted_and_is_refit_on_all_rows(fast, curated):
    cfg = TrainConfig(algorithm="logistic_regression", random_state=3)
    trained = select_and_fit(fast, curated, cfg)
    assert trained.algorithm == "logistic_regression"
    assert list(trained.validation) == ["logistic_regression"]
    full = build_pipeline(fast, "logistic_regression", 3).fit(curated[fast.feature_names],
                                                              curated["employed"])
    np.testing.assert_allclose(trained.pipeline.named_steps["model"].coef_,
                               full.named_steps["model"].coef_)


def test_selection_is_reproducible(fast, curated):
    cfg = TrainConfig(algorithm="auto", random_state=1)
    assert select_and_fit(fast, curated, cfg).validation == \
        select_and_fit(fast, curated, cfg).validation


def test_a_non_candidate_algorithm_in_the_config_is_refused(fast, curated):
    with pytest.raises(ValueError, match="not a candidate"):
        select_and_fit(variant(fast, algorithms={"logistic_regression": {}}), curated,
                       TrainConfig(algorithm="hist_gradient_boosting"))


def test_save_artifact_hash_is_the_file_hash(spec, curated, sqlite_settings):
    pipe = build_pipeline(spec, "logistic_regression").fit(curated[spec.feature_names],
                                                           curated["employed"])
    uri, sha = save_artifact(pipe, sqlite_settings, spec.name)
    path = Path(uri)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.parent.name == f"sha256={sha[:16]}"
    assert path.is_relative_to(sqlite_settings.home / "artifacts")
    assert not list(path.parent.parent.glob(".model-*"))  # no staging file left behind
    X = curated.head(50)[spec.feature_names]
    np.testing.assert_array_equal(joblib.load(path).predict_proba(X), pipe.predict_proba(X))


def test_spec_hash_changes_with_the_spec(spec, fast):
    assert spec_hash(spec) == spec_hash(variant(spec))
    assert spec_hash(spec) != spec_hash(fast)


def test_train_contender_registers_a_reproducible_version(spec, loop):
    contender = loop.contender
    mv = get_version(spec.name, contender.version, loop.settings.db_url)
    assert (mv.algorithm, mv.artifact_uri, mv.artifact_sha256) == (
        "logistic_regression", contender.artifact_uri, contender.artifact_sha256)
    assert mv.training_batch_ids == loop.dataset.train_batches == ["2015", "2016"]
    assert (mv.data_hash, mv.train_rows) == (loop.dataset.train_hash, 3000)
    assert mv.spec_hash == spec_hash(spec)
    assert mv.hyperparameters == {"algorithm": "logistic_regression",
                                  **spec.algorithms["logistic_regression"], "random_state": 0}
    assert mv.metrics["validation"] == contender.validation
    assert mv.metrics["dataset_id"] == loop.dataset.dataset_id
    holdout = pd.read_parquet(loop.dataset.holdout_uri)
    proba = load_model(mv).predict_proba(holdout[spec.feature_names])[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()
