"""The performance estimator alone (``mlcore.model.performance``): every metric of each kind
estimated within its interval, on synthetic data with a known label relation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlcore.model.metrics import metric
from mlcore.model.performance import PerformanceEstimator


def synthetic(kind: str, n: int, rng) -> SimpleNamespace:
    """Features ``x``, labels drawn from the true relation, and a miscalibrated model's outputs
    (calibration has work to do); regression noise grows with |x| (the loss model's job)."""
    x = rng.normal(size=n)
    X = pd.DataFrame({"x": x})
    if kind == "binary":
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * x))).astype("float64")
        return SimpleNamespace(X=X, y=y, p=1 / (1 + np.exp(-(1.3 * x + 0.4))))
    if kind == "multiclass":
        logits = np.outer(x, [-2.0, 0.0, 2.0]) + [0.0, 0.5, 0.0]
        truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = (rng.random((n, 1)) > truth.cumsum(axis=1)).sum(axis=1).astype("float64")
        model = np.exp(0.7 * logits)
        return SimpleNamespace(X=X, y=y, p=model / model.sum(axis=1, keepdims=True))
    y = 3 * x + rng.normal(size=n) * (0.5 + np.abs(x)) + 10
    return SimpleNamespace(X=X, y=y, p=3 * x + 10.2)


CASES = [("binary", m) for m in ("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "f1")] \
    + [("multiclass", m) for m in ("log_loss", "accuracy", "f1_macro", "roc_auc_ovr")] \
    + [("regression", m) for m in ("rmse", "mae", "mape")]


@pytest.mark.parametrize("kind, name", CASES)
def test_every_metric_of_its_kind_is_estimated_within_its_interval(kind, name):
    rng = np.random.default_rng(3)
    ref, new = synthetic(kind, 5000, rng), synthetic(kind, 3000, rng)
    estimator = PerformanceEstimator(kind, name, numeric=["x"], categorical=[],
                                     vocabularies=[]).fit(ref.X, ref.y, ref.p)
    value = estimator.estimate(new.X, new.p)
    low, high, se = estimator.interval(value, len(new.y))
    realized = metric(name, new.y, new.p, kind)
    assert low <= realized <= high, (value, realized, se)
