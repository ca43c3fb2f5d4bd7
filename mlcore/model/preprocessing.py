"""Pipelines: one of the spec's candidates (an estimator from the library, ``ESTIMATORS``) behind
its preprocessing, as an unfitted scikit-learn ``Pipeline``. Categories of any scalar type become
codes of the declared vocabulary (``CategoryCodes``), so one-hot and ordinal encodings (and native
categorical splits) see the same thing whether the data holds strings, ints or bools; missing
values reach each estimator the way it can take them (``missing_values_plan``)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlcore.columns import vocabulary_codes
from mlcore.problems import ProblemSpec
from mlcore.spec_rules import ESTIMATORS, NAN_NATIVE, Candidate, Scalar

# Estimators that refuse sparse input: one-hot output is densified for them only (it stays
# sparse for linear models, where it is ~6x smaller).
_DENSE_ONLY = {"sklearn.ensemble.HistGradientBoostingClassifier",
               "sklearn.ensemble.HistGradientBoostingRegressor", "sklearn.naive_bayes.GaussianNB"}


class CategoryCodes(TransformerMixin, BaseEstimator):
    """Each column as the position of its value in its vocabulary (float64); NaN where the value
    is missing or outside the vocabulary (``unknown: other``), which one-hot encodes as all zeros
    and HistGradientBoosting treats as missing.

    Args:
        vocabularies: one list of categories per input column, in column order.
    """

    def __init__(self, vocabularies: list[list[Any]] | None = None) -> None:
        self.vocabularies = vocabularies

    def fit(self, X: Any, y: Any = None) -> CategoryCodes:
        """Nothing is learnt: the vocabulary is declared."""
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The codes, shape (n_rows, n_columns)."""
        frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
        vocabularies = self.vocabularies or []
        if frame.shape[1] != len(vocabularies):
            raise ValueError(f"CategoryCodes: {frame.shape[1]} columns, "
                             f"{len(vocabularies)} vocabularies")
        out = np.empty(frame.shape, dtype="float64")
        for i, vocab in enumerate(vocabularies):
            out[:, i] = vocabulary_codes(frame.iloc[:, i], vocab)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Input names, unchanged."""
        return np.asarray(input_features if input_features is not None else
                          [f"x{i}" for i in range(len(self.vocabularies or []))], dtype=object)


def _estimator(path: str) -> Any:
    if path not in ESTIMATORS:  # the spec validator checks too; never import anything else
        raise ValueError(f"estimator {path!r} is not in the library")
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)()


def missing_values_plan(spec: ProblemSpec, candidate: Candidate) -> dict[str, str]:
    """How each nullable model column's missing values reach the estimator (recorded with the
    version): passed as NaN to estimators that take it, else a median plus a missing-indicator
    column (numeric) or an all-zero one-hot / NaN code (categories)."""
    plan = {}
    for f in spec.features:
        if not f.nullable:
            continue
        for column in f.model_columns:
            if spec.column_kinds[column] == "categorical":
                plan[column] = ("all-zero one-hot" if candidate.preprocessing == "one_hot"
                                else "missing category code (NaN)")
            elif candidate.estimator in NAN_NATIVE:
                plan[column] = "passed as NaN (the estimator handles missing values)"
            else:
                plan[column] = "imputed: median, plus a missing-indicator column"
    return plan


def _numeric_prep(spec: ProblemSpec, candidate: Candidate) -> Any:
    impute = bool(missing_values_plan(spec, candidate)) and any(
        v.startswith("imputed") for v in missing_values_plan(spec, candidate).values())
    steps: list[tuple[str, Any]] = []
    if impute:
        steps.append(("impute", SimpleImputer(strategy="median", add_indicator=True)))
    if candidate.preprocessing == "one_hot":
        steps.append(("scale", StandardScaler()))
    if not steps:
        return "passthrough"
    return steps[0][1] if len(steps) == 1 else Pipeline(steps)


def pipeline_for(spec: ProblemSpec, candidate: Candidate, seed: int,
                 overrides: dict[str, Scalar] | None = None) -> Pipeline:
    """An unfitted ``Pipeline(prep, model)`` for one candidate and one point of its search space.

    Categories (strings, ints or bools) become codes of the declared vocabulary first
    (``CategoryCodes``); ``one_hot`` then one-hot encodes them and scales numerics, ``ordinal``
    passes the codes on (HistGradientBoosting splits them natively). Nullable numerics are
    imputed for estimators that cannot take NaN (``missing_values_plan``).

    Raises:
        ValueError: a hyperparameter the estimator does not take (named in the message).
    """
    model = _estimator(candidate.estimator)
    params: dict[str, Any] = {**candidate.params, **(overrides or {})}
    if "random_state" in model.get_params():
        params["random_state"] = seed
    codes = CategoryCodes([spec.vocabulary(c) for c in spec.categorical])
    num = _numeric_prep(spec, candidate)
    if candidate.preprocessing == "one_hot":
        sizes = [np.arange(len(spec.vocabulary(c)), dtype="float64") for c in spec.categorical]
        prep = ColumnTransformer([
            ("num", num, spec.numeric),
            ("cat", Pipeline([("codes", codes), ("one_hot", OneHotEncoder(
                categories=sizes, handle_unknown="ignore"))]), spec.categorical)],
            sparse_threshold=0.0 if candidate.estimator in _DENSE_ONLY else 0.3)
    else:
        prep = ColumnTransformer([("cat", codes, spec.categorical), ("num", num, spec.numeric)])
        if "categorical_features" in model.get_params():  # native categorical splits
            params.setdefault("categorical_features",
                              [True] * len(spec.categorical) + [False] * len(spec.numeric))
    try:
        model.set_params(**params)
    except ValueError as exc:
        raise ValueError(f"problem {spec.name!r}: bad hyperparameters for "
                         f"{candidate.estimator}: {exc}") from exc
    return Pipeline([("prep", prep), ("model", model)])


def build_pipeline(spec: ProblemSpec, algorithm: str, seed: int = 0,
                   overrides: dict[str, Scalar] | None = None) -> Pipeline:
    """An unfitted pipeline for one of the spec's candidates (fixed params plus ``overrides``).

    Raises:
        ValueError: the algorithm is not a candidate of the spec.
    """
    return pipeline_for(spec, build_candidate(spec, algorithm), seed, overrides)


def build_candidate(spec: ProblemSpec, name: str) -> Candidate:
    """The spec's candidate ``name``.

    Raises:
        ValueError: no such candidate.
    """
    if name not in spec.algorithms:
        raise ValueError(f"algorithm {name!r} is not a candidate of problem {spec.name!r} "
                         f"(candidates: {sorted(spec.algorithms)})")
    return spec.algorithms[name]
