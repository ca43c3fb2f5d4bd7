"""Scoring: a published batch's features (``mlcore.feast.own_partition``) through the champion,
predictions keyed by batch, entity, version."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Table, delete, insert

from mlcore.config import Settings
from mlcore.estimation import estimate_input, estimate_scored
from mlcore.feast.own_partition import feature_pieces
from mlcore.feast.retrieval import require_materialized
from mlcore.model.estimate_input import EstimateInput
from mlcore.model.evaluation import predict_proba
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
from mlcore.store.models import Batch, ModelVersion, Prediction, utcnow
from mlcore.store.session import session_scope

log = logging.getLogger(__name__)

_CHUNK = 50_000  # predictions per INSERT
_PREDICT_ROWS = 1_000_000  # rows per predict_proba call
PIECE_ROWS = 1_000_000  # rows read, predicted and spooled at a time: what scoring holds


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

    Bounded memory: the batch is read, predicted and spooled ``PIECE_ROWS`` rows at a time
    (``_score_pieces``), then every scored version's predictions replace its old ones in one
    transaction: a failure anywhere leaves the stored predictions as they were.

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
    models = [(mv, role, load_model(mv, settings))]
    skipped = None
    if shadow is not None and shadow != version:
        try:
            shadow_mv = get_version(spec.name, shadow, settings.db_url)
            models.append((shadow_mv, CHALLENGER, load_model(shadow_mv, settings)))
        except (ArtifactIntegrityError, ModelNotFound) as exc:
            skipped = {"version": shadow, "reason": f"{type(exc).__name__}: {exc}"}
            log.warning("batch %r of %r: challenger v%d skipped, champion v%d scored alone: %s",
                        batch_id, spec.name, shadow, version, skipped["reason"])
    require_materialized(spec.name, [batch_id], settings.db_url)
    champion, *others = _score_pieces(spec, batch, models, settings)
    estimates = [estimate_scored(spec, batch_id, s.mv, s.role, s.model, s.kept, None, settings)
                 for s in (champion, *others)]
    challenger = others[0] if others else None
    return ScoringResult(spec.name, batch_id, version, champion.rows, champion.mean,
                         champion.rows / max(champion.seconds, 1e-9),
                         None if challenger is None else challenger.mv.version,
                         None if challenger is None else challenger.mean, skipped, estimates)


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


def _score_pieces(spec: ProblemSpec, batch: Batch, models: list[tuple[ModelVersion, str, Any]],
                  settings: Settings) -> list[_Scored]:
    """Every model's outputs on the batch, ``PIECE_ROWS`` rows at a time (one piece of
    features held), spooled to parquet files in a local temp folder, then stored (``_store``).

    Spooled, not inserted as they come: SQLite's write lock is held from a transaction's start
    and predicting takes most of the time (145 of 197 s at 10M rows), so the transaction only
    spans the inserts, as when the scores were held in memory. ``PIECE_ROWS`` is a multiple of
    ``_PREDICT_ROWS``: ``predict_proba`` sees the rows it saw when the frame was held whole, so
    the scores are the same bit for bit (a multinomial LogisticRegression's last bit depends on
    the rows of the call)."""
    source = feature_pieces(spec, batch, settings, PIECE_ROWS)
    with tempfile.TemporaryDirectory(prefix="mlcore-scores-") as spool:
        scored = [_Scored(mv, role, model, estimate_input(spec, mv, model, settings, source.rows),
                          Path(spool) / f"v{mv.version}.parquet") for mv, role, model in models]
        try:
            for piece in source.pieces:
                keys = _spool_keys(piece[spec.entity.key])
                for one in scored:
                    one.add(piece, keys, spec.feature_names)
                del piece, keys  # not held while the next piece is read
        finally:
            for one in scored:
                one.close()
        _store(spec.name, batch.batch_id, scored, settings.db_url)
    return scored


@dataclass
class _Scored:
    """One version's outputs on a batch, fed a piece at a time: spooled to ``path`` (what
    ``_store`` inserts), summed (the mean score) and kept for its estimate (``kept``)."""

    mv: ModelVersion
    role: str
    model: Any
    kept: EstimateInput
    path: Path
    rows: int = 0
    total: float = 0.0
    seconds: float = 0.0  # in ``_predict``
    writer: pq.ParquetWriter | None = None

    @property
    def mean(self) -> float:
        """The mean score over every row (NaN for none)."""
        return self.total / self.rows if self.rows else float("nan")

    def add(self, frame: pd.DataFrame, keys: pa.Array, features: list[str]) -> None:
        start = time.perf_counter()
        outputs = _predict(self.model, frame, features)
        self.seconds += time.perf_counter() - start
        rows = rows_of(self.model, outputs)
        self.rows += len(outputs)
        self.total += float(np.sum(rows.score))
        self.kept.add(frame, outputs)
        cols = {"key": keys, "score": pa.array(np.asarray(rows.score, dtype="float64"))}
        if rows.label is not None and rows.probabilities is not None:
            cols |= {"label": pa.array(rows.label), "probabilities": pa.array(rows.probabilities)}
        table = pa.table(cols)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def spooled(self) -> Iterator[pa.RecordBatch]:
        """The spooled predictions in row order, ``_CHUNK`` rows at a time."""
        if self.rows:
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=_CHUNK)


def _spool_keys(col: pd.Series) -> pa.Array:
    """A piece's entity keys to spool: integers as they are, others as their stored text."""
    if isinstance(col.dtype, np.dtype) and col.dtype.kind in "iu":
        return pa.array(col.to_numpy())
    return pa.array(col.astype(str).tolist(), pa.string())


def _key_texts(keys: pa.Array) -> list[str]:
    """The entity keys as stored: ``astype(str)``; for integers ``str`` of Python ints, the same
    text ~20 % faster (0.27 vs 0.33 s at 1M rows)."""
    if pa.types.is_integer(keys.type):
        return list(map(str, keys.to_numpy().tolist()))
    return cast(list[str], keys.to_pylist())


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


def _store(problem: str, batch_id: str, scored: list[_Scored], url: str) -> None:
    """Replace the scored versions' predictions for a batch with their spooled ones, in one
    transaction (a failure leaves the old ones).

    Core inserts of ``_CHUNK`` rows, the constant columns computed once: on SQLite straight to
    the driver's ``executemany`` as tuples zipped in C (``created_at`` converted to SQLite's
    DATETIME text once, ``_sqlite_text``); elsewhere as Core ``insert`` (multi-row
    ``VALUES``). Profiled at 1M rows, the ORM bulk insert spent ~80 % of its time building
    parameters row by row (``_collect_insert_commands``, ``construct_params``, a ``created_at``
    default and a DATETIME conversion per row); benchmarks/BENCHMARKS.md, scale curve.
    """
    table, now = cast(Table, Prediction.__table__), utcnow()
    with session_scope(url) as s:
        for one in scored:
            s.execute(delete(Prediction).where(Prediction.problem == problem,
                                               Prediction.batch_id == batch_id,
                                               Prediction.model_version == one.mv.version))
        conn = s.connection()
        sqlite = conn.dialect.name == "sqlite"
        created = _sqlite_text(table, conn.dialect, now) if sqlite else now
        for one in scored:
            for chunk in one.spooled():
                _insert(conn, table, (problem, batch_id, one.mv.version, created), chunk, sqlite)


def _insert(conn: Any, table: Table, common: tuple[str, str, int, Any], chunk: pa.RecordBatch,
            sqlite: bool) -> None:
    """One chunk of spooled predictions; ``common``: problem, batch ID, version, created_at."""
    problem, batch_id, version, created = common
    keys, values = _key_texts(chunk.column("key")), chunk.column("score").to_numpy().tolist()
    extra = {c: chunk.column(c).to_pylist() for c in ("label", "probabilities")
             if c in chunk.schema.names}
    if sqlite:
        names = "".join(f", {c}" for c in extra)
        sql = (f"INSERT INTO {table.name} (problem, batch_id, entity_key, model_version, "
               f"score, created_at{names}) VALUES (?, ?, ?, ?, ?, ?{', ?' * len(extra)})")
        conn.exec_driver_sql(sql, list(zip(repeat(problem), repeat(batch_id), keys,
                                           repeat(version), values, repeat(created),
                                           *extra.values())))
        return
    conn.execute(insert(table), [
        {"problem": problem, "batch_id": batch_id, "entity_key": k, "model_version": version,
         "score": v, "created_at": created, **{c: col[i] for c, col in extra.items()}}
        for i, (k, v) in enumerate(zip(keys, values, strict=True))])
