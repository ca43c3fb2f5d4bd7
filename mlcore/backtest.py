"""Rolling-origin backtest: how contender and champion *as configurations* would have done on
each of the last k labelled batches, each refitted (its recorded estimator, parameters, seed and
training window) on only the batches before that one and scored on it.

One holdout answers "which model is better now"; the backtest answers "has this configuration
been better batch after batch", which is what to trust when the newest slice is small or odd.
Off by default (``evaluation.backtest_batches``: 2 x k fits per evaluation); reported per batch on
the run card, never part of the promotion rule.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcore.model.estimators import recorded_window, refit_recorded
from mlcore.model.metrics import metric
from mlcore.model.targets import predict
from mlcore.problems import ProblemSpec

if TYPE_CHECKING:
    from mlcore.store.models import ModelVersion

MIN_FIT_ROWS = 50


def origins(train: pd.DataFrame, k: int) -> list[tuple[str, list[str]]]:
    """The last ``k`` batches of the training part that have a batch before them, each with the
    batches before it (by first event time)."""
    first = train.groupby("batch_id", sort=False)["event_timestamp"].min()
    order = [str(b) for b in first.sort_values(kind="stable").index]
    return [(b, order[:i]) for i, b in enumerate(order) if i][-k:] if k else []


def _refit_and_score(spec: ProblemSpec, mv: ModelVersion, fit: pd.DataFrame,
                     test: pd.DataFrame) -> tuple[float | None, str]:
    """The version's recorded configuration refitted on ``fit``, its metric on ``test``."""
    rec = mv.reproducibility or {}
    if "estimator" not in rec:
        return None, "no reproducibility record"
    kind = spec.target.kind
    target = rec.get("target", {"kind": "binary", "classes": ["0", "1"]})
    rows, _ = recorded_window(rec, fit)
    y = fit[spec.target.name].to_numpy()[rows]
    if len(y) < MIN_FIT_ROWS:
        return None, f"{len(y)} rows before this batch in its window"
    if kind != "regression" and len(np.unique(y)) < len(target["classes"]):
        return None, "a class has no row before this batch"
    model = refit_recorded(spec, rec, fit)
    value = metric(spec.metric_name, test[spec.target.name].to_numpy(),
                   predict(model, test[spec.feature_names]), kind)
    return (value if math.isfinite(value) else None), ""


def backtest(spec: ProblemSpec, train: pd.DataFrame,
             versions: dict[str, ModelVersion]) -> list[dict[str, Any]]:
    """Per origin batch (oldest first): rows fitted and scored, each role's metric (None with a
    note when it cannot be refitted there) and the oriented delta (positive: contender better).
    ``train``: the evaluated dataset's training part (every row before the holdout cut)."""
    out = []
    for batch, before in origins(train, spec.evaluation.backtest_batches):
        fit = train[train["batch_id"].isin(before)].reset_index(drop=True)
        test = train[train["batch_id"] == batch].reset_index(drop=True)
        row: dict[str, Any] = {"batch_id": batch, "fit_rows": len(fit), "rows": len(test)}
        for role, mv in versions.items():
            row[role], note = _refit_and_score(spec, mv, fit, test)
            row[f"{role}_version"] = mv.version
            if note:
                row[f"{role}_note"] = note
        new, old = row.get("contender"), row.get("champion")
        row["delta"] = None if new is None or old is None else spec.sign * (new - old)
        out.append(row)
    return out
