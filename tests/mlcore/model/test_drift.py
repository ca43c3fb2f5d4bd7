"""Drift tests as a registry (``mlcore.model.drift``): every column gets the test of its kind,
and a test added to ``DRIFT_TESTS`` is what ``run_drift`` scores a column with (Evidently's
report and per-column verdict around it). The registered tests' numbers against scipy and
stock Evidently are in tests/mlcore/test_monitoring.py."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlcore.model.drift import (
    DRIFT_TESTS,
    PREDICTION,
    TEST_OF_KIND,
    Stattest,
    run_drift,
    stattests,
)


def test_every_column_gets_a_registered_test_of_its_kind(spec):
    tests = stattests(spec)
    assert set(tests) == {*spec.feature_names, PREDICTION}
    assert all(t.method == TEST_OF_KIND[t.kind] and t.method in DRIFT_TESTS
               for t in tests.values())
    assert tests[PREDICTION] == Stattest("numeric", "wasserstein", spec.drift.prediction_threshold)


def test_a_new_drift_test_is_one_registry_entry(monkeypatch):
    def mean_shift(reference: pd.Series, current: pd.Series, kind: str, threshold: float) -> float:
        return abs(float(current.mean()) - float(reference.mean()))

    monkeypatch.setitem(DRIFT_TESTS, "mean_shift", mean_shift)
    reference = pd.DataFrame({"x": np.arange(100.0), "y": np.arange(100.0)})
    current = reference.assign(x=reference["x"] + 10, y=reference["y"] + 1)
    tests = {c: Stattest("numeric", "mean_shift", 5.0) for c in ("x", "y")}
    _, columns = run_drift(reference, current, tests)
    assert columns == {
        "x": {"method": "mean_shift", "score": 10.0, "threshold": 5.0, "drift": True},
        "y": {"method": "mean_shift", "score": 1.0, "threshold": 5.0, "drift": False}}
