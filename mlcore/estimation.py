"""Performance before labels arrive: each scored batch's metric estimated from the model's own
outputs, with a confidence interval, stored beside the realized value once labels mature.

Classifiers: confidence-based performance estimation (CBPE, as NannyML's). The model's scores are
calibrated (isotonic regression; one-vs-rest for multiclass, rows renormalized) on a reference
set the model never trained on: the holdout of its own dataset, named with its hash in the
version's reproducibility record. A batch's calibrated probabilities are its expected labels:
each row counts once as every class, weighted by that class's calibrated probability, and the
metric of those weighted rows is the metric of the expected confusion matrix (ROC AUC: CBPE's
expected TPR/FPR curve, here as a Mann-Whitney statistic over the weighted pairs; log loss,
Brier and accuracy: their exact expectation).

Regression: direct loss estimation (DLE, as NannyML's). A small seeded HistGradientBoosting
model learns on the reference set each row's loss (squared error for rmse, absolute error for
mae, absolute percentage error for mape) from its features and the model's prediction; the
batch's metric comes from its predicted losses. r2 is not estimated (see ``NOT_ESTIMABLE``).

Interval: the metric's sampling error, CBPE-style. The standard deviation of the realized metric
over ``RESAMPLES`` seeded bootstrap samples of the reference set (true labels) is scaled from the
reference's size to the batch's by 1/sqrt(rows) (the batch's sampling noise); the calibration (or
loss model) learnt from the reference carries that set's own sampling error, so the two are added
in quadrature: SE = sd_1 * sqrt(1/rows + 1/reference_rows), where sd_1 is the one-row standard
deviation. The interval is estimate +- z * SE (normal, z of ``CONFIDENCE``). It does not cover a
change of the label relation itself (concept drift), which no estimate without labels can see.

The fitted estimator is cached per model version under ``<home>/estimators/problem=<p>/``,
named by a hash of everything it depends on (artifact SHA-256, holdout hash, metric, method
version) and checked against the SHA-256 of its bytes before it is unpickled; a damaged cache is
refitted. Scoring never fails because of an estimate: ``estimate_scored`` stores a "not
estimated" row with the reason instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sqlalchemy import delete, select, update

from mlcore.config import Settings
from mlcore.datasets import load_part
from mlcore.model.metrics import metric
from mlcore.model.preprocessing import CategoryCodes
from mlcore.model.targets import predict
from mlcore.problems import ProblemSpec
from mlcore.store.fencing import TryNotCurrent
from mlcore.store.models import Batch, ModelVersion, PerformanceEstimate, PerformanceReport, utcnow
from mlcore.store.session import session_scope

log = logging.getLogger(__name__)

METHOD_VERSION = "3"  # part of the cache key: a change of the method refits every estimator
CONFIDENCE = 0.95
RESAMPLES = 200  # bootstrap samples of the reference set for the sampling error
SEED = 0
MIN_REFERENCE_ROWS = 100
MAX_EXPANDED_ROWS = 4_000_000  # rows x classes above this: a seeded sample of the batch's rows
DLE_LOSSES = {"rmse": "squared", "mae": "absolute", "mape": "percentage"}
NOT_ESTIMABLE = {"r2": "R2 needs the variance of the batch's true values, which the model's "
                       "predictions do not give"}
UNIT_METRICS = {"roc_auc", "pr_auc", "brier", "accuracy", "f1", "f1_macro", "roc_auc_ovr"}


class NotEstimated(Exception):
    """Why a batch's metric cannot be estimated (the message is stored as the reason)."""


@dataclass(frozen=True)
class Estimate:
    """One model's estimated metric on one batch (``estimate`` None: see ``reason``)."""

    problem: str
    batch_id: str
    model_version: int
    role: str
    metric: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    rows: int
    method: str  # cbpe | dle | none
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


# --- the estimator -------------------------------------------------------------------------------

def expected_metric(name: str, kind: str, outputs: np.ndarray, calibrated: np.ndarray) -> float:
    """The metric of the expected labels: each row once per class, weighted by the calibrated
    probability of that class (binary: P(positive) and 1 - P(positive))."""
    n = len(outputs)
    if kind == "binary":
        y = np.r_[np.ones(n), np.zeros(n)]
        return metric(name, y, np.r_[outputs, outputs], kind, np.r_[calibrated, 1 - calibrated])
    k = outputs.shape[1]
    y = np.repeat(np.arange(k, dtype="float64"), n)  # block j: every row labelled j ...
    weights = calibrated.T.reshape(-1)  # ... weighted by its calibrated P(j)
    return metric(name, y, np.tile(outputs, (k, 1)), kind, weights)


def _losses(loss: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    error = np.abs(p - y)
    if loss == "squared":
        return error ** 2
    if loss == "percentage":
        return error / np.maximum(np.abs(y), np.finfo("float64").eps)
    return error


def centered_isotonic(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of centred isotonic regression (Oron & Flournoy, 2017): the isotonic fit's pooled
    blocks, each placed at the mean score of its rows and joined linearly (flat beyond the
    ends). Plain isotonic calibration gives every row of a block the same probability, which
    erases the ranking inside the block; the centred curve keeps it increasing between knots.
    Census, full size, 2016-2018 realized minus estimated ROC AUC: plain -0.0012, +0.0032,
    +0.0030; centred -0.0019, +0.0024, +0.0022."""
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        scores, truth).predict(scores)
    values, block = np.unique(fitted, return_inverse=True)
    centers = np.bincount(block, weights=scores) / np.bincount(block)
    return centers, values


class PerformanceEstimator(BaseEstimator):
    """CBPE (classifiers) or DLE (regression) fitted on a reference set the model never saw.

    Args:
        kind: binary | multiclass | regression.
        metric: the metric to estimate (``mlcore.model.metrics``' names).
        numeric, categorical, vocabularies: the model's feature columns (DLE's loss model).
        resamples, seed: the bootstrap of the sampling error.
    """

    def __init__(self, kind: str = "binary", metric: str = "roc_auc",
                 numeric: list[str] | None = None, categorical: list[str] | None = None,
                 vocabularies: list[list[Any]] | None = None, resamples: int = RESAMPLES,
                 seed: int = SEED) -> None:
        self.kind = kind
        self.metric = metric
        self.numeric = numeric
        self.categorical = categorical
        self.vocabularies = vocabularies
        self.resamples = resamples
        self.seed = seed

    def fit(self, X: pd.DataFrame, y: np.ndarray, outputs: np.ndarray) -> PerformanceEstimator:
        """Calibrate the outputs (CBPE) or learn the losses (DLE) on reference rows ``X`` with
        their encoded labels ``y`` and the model's ``outputs``; measure the sampling error."""
        y = np.asarray(y, dtype="float64")
        if self.kind == "regression":
            from sklearn.ensemble import HistGradientBoostingRegressor

            self.loss_model_ = HistGradientBoostingRegressor(
                max_iter=100, min_samples_leaf=20, early_stopping=False,
                random_state=self.seed).fit(self._loss_features(X, outputs),
                                            _losses(DLE_LOSSES[self.metric], y, outputs))
        else:
            columns = [outputs] if self.kind == "binary" else list(outputs.T)
            truths = [y] if self.kind == "binary" else [
                (y == j).astype("float64") for j in range(outputs.shape[1])]
            self.knots_ = [centered_isotonic(col, truth)
                           for col, truth in zip(columns, truths, strict=True)]
        self.reference_rows_ = len(y)
        self.reference_metric_ = metric(self.metric, y, outputs, self.kind)
        self.unit_sd_ = self._sampling_sd(y, outputs) * math.sqrt(len(y))
        return self

    def _sampling_sd(self, y: np.ndarray, outputs: np.ndarray) -> float:
        rng, m = np.random.default_rng(self.seed), len(y)
        values = [metric(self.metric, y, outputs, self.kind,
                         np.bincount(rng.integers(0, m, m), minlength=m).astype("float64"))
                  for _ in range(self.resamples)]
        return float(np.nanstd(values, ddof=1))

    def _loss_features(self, X: pd.DataFrame, outputs: np.ndarray) -> np.ndarray:
        numeric, categorical = self.numeric or [], self.categorical or []
        parts = [X[numeric].apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64")]
        if categorical:
            parts.append(CategoryCodes(self.vocabularies).transform(X[categorical]))
        return np.column_stack([*parts, outputs])

    def calibrate(self, outputs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: P(positive), or rows of per-class probabilities."""
        if self.kind == "binary":
            return np.interp(outputs, *self.knots_[0])
        cal = np.column_stack([np.interp(outputs[:, j], *knots)
                               for j, knots in enumerate(self.knots_)])
        total = cal.sum(axis=1, keepdims=True)
        return np.where(total > 0, cal / np.where(total > 0, total, 1.0), outputs)

    def estimate(self, X: pd.DataFrame, outputs: np.ndarray) -> float:
        """The estimated metric of a batch (features ``X``, the model's ``outputs``)."""
        if self.kind == "regression":
            losses = np.clip(self.loss_model_.predict(self._loss_features(X, outputs)), 0, None)
            mean = float(np.mean(losses))
            return math.sqrt(mean) if self.metric == "rmse" else mean
        width = 1 if outputs.ndim == 1 else outputs.shape[1]
        if len(outputs) * width * 2 > MAX_EXPANDED_ROWS:  # the mean of a large sample
            keep = np.random.default_rng(self.seed).choice(
                len(outputs), MAX_EXPANDED_ROWS // (2 * width), replace=False)
            outputs = outputs[np.sort(keep)]
        return expected_metric(self.metric, self.kind, outputs, self.calibrate(outputs))

    def interval(self, value: float, rows: int) -> tuple[float, float, float]:
        """(low, high, standard error) of a batch of ``rows`` rows around ``value``: the
        batch's sampling error and the calibration's own (the reference set's sampling error
        at its size), added in quadrature."""
        se = self.unit_sd_ * math.sqrt(1 / max(rows, 1) + 1 / self.reference_rows_)
        z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
        low, high = max(value - z * se, 0.0), value + z * se
        return low, min(high, 1.0) if self.metric in UNIT_METRICS else high, se


# --- fitting on the model's own holdout, cached --------------------------------------------------

def _dataset_record(mv: ModelVersion) -> dict[str, Any]:
    record = (mv.reproducibility or {}).get("dataset") or {}
    if not record.get("holdout_uri") or not record.get("holdout_hash"):
        raise NotEstimated(f"v{mv.version} has no dataset record with a holdout (holdout_uri, "
                           "holdout_hash): no reference set the model did not train on")
    return dict(record)


def _reference(spec: ProblemSpec, mv: ModelVersion, record: dict[str, Any]) -> pd.DataFrame:
    path = Path(record["holdout_uri"])
    if not path.is_file():
        raise NotEstimated(f"v{mv.version}'s reference set (its holdout {path}) is gone")
    try:
        frame = load_part(str(path), record["holdout_hash"])
    except (OSError, ValueError) as exc:
        raise NotEstimated(f"v{mv.version}'s reference set cannot be used: {exc}") from exc
    if len(frame) < MIN_REFERENCE_ROWS:
        raise NotEstimated(f"v{mv.version}'s reference set has {len(frame)} rows, fewer than "
                           f"{MIN_REFERENCE_ROWS}")
    y = frame[spec.target.name].to_numpy(dtype="float64")
    if spec.target.kind != "regression" and len(np.unique(y)) < 2:
        raise NotEstimated(f"v{mv.version}'s reference set holds a single class: the scores "
                           "cannot be calibrated")
    return frame


def cache_key(spec: ProblemSpec, mv: ModelVersion, record: dict[str, Any]) -> str:
    """What a fitted estimator depends on, hashed: it names the cached file."""
    inputs = {"artifact": mv.artifact_sha256, "holdout": record["holdout_hash"],
              "kind": spec.target.kind, "metric": spec.metric.name, "method": METHOD_VERSION,
              "resamples": RESAMPLES, "seed": SEED, "features": spec.feature_names}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def cache_path(spec: ProblemSpec, mv: ModelVersion, key: str, settings: Settings) -> Path:
    """``<home>/estimators/problem=<p>/version=<v>/<key>.joblib`` (its SHA-256 beside it)."""
    return settings.partition("estimators", spec.name) / f"version={mv.version}" / f"{key}.joblib"


def _load_cached(path: Path) -> PerformanceEstimator | None:
    import joblib

    digest = path.with_suffix(".sha256")
    if not (path.is_file() and digest.is_file()):
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest.read_text().strip():
        log.warning("estimator cache %s does not match its SHA-256: refitting it", path)
        return None
    loaded = joblib.load(io.BytesIO(data))
    return loaded if isinstance(loaded, PerformanceEstimator) else None


def _save_cached(path: Path, estimator: PerformanceEstimator) -> None:
    import joblib

    from mlcore.reports.runcard import write_atomic

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    write_atomic(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())


def fitted_estimator(spec: ProblemSpec, mv: ModelVersion, model: Any,
                     settings: Settings) -> tuple[PerformanceEstimator, str]:
    """The version's estimator (and its cache key): from the cache, or fitted on its holdout.

    Raises:
        NotEstimated: no usable reference set (record, file or classes missing).
    """

    record = _dataset_record(mv)
    key = cache_key(spec, mv, record)
    path = cache_path(spec, mv, key, settings)
    cached = _load_cached(path)
    if cached is not None:
        return cached, key
    reference = _reference(spec, mv, record)
    X = reference[spec.feature_names]
    estimator = PerformanceEstimator(
        spec.target.kind, spec.metric.name, spec.numeric, spec.categorical,
        [spec.vocabulary(c) for c in spec.categorical]).fit(
        X, reference[spec.target.name].to_numpy(), predict(model, X))
    _save_cached(path, estimator)
    return estimator, key


# --- one batch -----------------------------------------------------------------------------------

def _method(spec: ProblemSpec) -> str:
    return "dle" if spec.target.kind == "regression" else "cbpe"


def not_estimated(spec: ProblemSpec, batch_id: str, version: int, role: str, rows: int,
                  why: str) -> Estimate:
    """A stored "not estimated" answer, with its reason."""
    return Estimate(spec.name, batch_id, version, role, spec.metric.name, None, None, None, rows,
                    "none", f"not estimated: {why}")


def estimate_batch(spec: ProblemSpec, batch_id: str, mv: ModelVersion, role: str, model: Any,
                   frame: pd.DataFrame, outputs: np.ndarray, settings: Settings) -> Estimate:
    """The spec's metric on a scored batch, estimated from the model's ``outputs`` (rows of
    ``frame``), with its interval; "not estimated" with the reason when it cannot be."""
    name, rows = spec.metric.name, len(frame)
    if name in NOT_ESTIMABLE:
        return not_estimated(spec, batch_id, mv.version, role, rows, NOT_ESTIMABLE[name])
    if spec.target.kind == "regression" and name not in DLE_LOSSES:
        return not_estimated(spec, batch_id, mv.version, role, rows, f"no loss is defined for "
                             f"{name} (direct loss estimation knows {', '.join(DLE_LOSSES)})")
    if not rows:
        return not_estimated(spec, batch_id, mv.version, role, rows, "the batch has no rows")
    try:
        estimator, key = fitted_estimator(spec, mv, model, settings)
    except NotEstimated as exc:
        return not_estimated(spec, batch_id, mv.version, role, rows, str(exc))
    value = estimator.estimate(frame[spec.feature_names], outputs)
    if not math.isfinite(value):
        return not_estimated(spec, batch_id, mv.version, role, rows,
                             "the estimate is undefined (non-finite model outputs)")
    low, high, se = estimator.interval(value, rows)
    details = {"reference_rows": estimator.reference_rows_,
               "reference_metric": estimator.reference_metric_, "standard_error": se,
               "confidence": CONFIDENCE, "cache_key": key,
               "interval": "estimate +- z * SE, SE = sd_1 * sqrt(1/rows + 1/reference_rows), "
               f"sd_1 from {RESAMPLES} bootstrap samples of the reference"}
    return Estimate(spec.name, batch_id, mv.version, role, name, value, low, high, rows,
                    _method(spec), None, details)


def record_estimate(result: Estimate, url: str) -> None:
    """Store (replace) the estimate of the batch, version and metric; a realized value already
    measured for them (labels first) is copied beside it."""
    keys = (PerformanceEstimate.problem == result.problem,
            PerformanceEstimate.batch_id == result.batch_id,
            PerformanceEstimate.model_version == result.model_version,
            PerformanceEstimate.metric == result.metric)
    with session_scope(url) as s:
        s.execute(delete(PerformanceEstimate).where(*keys))
        realized = s.execute(select(PerformanceReport.value, PerformanceReport.created_at).where(
            PerformanceReport.problem == result.problem,
            PerformanceReport.batch_id == result.batch_id,
            PerformanceReport.model_version == result.model_version,
            PerformanceReport.metric == result.metric,
            PerformanceReport.value.is_not(None))).first()
        s.add(PerformanceEstimate(
            problem=result.problem, batch_id=result.batch_id, model_version=result.model_version,
            role=result.role, metric=result.metric, estimate=result.estimate,
            ci_low=result.ci_low, ci_high=result.ci_high, rows=result.rows, method=result.method,
            reason=result.reason, details=result.details or None,
            realized=None if realized is None else realized[0],
            realized_at=None if realized is None else realized[1]))


def estimate_scored(spec: ProblemSpec, batch_id: str, mv: ModelVersion, role: str, model: Any,
                    frame: pd.DataFrame, outputs: np.ndarray, settings: Settings
                    ) -> dict[str, Any]:
    """``estimate_batch`` + ``record_estimate`` for the scoring stage: never raises (an
    estimator failure is logged and stored as "not estimated"; a failed write is logged).

    Returns:
        ``model_version``, ``role``, ``metric``, ``estimate``, ``ci_low``, ``ci_high``,
        ``reason``.
    """
    try:
        result = estimate_batch(spec, batch_id, mv, role, model, frame, outputs, settings)
    except Exception as exc:  # noqa: BLE001 - an estimate must never fail scoring
        log.warning("batch %r of %r: v%d not estimated: %s: %s", batch_id, spec.name,
                    mv.version, type(exc).__name__, exc)
        result = not_estimated(spec, batch_id, mv.version, role, len(frame),
                               f"the estimator failed ({type(exc).__name__}: {exc})")
    try:
        record_estimate(result, settings.db_url)
    except TryNotCurrent:
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("batch %r of %r: v%d's estimate not stored: %s: %s", batch_id, spec.name,
                    mv.version, type(exc).__name__, exc)
    out = result.to_dict()
    return {k: out[k] for k in ("model_version", "role", "metric", "estimate", "ci_low",
                                "ci_high", "reason")}


# --- realized values and reading ----------------------------------------------------------------

def attach_realized(s: Any, problem: str, batch_id: str, version: int, metric_name: str,
                    value: float | None) -> None:
    """In the caller's transaction: the realized metric beside the stored estimate (if any)."""
    s.execute(update(PerformanceEstimate).where(
        PerformanceEstimate.problem == problem, PerformanceEstimate.batch_id == batch_id,
        PerformanceEstimate.model_version == version, PerformanceEstimate.metric == metric_name,
    ).values(realized=value, realized_at=None if value is None else utcnow()))


def _row(r: PerformanceEstimate) -> dict[str, Any]:
    error = None if r.estimate is None or r.realized is None else r.realized - r.estimate
    return {"batch_id": r.batch_id, "model_version": r.model_version, "role": r.role,
            "metric": r.metric, "estimate": r.estimate, "ci_low": r.ci_low,
            "ci_high": r.ci_high, "rows": r.rows, "method": r.method, "reason": r.reason,
            "realized": r.realized, "error": error,
            "realized_at": None if r.realized_at is None else r.realized_at.isoformat(),
            "created_at": r.created_at.isoformat()}


def _ordered(problem: str) -> Any:
    return (select(PerformanceEstimate)
            .outerjoin(Batch, (Batch.problem == problem)
                       & (Batch.batch_id == PerformanceEstimate.batch_id))
            .where(PerformanceEstimate.problem == problem))


def estimate_history(problem: str, url: str) -> list[dict[str, Any]]:
    """Every stored estimate with its realized value and error (realized - estimate), oldest
    batch (by event time) first."""
    with session_scope(url, readonly=True) as s:
        rows = s.scalars(_ordered(problem).order_by(
            Batch.event_time_max.asc().nulls_last(), PerformanceEstimate.batch_id,
            PerformanceEstimate.model_version))
        return [_row(r) for r in rows]


def latest_estimate(problem: str, version: int, url: str) -> dict[str, Any] | None:
    """The newest stored estimate of ``version`` (by the batch's event time, then when it was
    stored); None when it has none with a value. Keys: batch_id, metric, estimate, ci_low,
    ci_high (and rows)."""
    with session_scope(url, readonly=True) as s:
        r = s.scalars(_ordered(problem).where(
            PerformanceEstimate.model_version == version,
            PerformanceEstimate.estimate.is_not(None)).order_by(
            Batch.event_time_max.desc().nulls_last(), PerformanceEstimate.created_at.desc(),
            PerformanceEstimate.id.desc()).limit(1)).first()
        if r is None:
            return None
        return {"batch_id": r.batch_id, "metric": r.metric, "estimate": r.estimate,
                "ci_low": r.ci_low, "ci_high": r.ci_high, "rows": r.rows}
