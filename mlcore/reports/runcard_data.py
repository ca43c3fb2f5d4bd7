"""Run card data: the JSON-able plot data of one model's outputs on a holdout, by target kind
(``binary`` ROC and precision-recall points, ``multiclass`` confusion matrix and per-class metrics,
``regression`` predicted-against-actual sample and residual histogram), bounded in size so the card
stays small. ``mlcore.reports.runcard`` renders it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlcore.model.metrics import ranked, weighted_auc

MAX_CLASSES = 30  # confusion matrix and per-class rows: the most frequent classes, rest "other"
MAX_SCATTER = 500  # regression: rows in the predicted-against-actual sample
RESIDUAL_BINS = 30


def _rounded(values: np.ndarray, digits: int = 5) -> list[float]:
    """Values as Python floats rounded to ``digits`` decimals (probabilities, rates)."""
    return [round(float(v), digits) for v in values]


def _significant(values: np.ndarray, digits: int = 6) -> list[float]:
    """Values as Python floats to ``digits`` significant digits (regression values, any scale)."""
    return [float(f"{float(v):.{digits}g}") for v in values]


def _spread(size: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices evenly spread over ``range(size)``, both ends kept."""
    return np.unique(np.linspace(0, size - 1, min(max_points, size)).round().astype(int))


def _usable(y: np.ndarray, p: np.ndarray) -> bool:
    """Whether labels and outputs are non-empty, finite and of matching length."""
    return (y.size > 0 and p.shape[:1] == y.shape and bool(np.all(np.isfinite(y)))
            and bool(np.all(np.isfinite(p))))


def roc_points(y: np.ndarray, p: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve of scores ``p`` against labels ``y``, downsampled for plotting.

    Args:
        y: Binary labels.
        p: Scores (higher means more likely positive).
        max_points: Most points returned (at least 2); the ends (0,0) and (1,1) are always kept.

    Returns:
        ``{"fpr": [...], "tpr": [...]}`` rounded to 5 decimals; both empty if ``y`` or ``p`` has
        a non-finite value or ``y`` has a single class.
    """
    from sklearn.metrics import roc_curve

    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 1 or not _usable(y, p) or np.unique(y).size < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, p)
    keep = _spread(fpr.size, max_points)
    return {"fpr": _rounded(fpr[keep]), "tpr": _rounded(tpr[keep])}


def pr_points(y: np.ndarray, p: np.ndarray, max_points: int = 200) -> dict[str, Any]:
    """Precision-recall curve of scores ``p`` against binary labels ``y``, downsampled.

    Returns:
        ``{"recall": [...], "precision": [...], "prevalence": float}``: points in order of
        increasing recall from (0, 1) (sklearn's convention) to the lowest threshold, 5
        decimals; ``prevalence`` (the share of positives) is the no-skill line. Empty lists and
        a None prevalence on non-finite values or a single class.
    """
    from sklearn.metrics import precision_recall_curve

    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 1 or not _usable(y, p) or np.unique(y).size < 2:
        return {"recall": [], "precision": [], "prevalence": None}
    precision, recall, _ = precision_recall_curve(y, p)
    precision, recall = precision[::-1], recall[::-1]
    keep = _spread(recall.size, max_points)
    return {"recall": _rounded(recall[keep]), "precision": _rounded(precision[keep]),
            "prevalence": round(float(np.mean(y == 1)), 5)}


def _shown_classes(support: np.ndarray) -> np.ndarray:
    """Class indices the card lists one by one: all, or the ``MAX_CLASSES - 1`` most frequent
    (ties by class order), in class order."""
    if support.size <= MAX_CLASSES:
        return np.arange(support.size)
    return np.sort(np.argsort(-support, kind="stable")[:MAX_CLASSES - 1])


def _class_row(name: str, tp: float, support: float, predicted: float,
               auc: float) -> dict[str, Any]:
    """Per-class precision, recall, F1, support and one-vs-rest ROC AUC (None if undefined)."""
    def ratio(num_: float, den: float) -> float | None:
        return round(float(num_ / den), 5) if den > 0 else None
    return {"class": name, "precision": ratio(tp, predicted), "recall": ratio(tp, support),
            "f1": ratio(2 * tp, support + predicted), "support": int(support),
            "roc_auc": round(float(auc), 5) if math.isfinite(auc) else None}


def _multiclass_curves(y: np.ndarray, p: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Confusion matrix (rows actual, columns argmax prediction; classes beyond ``MAX_CLASSES``
    summed into "other") and per-class metrics of the listed classes."""

    empty: dict[str, Any] = {"labels": [], "confusion": [], "per_class": [], "omitted": 0}
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 2 or p.shape[1] < 1 or not _usable(y, p):
        return empty
    k, yi = p.shape[1], y.astype(np.int64)
    if np.any(yi != y) or yi.min() < 0 or yi.max() >= k:
        return empty
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    pred = np.argmax(p, axis=1)
    support, predicted = np.bincount(yi, minlength=k), np.bincount(pred, minlength=k)
    tp = np.bincount(yi[yi == pred], minlength=k)
    shown = _shown_classes(support)
    group = np.full(k, shown.size)
    group[shown] = np.arange(shown.size)
    g = shown.size + int(shown.size < k)
    confusion = np.bincount(group[yi] * g + group[pred], minlength=g * g).reshape(g, g)
    ones = np.ones(y.size)
    rows = [_class_row(names[c], tp[c], support[c], predicted[c],
                       weighted_auc(ranked((yi == c).astype(float), p[:, c]), ones))
            for c in shown]
    labels = [names[c] for c in shown] + [f"other ({k - shown.size} classes)"] * (g > shown.size)
    return {"labels": labels, "confusion": confusion.tolist(), "per_class": rows,
            "omitted": k - int(shown.size)}


def _residual_histogram(residuals: np.ndarray) -> dict[str, Any]:
    """Histogram of the residuals over their range, cut at a quarter of the 0.5-99.5% range
    beyond it on either side so that far outliers do not squash the plot: the ``clipped`` rows
    beyond the cut are counted in the end bins."""
    lo, hi = np.quantile(residuals, [0.005, 0.995])
    lo, hi = (max(residuals.min(), lo - (hi - lo) / 4), min(residuals.max(), hi + (hi - lo) / 4))
    clipped = int(np.count_nonzero((residuals < lo) | (residuals > hi)))
    counts, edges = np.histogram(np.clip(residuals, lo, hi), bins=RESIDUAL_BINS)
    return {"edges": _significant(edges, 7), "counts": counts.tolist(), "clipped": clipped}


def _regression_curves(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """A deterministic sample of (actual, predicted) pairs (the same rows for every model of a
    holdout) and the histogram of all residuals (actual - predicted)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 1 or not _usable(y, p):
        return {"scatter": {"actual": [], "predicted": []},
                "residuals": {"edges": [], "counts": [], "clipped": 0}}
    rows = np.arange(y.size)
    if y.size > MAX_SCATTER:
        rows = np.sort(np.random.default_rng(0).choice(y.size, MAX_SCATTER, replace=False))
    return {"scatter": {"actual": _significant(y[rows]), "predicted": _significant(p[rows])},
            "residuals": _residual_histogram(y - p)}


def model_curves(kind: str, y: np.ndarray, p: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The JSON-able plot data of one model's outputs ``p`` on encoded labels ``y``.

    Args:
        kind: ``binary``, ``multiclass`` or ``regression`` (labels encoded as in
            ``mlcore.data.target_coding``, outputs as ``mlcore.model.targets.predict``).
        y: Encoded labels (binary 0/1, multiclass class index, regression value).
        p: Outputs: P(positive) (n,); class probabilities (n, k); predicted values (n,).
        classes: Class names in code order (labels of the multiclass tables; else unused).

    Returns:
        binary ``{"roc": roc_points, "pr": pr_points}``; multiclass ``{"labels", "confusion",
        "per_class", "omitted"}`` (rows/columns named by ``labels``; per-class ``class``,
        ``precision``, ``recall``, ``f1``, ``support``, ``roc_auc``); regression ``{"scatter":
        {"actual", "predicted"}, "residuals": {"edges", "counts", "clipped"}}``. Values are
        rounded; non-finite inputs give empty lists.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "binary":
        return {"roc": roc_points(y, p), "pr": pr_points(y, p)}
    if kind == "multiclass":
        return _multiclass_curves(y, p, classes)
    if kind == "regression":
        return _regression_curves(y, p)
    raise ValueError(f"unknown target kind {kind!r}")
