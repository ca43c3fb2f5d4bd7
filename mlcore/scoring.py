"""Scoring: a published batch through the champion, predictions keyed by batch, entity, version."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
from sqlalchemy import Table, delete, insert

from mlcore.config import Settings
from mlcore.datasets import point_in_time_features
from mlcore.evaluation import predict_proba
from mlcore.features import require_materialized
from mlcore.ingestion import get_batch
from mlcore.problems import ProblemSpec
from mlcore.registry import CHALLENGER, ModelNotFound, alias_holder, get_version, load_model
from mlcore.store.models import Prediction, utcnow
from mlcore.store.session import session_scope

_CHUNK = 50_000  # predictions per INSERT
_PREDICT_ROWS = 1_000_000  # rows per predict_proba call


@dataclass(frozen=True)
class ScoringResult:
    """What ``score_batch`` stored (``challenger_*``: the shadow model's scores, if any)."""

    problem: str
    batch_id: str
    model_version: int
    rows: int
    mean_score: float
    rows_per_second: float
    challenger_version: int | None = None
    challenger_mean_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def score_batch(spec: ProblemSpec, batch_id: str, settings: Settings,
                version: int | None = None) -> ScoringResult:
    """Score every row of a published batch with the champion (or ``version``); idempotent.

    Shadow scoring: when a ``challenger`` exists (and no explicit version was asked for), the
    same rows are scored by it too and stored under its version; only the champion's scores are
    what consumers read as "the" prediction.

    Raises:
        ModelNotFound: no champion yet and no version given.
        BatchNotFound: the batch is not published.
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    shadow = None if version else alias_holder(spec.name, settings.db_url, CHALLENGER)
    version = version or alias_holder(spec.name, settings.db_url)
    if version is None:
        raise ModelNotFound(f"batch {batch_id!r}: {spec.name!r} has no champion to score with")
    model = load_model(get_version(spec.name, version, settings.db_url), settings)
    require_materialized(spec.name, [batch_id], settings.db_url)
    frame = point_in_time_features(spec, [batch], settings, with_target=False)
    keys = frame[spec.entity.key].astype(str).tolist()
    start = time.perf_counter()
    scores = _predict(model, frame, spec.feature_names)
    rps = len(frame) / max(time.perf_counter() - start, 1e-9)
    _store(spec.name, batch_id, version, keys, scores, settings.db_url)
    shadow_mean = None
    if shadow is not None and shadow != version:
        challenger = load_model(get_version(spec.name, shadow, settings.db_url), settings)
        shadow_scores = _predict(challenger, frame, spec.feature_names)
        _store(spec.name, batch_id, shadow, keys, shadow_scores, settings.db_url)
        shadow_mean = float(shadow_scores.mean())
    return ScoringResult(spec.name, batch_id, version, len(keys), float(scores.mean()), rps,
                         shadow if shadow_mean is not None else None, shadow_mean)


def _predict(model: Any, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """``predict_proba`` in chunks of ``_PREDICT_ROWS`` rows: the pipeline's copies (feature
    selection, encoding, float64 conversion) stay chunk-sized. At 10M rows in one call they
    peaked at 9.1 GiB (benchmarks/BENCHMARKS.md, scale curve). Rows are scored independently,
    so the scores do not depend on the chunking."""
    if len(frame) <= _PREDICT_ROWS:
        return predict_proba(model, frame[features])
    return np.concatenate([predict_proba(model, frame.iloc[lo:lo + _PREDICT_ROWS][features])
                           for lo in range(0, len(frame), _PREDICT_ROWS)])


def _store(problem: str, batch_id: str, version: int, keys: list[str], scores: Any,
           url: str) -> None:
    """Replace one version's predictions for a batch, in one transaction.

    Core inserts of ``_CHUNK`` rows, the constant columns computed once: on SQLite straight to
    the driver's ``executemany`` as tuples (``created_at`` converted to SQLite's DATETIME text
    once); elsewhere as Core ``insert`` (multi-row ``VALUES``). Profiled at 1M rows, the ORM
    bulk insert spent ~80 % of its time building parameters row by row
    (``_collect_insert_commands``, ``construct_params``, a ``created_at`` default and a DATETIME
    conversion per row); benchmarks/BENCHMARKS.md, scale curve.
    """
    table = cast(Table, Prediction.__table__)
    now, values = utcnow(), np.asarray(scores, dtype="float64").tolist()
    with session_scope(url) as s:
        s.execute(delete(Prediction).where(Prediction.problem == problem,
                                           Prediction.batch_id == batch_id,
                                           Prediction.model_version == version))
        conn = s.connection()
        if conn.dialect.name == "sqlite":
            process = table.c.created_at.type.bind_processor(conn.dialect)
            created = process(now) if process is not None else now
            sql = (f"INSERT INTO {table.name} (problem, batch_id, entity_key, model_version, "
                   "score, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            for lo in range(0, len(keys), _CHUNK):
                conn.exec_driver_sql(sql, [
                    (problem, batch_id, k, version, v, created)
                    for k, v in zip(keys[lo:lo + _CHUNK], values[lo:lo + _CHUNK], strict=True)])
            return
        for lo in range(0, len(keys), _CHUNK):
            conn.execute(insert(table), [
                {"problem": problem, "batch_id": batch_id, "entity_key": k,
                 "model_version": version, "score": v, "created_at": now}
                for k, v in zip(keys[lo:lo + _CHUNK], values[lo:lo + _CHUNK], strict=True)])
