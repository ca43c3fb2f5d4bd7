"""Performance before labels arrive, the stage: each scored batch's metric estimated from the
model's own outputs, with a confidence interval (the method, CBPE for classifiers and DLE for
regression, is ``mlcore.model.performance``), stored beside the realized value once labels
mature.

The estimator is fitted on a reference set the model never trained on: the holdout of its own
dataset, named with its hash in the version's reproducibility record. It is cached per model
version under ``<home>/estimators/problem=<p>/``, named by a hash of everything it depends on
(artifact SHA-256, holdout hash, metric, method version) and checked against the SHA-256 of its
bytes before it is unpickled; a damaged cache is refitted. Scoring never fails because of an
estimate: ``estimate_scored`` stores a "not estimated" row with the reason instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, select, update

from mlcore.config import Settings
from mlcore.model.estimate_input import EstimateInput
from mlcore.model.performance import (
    CONFIDENCE,
    DLE_LOSSES,
    NOT_ESTIMABLE,
    RESAMPLES,
    SEED,
    PerformanceEstimator,
)
from mlcore.model.splits import load_part
from mlcore.model.targets import predict
from mlcore.problems import ProblemSpec
from mlcore.reports.html import write_atomic
from mlcore.store.fencing import TryNotCurrent
from mlcore.store.models import Batch, ModelVersion, PerformanceEstimate, PerformanceReport, utcnow
from mlcore.store.session import session_scope

log = logging.getLogger(__name__)

# part of the cache key: a change of the method refits every estimator. "4": the estimator's
# class moved to mlcore.model.performance (a pickle names its module; the numbers are the same)
METHOD_VERSION = "4"
MIN_REFERENCE_ROWS = 100


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


# --- fitting on the model's own holdout, cached --------------------------------------------------

def _dataset_record(mv: ModelVersion) -> dict[str, Any]:
    record = (mv.reproducibility or {}).get("dataset") or {}
    if not record.get("holdout_uri") or not record.get("holdout_hash"):
        raise NotEstimated(f"v{mv.version} has no dataset record with a holdout (holdout_uri, "
                           "holdout_hash): no reference set the model did not train on")
    return dict(record)


def _reference(spec: ProblemSpec, mv: ModelVersion, record: dict[str, Any]) -> pd.DataFrame:
    uri = str(record["holdout_uri"])
    remote = uri.startswith(("s3://", "s3a://"))  # an object-storage home: load_part fetches it
    if not remote and not Path(uri).is_file():
        raise NotEstimated(f"v{mv.version}'s reference set (its holdout {uri}) is gone")
    try:
        frame = load_part(uri, record["holdout_hash"])
    except FileNotFoundError as exc:
        raise NotEstimated(f"v{mv.version}'s reference set (its holdout {uri}) is gone") from exc
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


def cache_path(spec: ProblemSpec, mv: ModelVersion, key: str,
               settings: Settings) -> Path | None:
    """``<home>/estimators/problem=<p>/version=<v>/<key>.joblib`` (its SHA-256 beside it). On an
    object-storage home the cache (derived, per host) is under ``MLCORE_LOCAL_DIR`` when set,
    else there is none (None: fitted every time)."""
    tail = Path(f"problem={spec.name}") / f"version={mv.version}" / f"{key}.joblib"
    if settings.home_is_local:
        return settings.home / "estimators" / tail
    return None if settings.local_dir is None else settings.local_dir / "estimators" / tail


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
    cached = None if path is None else _load_cached(path)
    if cached is not None:
        return cached, key
    reference = _reference(spec, mv, record)
    X = reference[spec.feature_names]
    estimator = PerformanceEstimator(
        spec.target.kind, spec.metric.name, spec.numeric, spec.categorical,
        [spec.vocabulary(c) for c in spec.categorical]).fit(
        X, reference[spec.target.name].to_numpy(), predict(model, X))
    if path is not None:
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


def estimate_input(spec: ProblemSpec, mv: ModelVersion, model: Any, settings: Settings,
                   rows: int) -> EstimateInput:
    """An empty ``EstimateInput`` for ``mv``'s outputs on a batch of ``rows`` rows: scoring feeds
    it piece by piece, then passes it to ``estimate_scored`` in place of the frame."""
    return EstimateInput(spec.target.kind, spec.metric.name, spec.feature_names, rows,
                         lambda: fitted_estimator(spec, mv, model, settings))


def estimate_batch(spec: ProblemSpec, batch_id: str, mv: ModelVersion, role: str, model: Any,
                   frame: pd.DataFrame | EstimateInput, outputs: np.ndarray | None,
                   settings: Settings) -> Estimate:
    """The spec's metric on a scored batch, estimated from the model's ``outputs`` (rows of
    ``frame``), with its interval; "not estimated" with the reason when it cannot be.
    ``frame`` may instead be an ``EstimateInput`` the batch was fed to piece by piece
    (``outputs`` None): the same estimate (``mlcore.model.estimate_input``)."""
    name = spec.metric.name
    rows = frame.rows if isinstance(frame, EstimateInput) else len(frame)
    if name in NOT_ESTIMABLE:
        return not_estimated(spec, batch_id, mv.version, role, rows, NOT_ESTIMABLE[name])
    if spec.target.kind == "regression" and name not in DLE_LOSSES:
        return not_estimated(spec, batch_id, mv.version, role, rows, f"no loss is defined for "
                             f"{name} (direct loss estimation knows {', '.join(DLE_LOSSES)})")
    if not rows:
        return not_estimated(spec, batch_id, mv.version, role, rows, "the batch has no rows")
    kept = frame
    if not isinstance(kept, EstimateInput):
        kept = estimate_input(spec, mv, model, settings, rows)
        kept.add(frame, np.asarray(outputs))
    try:
        if kept.error is not None:
            raise kept.error  # its fit (NotEstimated: no reference set) or its loss model failed
        estimator, key = kept.fitted or fitted_estimator(spec, mv, model, settings)
        value = kept.value(estimator)
    except NotEstimated as exc:
        return not_estimated(spec, batch_id, mv.version, role, rows, str(exc))
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
                    frame: pd.DataFrame | EstimateInput, outputs: np.ndarray | None,
                    settings: Settings) -> dict[str, Any]:
    """``estimate_batch`` + ``record_estimate`` for the scoring stage: never raises (an
    estimator failure is logged and stored as "not estimated"; a failed write is logged).
    ``frame``/``outputs`` as ``estimate_batch`` takes them.

    Returns:
        ``model_version``, ``role``, ``metric``, ``estimate``, ``ci_low``, ``ci_high``,
        ``reason``.
    """
    try:
        result = estimate_batch(spec, batch_id, mv, role, model, frame, outputs, settings)
    except Exception as exc:  # noqa: BLE001 - an estimate must never fail scoring
        log.warning("batch %r of %r: v%d not estimated: %s: %s", batch_id, spec.name,
                    mv.version, type(exc).__name__, exc)
        rows = frame.rows if isinstance(frame, EstimateInput) else len(frame)
        result = not_estimated(spec, batch_id, mv.version, role, rows,
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
