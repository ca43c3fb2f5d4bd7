"""Model outputs of every target kind, as every stage reads them, and what a fitted model
predicts (recorded on it by ``mark``). Labels are in ``mlcore.data.target_coding``' encoding.

Outputs (``predict``): ``binary`` P(positive), shape (n,); ``multiclass`` one probability per
class in class-list order, shape (n, k); ``regression`` the predicted value, shape (n,).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlcore.data.target_coding import TargetCoder

TARGET_ATTR = "batchloop_target_"  # set on a fitted pipeline: {"kind", "classes"}


def mark(model: Any, kind: str, classes: list[str]) -> Any:
    """Record on a fitted model what it predicts (kind and class names), for ``predict``."""
    setattr(model, TARGET_ATTR, {"kind": kind, "classes": list(classes)})
    return model


def coder_for_codes(kind: str, y: np.ndarray) -> TargetCoder:
    """A stand-in coder for encoded labels alone (class names are the codes)."""
    if kind == "multiclass":
        return TargetCoder(kind, tuple(range(int(np.nanmax(y)) + 1 if len(y) else 2)))
    return TargetCoder(kind, None)


def model_target(model: Any) -> dict[str, Any]:
    """What ``mark`` recorded (models trained before target kinds: binary)."""
    return getattr(model, TARGET_ATTR, {"kind": "binary", "classes": ["0", "1"]})


def predict(model: Any, X: pd.DataFrame) -> np.ndarray:
    """The model's outputs in the encoding above (float64).

    A classifier that never saw some class in training gets probability 0 for it: columns are
    placed by the model's ``classes_`` (the encoded labels).
    """
    target = model_target(model)
    if target["kind"] == "regression":
        return np.asarray(model.predict(X), dtype="float64")
    proba = np.asarray(model.predict_proba(X), dtype="float64")
    seen = np.asarray(model.classes_).astype("int64")
    if target["kind"] == "binary":
        where = np.flatnonzero(seen == 1)
        return proba[:, where[0]] if len(where) else np.zeros(len(X))
    k = len(target["classes"])
    if proba.shape[1] == k:
        return proba
    out = np.zeros((len(proba), k))
    out[:, seen] = proba
    return out
