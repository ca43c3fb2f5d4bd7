"""The estimator library and candidate search: pipelines per spec choice, the grid, selection
of the best configuration on validation, every library estimator fitting."""

from __future__ import annotations

import numpy as np
import pytest
from spec_sections import variant

from mlcore.config import TrainConfig
from mlcore.model.estimators import select_and_fit
from mlcore.model.preprocessing import build_pipeline
from mlcore.problems import ProblemSpec, spec_hash

LR = {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}}
HGB = {"estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
       "preprocessing": "ordinal", "params": {"max_iter": 30, "max_leaf_nodes": 15}}


@pytest.fixture(scope="module")
def fast(spec) -> ProblemSpec:
    """Both candidates, with a small boosting budget so fits take well under a second."""
    return variant(spec, algorithms={"logistic_regression": LR, "hist_gradient_boosting": HGB})


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


def test_pipelines_take_the_spec_hyperparameters_and_search_overrides(spec):
    model = build_pipeline(spec, "hist_gradient_boosting").named_steps["model"]
    assert (model.max_iter, model.max_leaf_nodes) == (200, 31)
    assert model.categorical_features == [True] * 15 + [False]  # native categorical splits
    assert build_pipeline(spec, "logistic_regression").named_steps["model"].max_iter == 300
    tuned = build_pipeline(spec, "logistic_regression", 5, {"C": 0.1}).named_steps["model"]
    assert (tuned.C, tuned.max_iter, tuned.random_state) == (0.1, 300, 5)


def test_preprocessing_is_a_column_transformer_per_spec_choice(spec):
    lr = build_pipeline(spec, "logistic_regression").named_steps["prep"]
    hgb = build_pipeline(spec, "hist_gradient_boosting").named_steps["prep"]
    assert [t[0] for t in lr.transformers] == ["num", "cat"]
    assert [type(step).__name__ for _, step in lr.transformers[1][1].steps] == [
        "CategoryCodes", "OneHotEncoder"]
    assert type(hgb.transformers[0][1]).__name__ == "CategoryCodes"


def test_search_space_is_the_grid_of_the_candidate(spec):
    from mlcore.model.estimators import search_space

    assert search_space(spec.algorithms["hist_gradient_boosting"]) == [
        {"learning_rate": 0.05}, {"learning_rate": 0.1}]
    grid = variant(spec, algorithms={"lr": {**LR, "search": {"C": [0.1, 1.0, 10.0],
                                                             "tol": [1e-4, 1e-3]}}})
    assert len(search_space(grid.algorithms["lr"])) == 6
    assert search_space(variant(spec, algorithms={"lr": LR}).algorithms["lr"]) == [{}]


@pytest.mark.parametrize("candidate, message", [
    ({"estimator": "os.system"}, "not in the library"),
    ({"estimator": "sklearn.svm.SVC"}, "not in the library"),
    ({**LR, "params": {"random_state": 3}}, "seed"),
    ({**LR, "search": {"max_iter": [100, 200]}}, "both fixed and searched"),
    ({**LR, "search": {"C": []}}, "empty"),
    ({**LR, "search": {"C": [1, 2, 3, 4], "tol": [1, 2, 3, 4]}}, "16 combinations"),
    ({**LR, "params": {"C": [1, 2]}}, "params"),
])
def test_the_spec_refuses_candidates_outside_the_library_or_bounds(spec, candidate, message):
    with pytest.raises(ValueError, match=message):
        variant(spec, algorithms={"x": candidate})


def test_a_hyperparameter_the_estimator_does_not_take_names_the_estimator(spec):
    bad = variant(spec, algorithms={"lr": {**LR, "params": {"depth": 3}}})
    with pytest.raises(ValueError, match="LogisticRegression.*depth"):
        build_pipeline(bad, "lr")


def test_an_unseen_category_does_not_break_prediction(spec, curated):
    small = curated.head(400)
    for algorithm in spec.algorithms:
        pipe = build_pipeline(spec, algorithm).fit(small[spec.feature_names], small["employed"])
        odd = small.head(3)[spec.feature_names].assign(SCHL=99)
        assert pipe.predict_proba(odd).shape == (3, 2)


@pytest.mark.parametrize("name", ["svm", "hist_gradient_boosting"])
def test_an_algorithm_outside_the_spec_is_refused(spec, name):
    with pytest.raises(ValueError, match="not a candidate"):
        build_pipeline(variant(spec, algorithms={"logistic_regression": LR}), name)


@pytest.mark.parametrize("metric, direction", [("roc_auc", "maximize"),
                                               ("log_loss", "minimize"),
                                               ("accuracy", "maximize")])
def test_auto_fits_every_candidate_and_keeps_the_best(fast, curated, metric, direction):
    spec = variant(fast, metric={"name": metric, "direction": direction})
    trained = select_and_fit(spec, curated, TrainConfig(algorithm="auto"))

    assert set(trained.validation) == {"logistic_regression", "hist_gradient_boosting"}
    for scores in trained.validation.values():
        assert set(scores) == {"roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "f1"}
        assert 0.5 < scores["roc_auc"] <= 1.0
    pick = min if direction == "minimize" else max
    assert trained.algorithm == pick(trained.validation,
                                     key=lambda n: trained.validation[n][metric])
    assert trained.pipeline.named_steps["model"].__class__.__name__ == {
        "logistic_regression": "LogisticRegression",
        "hist_gradient_boosting": "HistGradientBoostingClassifier"}[trained.algorithm]


def test_the_grid_is_searched_and_the_best_point_refit_on_all_rows(fast, curated):
    grid = variant(fast, algorithms={"lr": {**LR, "search": {"C": [0.001, 1.0]}}})
    trained = select_and_fit(grid, curated, TrainConfig(random_state=3))
    assert set(trained.validation) == {"lr(C=0.001)", "lr(C=1.0)"}
    best = max(trained.validation, key=lambda k: trained.validation[k]["roc_auc"])
    assert best == f"lr(C={trained.overrides['C']})"
    full = build_pipeline(grid, "lr", 3, trained.overrides).fit(curated[fast.feature_names],
                                                                curated["employed"])
    np.testing.assert_array_equal(trained.pipeline.named_steps["model"].coef_,
                                  full.named_steps["model"].coef_)


def test_a_single_configuration_is_fitted_once_on_all_rows(fast, curated):
    cfg = TrainConfig(algorithm="logistic_regression", random_state=3)
    trained = select_and_fit(fast, curated, cfg)
    assert trained.algorithm == "logistic_regression"
    assert trained.validation == {} and trained.overrides == {}  # nothing to select
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
        select_and_fit(variant(fast, algorithms={"logistic_regression": LR}), curated,
                       TrainConfig(algorithm="hist_gradient_boosting"))


def test_spec_hash_changes_with_the_spec(spec, fast):
    assert spec_hash(spec) == spec_hash(variant(spec))
    assert spec_hash(spec) != spec_hash(fast)

@pytest.mark.parametrize("estimator", sorted(__import__("mlcore.problems").problems.REGRESSORS))
def test_every_library_regressor_fits_and_predicts_values(spec, curated, estimator):
    small = curated.head(300)
    for prep in ("one_hot", "ordinal"):
        lib = variant(spec, target={"name": "employed", "kind": "regression"}, metric={},
                      algorithms={"m": {"estimator": estimator, "preprocessing": prep}})
        assert lib.metric.name == "rmse" and lib.direction == "minimize"
        pipe = build_pipeline(lib, "m", seed=1).fit(small[spec.feature_names],
                                                   small["employed"].astype(float))
        values = pipe.predict(curated.tail(50)[spec.feature_names])
        assert values.shape == (50,) and np.isfinite(values).all()


@pytest.mark.parametrize("estimator",
                         sorted(__import__("mlcore.problems").problems.CLASSIFIERS))
def test_every_library_estimator_fits_and_gives_probabilities(spec, curated, estimator):
    small = curated.head(300)
    params = {"SGDClassifier": {"loss": "log_loss"}, "LogisticRegression": {"max_iter": 2000}
              }.get(estimator.rsplit(".", 1)[1], {})
    for prep in ("one_hot", "ordinal"):
        lib = variant(spec, algorithms={"m": {"estimator": estimator, "preprocessing": prep,
                                              "params": params}})
        pipe = build_pipeline(lib, "m", seed=1).fit(small[spec.feature_names], small["employed"])
        proba = pipe.predict_proba(curated.tail(50)[spec.feature_names])[:, 1]
        assert proba.shape == (50,) and np.isfinite(proba).all()
