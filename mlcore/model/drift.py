"""Drift tests: how a column of a batch is compared with the same column of a model's reference
profile, as a small registry.

``DRIFT_TESTS`` maps a test's name to its score function, a distance between the reference and
the current values (drift when the score reaches the column's threshold); ``TEST_OF_KIND`` names
the test each kind of column gets, and ``stattests`` gives every column of a spec its test and
its threshold (numeric features, categorical features, the model's outputs). Adding a drift test
is one entry in ``DRIFT_TESTS`` (and naming it in ``TEST_OF_KIND`` to use it).

``run_drift`` judges a pair of frames in one Evidently report, a lean metric (``drift_metric``)
per column scored by the column's test. Pure: no files, no store (``mlcore.monitoring`` loads
the frames and records the verdict). Evidently loads on first use.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mlcore.problems import ProblemSpec
from mlcore.spec_columns import label_key

PREDICTION = "prediction"

DriftScore = Callable[[pd.Series, pd.Series, str, float], float]
"""``(reference, current, column kind, threshold) -> score``, NaN/inf already dropped."""


class DriftCheckFailed(ValueError):
    """No drift verdict could be reached (mismatched columns, Evidently failed, over budget)."""


class Stattest(NamedTuple):
    """How one column is judged: drift when ``score >= threshold`` (both are distances)."""

    kind: str  # numeric | categorical
    method: str  # a name in DRIFT_TESTS
    threshold: float


def evidently_stattest(method: str) -> DriftScore:
    """The score of Evidently's registered stattest ``method`` (the function Evidently's own
    ``ValueDrift`` calls)."""
    def score(reference: pd.Series, current: pd.Series, kind: str, threshold: float) -> float:
        from evidently.legacy.calculations.stattests import get_stattest

        test = get_stattest(reference, current, kind, method)
        return test(reference, current, kind, threshold).drift_score

    return score


DRIFT_TESTS: dict[str, DriftScore] = {
    "wasserstein": evidently_stattest("wasserstein"),  # normed Wasserstein distance
    "jensenshannon": evidently_stattest("jensenshannon"),  # Jensen-Shannon distance
}
TEST_OF_KIND = {"numeric": "wasserstein", "categorical": "jensenshannon"}


def prediction_columns(outputs: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """A model's outputs as drift columns: ``prediction`` (binary P(positive), regression the
    value), or one ``prediction:<class>`` probability per class (multiclass)."""
    if outputs.ndim == 1:
        return {PREDICTION: outputs}
    return {f"{PREDICTION}:{c}": outputs[:, i] for i, c in enumerate(classes)}


def is_prediction(column: str) -> bool:
    """A model-output column (see ``prediction_columns``), not a feature."""
    return column == PREDICTION or column.startswith(f"{PREDICTION}:")


def stattests(spec: ProblemSpec, classes: list[str] | None = None) -> dict[str, Stattest]:
    """Per-column tests from the spec: ``TEST_OF_KIND`` for numeric features (timestamp parts
    included: normed Wasserstein) and for categorical and boolean ones (Jensen-Shannon), and the
    model's outputs (probabilities, or predicted values: numeric) with their own threshold."""
    d = spec.drift
    numeric, categorical = TEST_OF_KIND["numeric"], TEST_OF_KIND["categorical"]
    tests = {c: Stattest("numeric", numeric, d.numeric_threshold) if k == "numeric"
             else Stattest("categorical", categorical, d.categorical_threshold)
             for c, k in spec.column_kinds.items()}
    outputs = [PREDICTION] if spec.target.kind != "multiclass" or not classes else [
        f"{PREDICTION}:{c}" for c in classes]
    return {**tests, **{c: Stattest("numeric", numeric, d.prediction_threshold)
                        for c in outputs}}


def comparable(frame: pd.DataFrame, spec: ProblemSpec) -> pd.DataFrame:
    """Text and boolean categories as text (``label_key``; None where missing), so a column
    compares alike whether it was read from Feast or a curated file, with or without missing
    values. Integer categories stay integers (the same dtype from either source; converting
    them made a census drift check ~3x slower, benchmarks/BENCHMARKS.md)."""

    out = frame.copy()
    for c in spec.categorical:
        if c in out.columns and spec.feature(c).value_type != "int":
            codes, uniques = pd.factorize(out[c], use_na_sentinel=True)
            table = np.array([label_key(u) for u in uniques] + [None], dtype=object)
            out[c] = table[codes]
    return out


def check_columns(reference: pd.DataFrame, current: pd.DataFrame, tests: dict[str, Stattest],
                  batch_id: str) -> None:
    """Both sides must have every tested column, with the same kind of dtype (any numeric dtype
    for numeric columns), so a mismatch can never read as "no drift".

    Raises:
        DriftCheckFailed: naming the batch and the columns.
    """
    def kind(frame: pd.DataFrame, col: str) -> str:
        k = frame[col].dtype.kind
        return "number" if tests[col].kind == "numeric" and k in "iuf" else k

    problems = [f"{c} missing from the {side}" for c in tests
                for side, frame in (("reference", reference), ("current batch", current))
                if c not in frame.columns]
    both = [c for c in tests if c in reference.columns and c in current.columns]
    problems += [f"{c} is {reference[c].dtype} in the reference but {current[c].dtype} now"
                 for c in both if kind(reference, c) != kind(current, c)]
    problems += [f"{c} must be numeric, is {reference[c].dtype}" for c in both
                 if tests[c].kind == "numeric" and kind(reference, c) == kind(current, c)
                 != "number"]
    if problems:
        raise DriftCheckFailed(f"batch {batch_id!r}: reference and current columns do not match "
                               f"({'; '.join(problems)}); no drift verdict")


def _finite(values: pd.Series, column: str) -> pd.Series:
    out = values.replace([-math.inf, math.inf], float("nan")).dropna()
    if out.empty:
        raise ValueError(f"column {column!r} has no values on a side")
    return out


@functools.cache
def drift_metric() -> Any:
    """The Evidently metric each column is judged with (built on first use: Evidently loads
    lazily). Its score is the column's ``DRIFT_TESTS`` entry on the column with NaN/inf dropped
    as ``ValueDrift`` drops them; its test fails (drift) unless ``score < threshold``. Unlike
    ``ValueDrift`` it builds no plotly widgets: those were ~75% of the run time
    (benchmarks/BENCHMARKS.md) and the compact HTML report does not use them.
    """
    from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
    from evidently.tests import lt

    class StattestDrift(SingleValueMetric):
        column: str
        method: str
        threshold: float

        def _default_tests_with_reference(self, context: Any) -> list[Any]:
            return [lt(self.threshold).bind_single(self.get_fingerprint())]

    class StattestDriftCalculation(SingleValueCalculation[StattestDrift]):
        def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
            m = self.metric
            kind = reference_data.column(m.column).type
            ref, cur = (_finite(d.column(m.column).data, m.column)
                        for d in (reference_data, current_data))
            return self.result(DRIFT_TESTS[m.method](ref, cur, kind, m.threshold))

        def display_name(self) -> str:
            return f"{self.metric.method} drift of {self.metric.column}"

    return StattestDrift


def run_drift(reference: pd.DataFrame, current: pd.DataFrame,
              tests: dict[str, Stattest]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One Evidently run: a ``drift_metric()`` per column with its stattest and threshold.

    Returns:
        (the snapshot as JSON-able dict, ``{column: {method, score, threshold, drift}}``) with
        each verdict read from Evidently's own per-column test.

    Raises:
        ValueError: Evidently gave no finite score for a column.
    """
    from evidently import DataDefinition, Dataset, Report

    definition = DataDefinition(
        numerical_columns=[c for c, t in tests.items() if t.kind == "numeric"],
        categorical_columns=[c for c, t in tests.items() if t.kind == "categorical"])
    cols, metric = list(tests), drift_metric()
    report = Report([metric(column=c, method=t.method, threshold=t.threshold)
                     for c, t in tests.items()], include_tests=True)
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[cols], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[cols], data_definition=definition))
    raw = json.loads(snapshot.json())
    scores = {m["config"]["column"]: m["value"] for m in raw["metrics"]}
    failed = {t["metric_config"]["params"]["column"] for t in raw["tests"]
              if t["status"] == "FAIL"}
    if bad := [c for c in cols if not isinstance(scores.get(c), float | int)
               or not math.isfinite(scores[c])]:
        raise ValueError(f"no finite drift score for {bad}")
    return raw, {c: {"method": t.method, "score": float(scores[c]), "threshold": t.threshold,
                     "drift": c in failed} for c, t in tests.items()}
