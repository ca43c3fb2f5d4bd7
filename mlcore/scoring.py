"""Scoring: a published batch through the champion, predictions keyed by batch, entity, version."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy import Table, delete, insert

from mlcore.config import Settings
from mlcore.data.integrity import offline_files, parquet_files
from mlcore.data.io import read_curated
from mlcore.datasets import bucketable_source, point_in_time_features
from mlcore.estimation import estimate_scored
from mlcore.evaluation import predict_proba
from mlcore.features import feature_store, missing_features, require_materialized
from mlcore.model.registry import (
    CHALLENGER,
    CHAMPION,
    ArtifactIntegrityError,
    ModelNotFound,
    alias_holder,
    get_version,
    load_model,
)
from mlcore.model.targets import model_target
from mlcore.problems import ProblemSpec
from mlcore.store.catalog import get_batch
from mlcore.store.models import Batch, Prediction, utcnow
from mlcore.store.session import session_scope

log = logging.getLogger(__name__)

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
    # a challenger that could not be loaded: ``{"version": int, "reason": str}`` (alert on it)
    skipped_challenger: dict[str, Any] | None = None
    # each scored version's metric estimated before labels (``mlcore.estimation``)
    estimates: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def score_batch(spec: ProblemSpec, batch_id: str, settings: Settings,
                version: int | None = None) -> ScoringResult:
    """Score every row of a published batch with the champion (or ``version``); idempotent.

    Shadow scoring: when a ``challenger`` exists (and no explicit version was asked for), the
    same rows are scored by it too and stored under its version; only the champion's scores are
    what consumers read as "the" prediction.

    Both models are loaded (their artifacts verified) before anything is written. A challenger
    that cannot be loaded is skipped: logged as a warning and reported in
    ``ScoringResult.skipped_challenger``; the champion's scoring still succeeds. A champion
    that cannot be loaded fails the run with nothing written.

    Each scored version's metric is estimated from its outputs and stored
    (``mlcore.estimation``); an estimator failure is stored as "not estimated", never raised.

    Raises:
        ModelNotFound: no champion yet and no version given.
        BatchNotFound: the batch is not published.
        ArtifactIntegrityError: the champion's (or ``version``'s) artifact is missing or
            tampered (nothing was written).
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    explicit = version
    shadow = None if version else alias_holder(spec.name, settings.db_url, CHALLENGER)
    version = version or alias_holder(spec.name, settings.db_url)
    if version is None:
        raise ModelNotFound(f"batch {batch_id!r}: {spec.name!r} has no champion to score with")
    role = CHAMPION if explicit is None else role_now(spec.name, version, settings.db_url)
    mv = get_version(spec.name, version, settings.db_url)
    model = load_model(mv, settings)
    challenger, skipped, shadow_mv = None, None, None
    if shadow is not None and shadow != version:
        try:
            shadow_mv = get_version(spec.name, shadow, settings.db_url)
            challenger = load_model(shadow_mv, settings)
        except (ArtifactIntegrityError, ModelNotFound) as exc:
            skipped = {"version": shadow, "reason": f"{type(exc).__name__}: {exc}"}
            log.warning("batch %r of %r: challenger v%d skipped, champion v%d scored alone: %s",
                        batch_id, spec.name, shadow, version, skipped["reason"])
    require_materialized(spec.name, [batch_id], settings.db_url)
    frame = batch_features(spec, batch, settings)
    keys = _keys(frame[spec.entity.key])
    start = time.perf_counter()
    scores = _predict(model, frame, spec.feature_names)
    rps = len(frame) / max(time.perf_counter() - start, 1e-9)
    shadow_out = None if challenger is None else _predict(challenger, frame, spec.feature_names)
    mean = _store(spec.name, batch_id, version, keys, rows_of(model, scores), settings.db_url)
    shadow_mean = None
    if challenger is not None and shadow_mv is not None and shadow_out is not None:
        shadow_mean = _store(spec.name, batch_id, shadow_mv.version, keys,
                             rows_of(challenger, shadow_out), settings.db_url)
    estimates = [estimate_scored(spec, batch_id, mv, role, model, frame, scores, settings)]
    if challenger is not None and shadow_mv is not None and shadow_out is not None:
        estimates.append(estimate_scored(spec, batch_id, shadow_mv, CHALLENGER, challenger,
                                         frame, shadow_out, settings))
    return ScoringResult(spec.name, batch_id, version, len(keys), mean, rps,
                         shadow if shadow_mean is not None else None, shadow_mean, skipped,
                         estimates)


def role_now(problem: str, version: int, url: str) -> str:
    """The alias ``version`` holds now (champion, challenger), else ``other``."""
    for alias in (CHAMPION, CHALLENGER):
        if alias_holder(problem, url, alias) == version:
            return alias
    return "other"


@dataclass(frozen=True)
class _Rows:
    """Prediction columns as stored: ``score`` always; multiclass also ``label`` (the predicted
    class) and ``probabilities`` (JSON list in class order)."""

    score: np.ndarray
    label: list[str] | None = None
    probabilities: list[str] | None = None


def rows_of(model: Any, outputs: np.ndarray) -> _Rows:
    """What is stored of a model's outputs: binary P(positive), regression the value,
    multiclass P(predicted class) with the class and every probability."""
    if outputs.ndim == 1:
        return _Rows(outputs)
    names = np.array(model_target(model)["classes"], dtype=object)
    best = outputs.argmax(axis=1)
    probs = ["[" + ",".join(map(repr, row)) + "]" for row in outputs.tolist()]
    return _Rows(outputs[np.arange(len(outputs)), best], names[best].tolist(), probs)


def stored_outputs(scores: np.ndarray, probabilities: list[str | None] | None) -> np.ndarray:
    """Model outputs back from stored rows (the inverse of ``rows_of``): the scores, or for
    multiclass the (n, k) probability matrix parsed from ``probabilities``."""
    if probabilities is None or not len(probabilities) or probabilities[0] is None:
        return np.asarray(scores, dtype="float64")
    import json

    return np.asarray([json.loads(p or "[]") for p in probabilities], dtype="float64")


def _keys(col: pd.Series) -> list[str]:
    """The entity keys as stored: ``astype(str)``; for integers ``str`` of Python ints, the same
    text ~20 % faster (0.27 vs 0.33 s at 1M rows)."""
    if col.dtype.kind in "iu":
        return list(map(str, col.tolist()))
    return cast(list[str], col.astype(str).tolist())


def _predict(model: Any, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """``predict_proba`` in chunks of ``_PREDICT_ROWS`` rows: the pipeline's copies (feature
    selection, encoding, float64 conversion) stay chunk-sized. At 10M rows in one call they
    peaked at 9.1 GiB (benchmarks/BENCHMARKS.md, scale curve). Rows are scored independently,
    so the scores do not depend on the chunking."""
    if len(frame) <= _PREDICT_ROWS:
        return predict_proba(model, frame[features])
    return np.concatenate([predict_proba(model, frame.iloc[lo:lo + _PREDICT_ROWS][features])
                           for lo in range(0, len(frame), _PREDICT_ROWS)])


def _sqlite_text(table: Table, dialect: Any, now: Any) -> Any:
    """``created_at`` as SQLAlchemy's SQLite ``DATETIME`` writes it (the dialect's own bind
    processor: ``2026-01-31 12:00:00.000000``), once. The generic type has none: handing the
    driver the datetime stored Python's ``isoformat`` text with ``+00:00`` instead, a different
    text from every ORM-written row, at ~4.6 us per row (1M rows, cProfile)."""
    process = table.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    return process(now) if process is not None else now


def _store(problem: str, batch_id: str, version: int, keys: list[str], rows: _Rows,
           url: str) -> float:
    """Replace one version's predictions for a batch, in one transaction.

    Core inserts of ``_CHUNK`` rows, the constant columns computed once: on SQLite straight to
    the driver's ``executemany`` as tuples zipped in C (``created_at`` converted to SQLite's
    DATETIME text once, ``_sqlite_text``); elsewhere as Core ``insert`` (multi-row
    ``VALUES``). Profiled at 1M rows, the ORM bulk insert spent ~80 % of its time building
    parameters row by row (``_collect_insert_commands``, ``construct_params``, a ``created_at``
    default and a DATETIME conversion per row); benchmarks/BENCHMARKS.md, scale curve.
    """
    table = cast(Table, Prediction.__table__)
    now, values = utcnow(), np.asarray(rows.score, dtype="float64").tolist()
    extra: dict[str, list[str]] = {} if rows.label is None or rows.probabilities is None \
        else {"label": rows.label, "probabilities": rows.probabilities}
    with session_scope(url) as s:
        s.execute(delete(Prediction).where(Prediction.problem == problem,
                                           Prediction.batch_id == batch_id,
                                           Prediction.model_version == version))
        conn = s.connection()
        if conn.dialect.name == "sqlite":
            created = _sqlite_text(table, conn.dialect, now)
            names = "".join(f", {c}" for c in extra)
            sql = (f"INSERT INTO {table.name} (problem, batch_id, entity_key, model_version, "
                   f"score, created_at{names}) VALUES (?, ?, ?, ?, ?, ?{', ?' * len(extra)})")
            for lo in range(0, len(keys), _CHUNK):
                conn.exec_driver_sql(sql, list(zip(
                    repeat(problem), repeat(batch_id), keys[lo:lo + _CHUNK], repeat(version),
                    values[lo:lo + _CHUNK], repeat(created),
                    *(col[lo:lo + _CHUNK] for col in extra.values()))))
            return float(np.mean(rows.score)) if len(keys) else float("nan")
        for lo in range(0, len(keys), _CHUNK):
            conn.execute(insert(table), [
                {"problem": problem, "batch_id": batch_id, "entity_key": k,
                 "model_version": version, "score": v, "created_at": now,
                 **{c: col[lo + i] for c, col in extra.items()}}
                for i, (k, v) in enumerate(zip(keys[lo:lo + _CHUNK], values[lo:lo + _CHUNK],
                                               strict=True))])
    return float(np.mean(rows.score)) if len(keys) else float("nan")

# ---------------------------------------------------------------------------- features of one batch
#
# A batch's own point-in-time features, read from its own offline partition when that is
# provably the frame Feast's join returns (scoring's fast path).
#
# Why it can be the same: every row of a published batch asks for features as of its own event
# time, and ``materialize_batch`` wrote that batch's offline partition from exactly those rows
# with exactly those event times. Feast's file (dask) join keeps, per entity row, the offline row
# of the same key with the latest event time <= the row's event time within the TTL (sorted by
# event time, ``drop_duplicates(keep="last")``). So if every entity row (key k, time t) has its
# own partition row at the same position with key k and time t, no two entity rows share (k, t),
# and no other partition holds a row with key k and time t, then the partition row is the only
# candidate at time t and every other candidate is older (it loses) or newer (it is excluded):
# Feast's answer is the partition row. When any condition fails (a tie Feast would break by sort
# order, duplicated entity rows Feast would collapse, a re-ingested batch whose partition is
# stale, missing or NaN features, other stores, renamed fields, a created-timestamp column, a
# schema that differs between partitions, non-numeric columns), ``batch_features`` returns
# ``datasets.point_in_time_features``' frame (or its error) instead.

EVENT_TS = "event_timestamp"  # the entity frame's time column (``historical_features``)


def batch_features(spec: ProblemSpec, batch: Batch, settings: Settings) -> pd.DataFrame:
    """``point_in_time_features(spec, [batch], settings, with_target=False)``: the same frame
    (columns, dtypes, values, row order) and the same errors, read from the batch's own offline
    partition when that is provably Feast's answer (the comment above).

    Raises:
        FeatureRetrievalError: as ``point_in_time_features``.
    """
    frame = own_partition_features(spec, batch, settings)
    if frame is None:
        return point_in_time_features(spec, [batch], settings, with_target=False)
    return frame


def own_partition_features(spec: ProblemSpec, batch: Batch,
                           settings: Settings) -> pd.DataFrame | None:
    """The frame from the batch's own partition, or None when it is not provably Feast's."""
    store = feature_store(settings)
    view = store.get_feature_view(spec.feature_view)
    service = store.get_feature_service(spec.feature_service)
    src = bucketable_source(store, view, service, spec)
    if (src is None or src.created_timestamp_column
            or (view.ttl is not None and view.ttl.total_seconds() < 0)):
        return None
    key, ts = spec.entity.key, src.timestamp_field
    refs = [f.name for p in service.feature_view_projections for f in p.features]
    cols = [key, ts, *refs]
    offline_files(spec.name, settings.db_url)  # every partition read below, verified first
    own = settings.partition("features", spec.name, batch.batch_id).resolve()
    files = [f.resolve() for f in parquet_files(Path(src.path))]
    mine = [f for f in files if f.is_relative_to(own)]
    others = [f for f in files if not f.is_relative_to(own)]
    if not mine or len(set(refs)) != len(refs) or {key, ts, EVENT_TS} & set(refs):
        return None
    schema = _schema(mine[0], cols)
    if schema is None or any(_schema(f, cols) != schema for f in files):
        return None  # a differing schema: dask's unified dtypes may differ from this file's
    entity = read_curated(batch, [key, EVENT_TS])
    # pyarrow's own conversion, consolidated (one 2-D block per dtype), like Feast's frame: a
    # frame of one block per column (``split_blocks``) read faster but made the pipelines'
    # predict_proba 1.2-2.3x slower at 1M rows (measured: LogisticRegression 5.0 vs 2.2 s).
    parts = [pq.read_table(f, columns=cols).to_pandas() for f in mine]
    offline = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    if not (_numeric(entity[key]) and _numeric(offline[key])
            and all(offline[c].dtype.kind in "iufbO" for c in refs)
            and entity[key].dtype == offline[key].dtype
            and entity[EVENT_TS].dtype == offline[ts].dtype == "datetime64[ns, UTC]"):
        return None
    if (len(offline) != len(entity) or entity.isna().any().any()
            or offline[[key, ts]].isna().any().any() or missing_features(offline, spec).any()):
        return None  # features missing: Feast's path raises the error
    ent_k, ent_t = entity[key].to_numpy(), entity[EVENT_TS].array.asi8
    if not (np.array_equal(ent_k, offline[key].to_numpy())
            and np.array_equal(ent_t, offline[ts].array.asi8)):
        return None  # not the rows it was materialized from (re-ingested, reordered)
    if entity.duplicated().any():
        return None  # Feast collapses duplicate (key, time) rows: its path raises
    if _tied_elsewhere(others, key, ts, entity):
        return None
    # The partition's own key and time columns: equal to the entity rows' (checked above, same
    # dtypes). Built on the frame parquet gave (no per-column copy into new blocks).
    offline.insert(2, "batch_id", np.full(len(offline), batch.batch_id, dtype=object))
    return offline.rename(columns={ts: EVENT_TS}) if ts != EVENT_TS else offline


def _schema(path: Path, cols: list[str]) -> list[tuple[str, str]] | None:
    s = pq.read_schema(path)
    if any(c not in s.names for c in cols):
        return None
    return [(c, str(s.field(c).type)) for c in cols]


def _numeric(col: pd.Series) -> bool:
    return col.dtype.kind in "iufb"


def _tied_elsewhere(files: list[Path], key: str, ts: str, entity: pd.DataFrame) -> bool:
    """Does another partition hold a row with the key and event time of an entity row?"""
    keys = entity[key]
    mine = pd.MultiIndex.from_arrays([keys.to_numpy(), entity[EVENT_TS].array.asi8])
    for f in files:
        other = pd.read_parquet(f, columns=[key, ts])
        other = other[other[key].isin(keys)]
        if other.empty:
            continue
        pairs = pd.MultiIndex.from_arrays([other[key].to_numpy(), other[ts].array.asi8])
        if pairs.isin(mine).any():
            return True
    return False
