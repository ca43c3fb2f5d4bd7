"""Metrics of every target kind, each with optional row weights (the paired bootstrap resamples
by weighting rows with their draw counts, never by copying them).

Inputs: ``y`` the labels as ``mlcore.data.target_coding`` encodes them; ``p`` the model outputs
as ``mlcore.model.targets.predict`` gives them: P(positive) for binary, an (n, k) probability
matrix for multiclass, the predicted value for regression.
Directions live with the names in ``mlcore.spec_rules.METRICS_BY_KIND``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mlcore.spec_rules import METRICS_BY_KIND

EPS = 1e-7
Weights = np.ndarray | None


def _w(y: np.ndarray, w: Weights) -> np.ndarray:
    return np.ones(len(y)) if w is None else w


# ------------------------------------------------------------------------------------ ranking


def ranked(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort once: (order, labels in score order, tie-group id of each sorted row)."""
    order = np.argsort(p, kind="mergesort")
    _, groups = np.unique(p[order], return_inverse=True)
    return order, y[order].astype("float64"), groups


def weighted_auc(rank: tuple[np.ndarray, np.ndarray, np.ndarray], w: np.ndarray) -> float:
    """Mann-Whitney with ties counted half: each positive beats the negatives in lower groups."""
    order, ys, groups = rank
    ws = w[order]
    pos = np.bincount(groups, weights=ws * ys)
    neg = np.bincount(groups, weights=ws * (1 - ys))
    below = np.cumsum(neg) - neg
    denom = pos.sum() * neg.sum()
    return float((pos * (below + 0.5 * neg)).sum() / denom) if denom > 0 else math.nan


# ------------------------------------------------------------------------------------- binary


def _roc_auc(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    return weighted_auc(ranked(y, p), _w(y, w))


def _pr_auc(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    # average precision: sum over thresholds of (recall step) x precision, ties grouped
    order = np.argsort(-p, kind="mergesort")
    ws, ys, ps = _w(y, w)[order], y[order].astype("float64"), p[order]
    tp, fp = np.cumsum(ws * ys), np.cumsum(ws * (1 - ys))
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # end of each tie group
    tp, fp = tp[last], fp[last]
    if tp[-1] <= 0:
        return math.nan
    precision = tp / np.maximum(tp + fp, 1e-300)
    recall_step = np.diff(np.r_[0.0, tp / tp[-1]])
    return float((recall_step * precision).sum())


def _binary_log_loss(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.average(y * np.log(q) + (1 - y) * np.log(1 - q), weights=_w(y, w)))


def _brier(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    return float(np.average((p - y) ** 2, weights=_w(y, w)))


def _accuracy(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    pred = np.argmax(p, axis=1) if p.ndim == 2 else (p >= 0.5)
    return float(np.average(pred == y, weights=_w(y, w)))


def _f1(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    ws, pred, truth = _w(y, w), p >= 0.5, y == 1
    tp, fp, fn = ws[pred & truth].sum(), ws[pred & ~truth].sum(), ws[~pred & truth].sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else math.nan


# --------------------------------------------------------------------------------- multiclass


def _mc_log_loss(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    rows = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    picked = np.clip(rows[np.arange(len(y)), y.astype("int64")], EPS, 1 - EPS)
    return float(-np.average(np.log(picked), weights=_w(y, w)))


def _f1_macro(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    k, ws = p.shape[1], _w(y, w)
    yi, pred = y.astype("int64"), np.argmax(p, axis=1)
    hit = yi == pred
    tp = np.bincount(yi[hit], weights=ws[hit], minlength=k)
    support = np.bincount(yi, weights=ws, minlength=k)
    predicted = np.bincount(pred, weights=ws, minlength=k)
    present = (support + predicted) > 0  # labels in y or in the predictions, as sklearn
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean()) if present.any() else math.nan


def _roc_auc_ovr(y: np.ndarray, p: np.ndarray, w: Weights,
                 ranks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None) -> float:
    """Macro average of one-vs-rest ROC AUCs over the classes present with both outcomes."""
    ws = _w(y, w)
    ranks = ranks or [ranked((y == c).astype("float64"), p[:, c]) for c in range(p.shape[1])]
    aucs = [weighted_auc(r, ws) for r in ranks]
    aucs = [a for a in aucs if math.isfinite(a)]
    return float(np.mean(aucs)) if aucs else math.nan


# --------------------------------------------------------------------------------- regression


def _rmse(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    return float(math.sqrt(np.average((p - y) ** 2, weights=_w(y, w))))


def _mae(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    return float(np.average(np.abs(p - y), weights=_w(y, w)))


def _r2(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    ws = _w(y, w)
    mean = np.average(y, weights=ws)
    total = float((ws * (y - mean) ** 2).sum())
    return 1 - float((ws * (y - p) ** 2).sum()) / total if total > 0 else math.nan


def _mape(y: np.ndarray, p: np.ndarray, w: Weights) -> float:
    eps = np.finfo("float64").eps
    return float(np.average(np.abs(p - y) / np.maximum(np.abs(y), eps), weights=_w(y, w)))


FUNCS: dict[str, dict[str, Callable[[np.ndarray, np.ndarray, Weights], float]]] = {
    "binary": {"roc_auc": _roc_auc, "pr_auc": _pr_auc, "log_loss": _binary_log_loss,
               "brier": _brier, "accuracy": _accuracy, "f1": _f1},
    "multiclass": {"log_loss": _mc_log_loss, "accuracy": _accuracy, "f1_macro": _f1_macro,
                   "roc_auc_ovr": _roc_auc_ovr},
    "regression": {"rmse": _rmse, "mae": _mae, "r2": _r2, "mape": _mape},
}
assert {k: set(v) for k, v in FUNCS.items()} == {k: set(v) for k, v in METRICS_BY_KIND.items()}
_NEEDS_TWO_CLASSES = {"roc_auc", "pr_auc", "roc_auc_ovr"}


def metric(name: str, y: np.ndarray, p: np.ndarray, kind: str = "binary",
           w: Weights = None) -> float:
    """``name`` of the ``kind``, or NaN when it is undefined (no rows, non-finite outputs, a
    single class for a ranking metric)."""
    y = np.asarray(y, dtype="float64")
    p = np.asarray(p, dtype="float64")
    if len(y) == 0 or not np.isfinite(p).all() or not np.isfinite(y).all():
        return math.nan
    if name in _NEEDS_TWO_CLASSES and len(np.unique(y)) < 2:
        return math.nan
    return FUNCS[kind][name](y, p, w)


def compute_metrics(y: np.ndarray, p: np.ndarray, kind: str = "binary") -> dict[str, float]:
    """Every metric of the kind on one output vector (NaN where undefined)."""
    return {name: metric(name, y, p, kind) for name in FUNCS[kind]}


def paired_bootstrap(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, metric_name: str,
                     samples: int, confidence: float, seed: int = 0,
                     kind: str = "binary") -> tuple[float, float]:
    """CI of ``metric(new) - metric(old)``, resampling the same rows for both models.

    Each resample is a vector of row counts (weights), so ranking metrics sort once per model,
    not once per resample (same numbers as indexing ``y[idx]``; ~30x faster on 70k rows).
    """
    y = np.asarray(y, dtype="float64")
    rng, n = np.random.default_rng(seed), len(y)
    fn: Callable[[np.ndarray], float]
    if kind == "binary" and metric_name == "roc_auc":
        r_new, r_old = ranked(y, p_new), ranked(y, p_old)

        def fn(w: np.ndarray) -> float:
            return weighted_auc(r_new, w) - weighted_auc(r_old, w)
    elif metric_name == "roc_auc_ovr":
        k = p_new.shape[1]
        rn = [ranked((y == c).astype("float64"), p_new[:, c]) for c in range(k)]
        ro = [ranked((y == c).astype("float64"), p_old[:, c]) for c in range(k)]

        def fn(w: np.ndarray) -> float:
            return _roc_auc_ovr(y, p_new, w, rn) - _roc_auc_ovr(y, p_old, w, ro)
    else:
        f = FUNCS[kind][metric_name]

        def fn(w: np.ndarray) -> float:
            return f(y, p_new, w) - f(y, p_old, w)
    deltas = np.empty(samples)
    for i in range(samples):
        deltas[i] = fn(np.bincount(rng.integers(0, n, n), minlength=n).astype("float64"))
    alpha = (1 - confidence) / 2
    return float(np.nanquantile(deltas, alpha)), float(np.nanquantile(deltas, 1 - alpha))
