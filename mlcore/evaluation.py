"""Evaluation: contender vs champion on the same frozen holdout, a paired-bootstrap CI of the
metric delta, and a promotion decision with its reason (TFX-style floor + change threshold)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from mlcore.config import Settings
from mlcore.datasets import DatasetRef, load_part
from mlcore.problems import ProblemSpec
from mlcore.store.models import Evaluation
from mlcore.store.session import session_scope

METRICS = {
    "roc_auc": lambda y, p: float(roc_auc_score(y, p)),
    "accuracy": lambda y, p: float(accuracy_score(y, p >= 0.5)),
    "log_loss": lambda y, p: float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
}


def predict_proba(model: Any, X: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class."""
    return np.asarray(model.predict_proba(X)[:, 1], dtype="float64")


def compute_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every metric of ``METRICS`` on one prediction vector."""
    return {name: fn(y, p) for name, fn in METRICS.items()}


def weighted_metric(name: str, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    """``METRICS[name]`` of the rows repeated ``w`` times, without materializing the repeats."""
    if name == "accuracy":
        return float(np.average((p >= 0.5) == y, weights=w))
    if name == "log_loss":
        q = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-np.average(y * np.log(q) + (1 - y) * np.log(1 - q), weights=w))
    return _weighted_auc(_ranked(y, p), w)


def _ranked(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort once: (order, labels in score order, tie-group id of each sorted row)."""
    order = np.argsort(p, kind="mergesort")
    _, groups = np.unique(p[order], return_inverse=True)
    return order, y[order].astype("float64"), groups


def _weighted_auc(ranked: tuple[np.ndarray, np.ndarray, np.ndarray], w: np.ndarray) -> float:
    # Mann-Whitney with ties counted half: each positive beats the negatives in lower groups.
    order, ys, groups = ranked
    ws = w[order]
    pos = np.bincount(groups, weights=ws * ys)
    neg = np.bincount(groups, weights=ws * (1 - ys))
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def paired_bootstrap(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, metric: str,
                     samples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """CI of ``metric(new) - metric(old)``, resampling the same rows for both models.

    Each resample is a vector of row counts, so ROC AUC needs one sort per model, not one per
    resample (same numbers as indexing ``y[idx]``; about 30x faster on 70k rows).
    """
    rng, n = np.random.default_rng(seed), len(y)
    ranked = (_ranked(y, p_new), _ranked(y, p_old)) if metric == "roc_auc" else None
    deltas = np.empty(samples)
    for i in range(samples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype("float64")
        if ranked is not None:
            deltas[i] = _weighted_auc(ranked[0], w) - _weighted_auc(ranked[1], w)
        else:
            deltas[i] = weighted_metric(metric, y, p_new, w) - weighted_metric(metric, y, p_old, w)
    alpha = (1 - confidence) / 2
    return float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha))


@dataclass(frozen=True)
class PromotionDecision:
    """The blessing: promote or not, the numbers behind it and why."""

    promote: bool
    reason: str
    metric: str
    contender: float
    champion: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def decide(spec: ProblemSpec, contender: float, champion: float | None,
           ci: tuple[float, float] | None) -> PromotionDecision:
    """Floor first; with a champion, the improvement must clear the threshold and the CI.

    ``delta``/``ci`` are oriented so that positive always means "contender is better".
    """
    name, rule = spec.metric.name, spec.promotion
    sign = 1.0 if spec.metric.direction == "maximize" else -1.0
    floor_ok = sign * (contender - rule.min_metric) >= 0
    if not floor_ok:
        return PromotionDecision(False, f"{name} {contender:.4f} misses the floor "
                                 f"{rule.min_metric}", name, contender, champion, None, None, None)
    if champion is None or ci is None:
        return PromotionDecision(True, f"no champion yet; {name} {contender:.4f} clears the floor "
                                 f"{rule.min_metric}", name, contender, None, None, None, None)
    delta = sign * (contender - champion)
    low, high = ci
    if delta > rule.min_improvement and low > 0:
        why = (f"contender beats champion by {delta:+.4f} {name} (CI {low:+.4f}..{high:+.4f} "
               f"> 0, threshold {rule.min_improvement})")
        return PromotionDecision(True, why, name, contender, champion, delta, low, high)
    verdict = "worse than" if high < 0 else "too close to call against"
    why = (f"contender {verdict} champion: delta {delta:+.4f} {name}, CI {low:+.4f}..{high:+.4f}, "
           f"threshold {rule.min_improvement}; champion kept")
    return PromotionDecision(False, why, name, contender, champion, delta, low, high)


def timed_scores(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Scores and throughput (rows per second) of one pass over ``X``."""
    start = time.perf_counter()
    p = predict_proba(model, X)
    return p, len(X) / max(time.perf_counter() - start, 1e-9)


def compare(spec: ProblemSpec, y: np.ndarray, p_new: np.ndarray,
            p_old: np.ndarray | None) -> PromotionDecision:
    """Decide from two score vectors on the same holdout rows (``p_old`` None: no champion)."""
    name = spec.metric.name
    new = METRICS[name](y, p_new)
    if p_old is None:
        return decide(spec, new, None, None)
    low, high = paired_bootstrap(y, p_new, p_old, name, spec.promotion.bootstrap_samples,
                                 spec.promotion.confidence)
    sign = 1.0 if spec.metric.direction == "maximize" else -1.0
    ci = (low, high) if sign > 0 else (-high, -low)
    return decide(spec, new, METRICS[name](y, p_old), ci)


def evaluate_contender(spec: ProblemSpec, dataset: DatasetRef, contender: int,
                       settings: Settings) -> dict[str, Any]:
    """Score contender and current champion on the dataset's frozen holdout and record a decision.

    Returns:
        The decision plus ``evaluation_id``, ``contender_version``, ``champion_version``.
    """
    from mlcore.registry import alias_holder, get_version, load_model

    holdout = load_part(dataset.holdout_uri, dataset.holdout_hash)
    X, y = holdout[spec.feature_names], holdout[spec.target.name].to_numpy()
    p_new, new_rps = timed_scores(load_model(get_version(spec.name, contender, settings.db_url)), X)
    champ = alias_holder(spec.name, settings.db_url)
    p_old, old_rps = (None, None)
    if champ is not None:
        p_old, old_rps = timed_scores(load_model(get_version(spec.name, champ, settings.db_url)), X)
    decision = compare(spec, y, p_new, p_old)
    with session_scope(settings.db_url) as s:
        row = Evaluation(
            problem=spec.name, contender_version=contender, champion_version=champ,
            holdout_batch_ids=dataset.holdout_batches, holdout_hash=dataset.holdout_hash,
            holdout_rows=len(holdout), metric=decision.metric,
            contender_metrics={**compute_metrics(y, p_new), "rows_per_second": new_rps},
            champion_metrics=None if p_old is None else
            {**compute_metrics(y, p_old), "rows_per_second": old_rps},
            delta=decision.delta, ci_low=decision.ci_low, ci_high=decision.ci_high,
            thresholds=spec.promotion.model_dump(), promote=decision.promote,
            reason=decision.reason)
        s.add(row)
        s.flush()
        eval_id = row.id
    return {**decision.to_dict(), "evaluation_id": eval_id, "contender_version": contender,
            "champion_version": champ, "holdout_batches": dataset.holdout_batches}
