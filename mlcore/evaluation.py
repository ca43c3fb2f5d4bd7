"""Evaluation, the stage: contender vs champion scored on the same frozen holdout rows, none of
which either trained on (checked by row key; rows a model trained on are left out of the
judgement), their throughput timed as interleaved one-thread passes, judged by the pure rule in
``mlcore.model.evaluation``. Recording the decision and moving aliases is ``mlcore.promotion``'s."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcore.backtest import backtest
from mlcore.config import Settings
from mlcore.model.artifacts_store import is_remote, read_parquet
from mlcore.model.evaluation import PromotionDecision, judge, predict_proba
from mlcore.model.registry import alias_holder, get_version, load_model
from mlcore.model.splits import DatasetRef, event_ns, frame_hash, load_part
from mlcore.problems import ProblemSpec
from mlcore.store.catalog import published_batches

if TYPE_CHECKING:
    from mlcore.store.models import ModelVersion

log = logging.getLogger(__name__)


def timed_scores(model: Any, X: pd.DataFrame, repeats: int = 3,
                 budget_seconds: float = 0.5) -> tuple[np.ndarray, float]:
    """Scores and throughput (rows per second) of ``model`` on ``X``.

    Throughput is the best of up to ``repeats`` passes, but passes stop once ``budget_seconds``
    are spent: a large holdout is scored once (one long pass is a steady measurement; three
    cost as much as a fit, see benchmarks/BENCHMARKS.md), a small one up to ``repeats`` times.
    """
    best, spent, p = math.inf, 0.0, np.empty(0)
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        p = predict_proba(model, X)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent >= budget_seconds:
            break
    return p, len(X) / max(best, 1e-9)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype="float64"), q))


def measure_throughput(models: dict[str, Any], X: pd.DataFrame,
                       spec: ProblemSpec) -> dict[str, dict[str, Any]]:
    """Rows per second of each model on the same rows, measured so that two models can be
    compared on a shared, busy worker: BLAS/OpenMP held to ``timing_threads`` (threadpoolctl),
    one untimed warm-up pass each, then ``timing_repeats`` timed passes of every model,
    interleaved and in alternating order, so a burst of contention hits both. Reported: the
    median rows/s, the 10th/90th percentiles and the spread ``(p90 - p10) / median``.

    Timed on the first ``timing_rows`` rows of ``X`` (the throughput of a tree or linear model
    is per row; the whole holdout is scored once, untimed, for the metrics).
    """
    from threadpoolctl import threadpool_limits

    rules = spec.promotion.guardrails
    rows = X.iloc[: rules.timing_rows]
    passes: dict[str, list[float]] = {name: [] for name in models}
    with threadpool_limits(limits=rules.timing_threads):
        for model in models.values():
            predict_proba(model, rows.iloc[: min(len(rows), 1000)])
        names = list(models)
        for r in range(rules.timing_repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                predict_proba(models[name], rows)
                passes[name].append(len(rows) / max(time.perf_counter() - start, 1e-9))
    out = {}
    for name, rates in passes.items():
        median = _percentile(rates, 50)
        p10, p90 = _percentile(rates, 10), _percentile(rates, 90)
        out[name] = {"rows_per_second": median, "p10": p10, "p90": p90,
                     "spread": (p90 - p10) / median, "passes": [round(v, 1) for v in rates],
                     "rows": len(rows), "threads": rules.timing_threads}
    return out

class UnfairHoldout(ValueError):
    """A model being compared trained on rows of the holdout."""


def _row_keys(spec: ProblemSpec, frame: pd.DataFrame) -> np.ndarray:
    """One hash per row of (entity key as text, event time in UTC nanoseconds), whatever the
    frame's dtypes (a Feast join and a curated file store the same moment differently)."""
    norm = pd.DataFrame({"key": frame[spec.entity.key].astype(str).to_numpy(),
                         "at": event_ns(frame)})
    return pd.util.hash_pandas_object(norm, index=False).to_numpy()


def training_rows_path(mv: ModelVersion, settings: Settings) -> Path | str:
    """Where a version's training part is (recorded, or the content-addressed default): a local
    path, or the ``s3://`` URI it was recorded under on an object-storage home."""
    rec = mv.reproducibility or {}
    if "dataset" in rec:
        uri = str(rec["dataset"]["train_uri"])
        return uri if is_remote(uri) else Path(uri)
    return (settings.home / "datasets" / f"problem={mv.problem}"
            / f"dataset={mv.metrics['dataset_id']}" / "train.parquet")


def _training_keys(spec: ProblemSpec, mv: ModelVersion, settings: Settings) -> pd.DataFrame:
    """The (entity key, event time) columns of a version's training rows.

    Raises:
        UnfairHoldout: they are gone (file or object missing).
    """
    where = training_rows_path(mv, settings)
    columns = [spec.entity.key, "event_timestamp"]
    try:
        if isinstance(where, str):
            return read_parquet(where)[columns]
        if where.is_file():
            return pd.read_parquet(where, columns=columns)
    except FileNotFoundError:
        pass
    raise UnfairHoldout(f"{spec.name!r} v{mv.version}: its training rows ({where}) are "
                        "gone, so a fair holdout cannot be checked")


def seen_rows(spec: ProblemSpec, holdout: pd.DataFrame,
              models: list[ModelVersion], settings: Settings) -> dict[int, np.ndarray]:
    """For each model, a mask of the holdout rows it trained on, by row key (entity key, event
    time).

    Raises:
        UnfairHoldout: a model's training rows cannot be read.
    """
    held = _row_keys(spec, holdout)
    seen = {}
    for mv in models:
        trained = _training_keys(spec, mv, settings)
        seen[mv.version] = np.isin(held, _row_keys(spec, trained))
    return seen


def check_fair_holdout(spec: ProblemSpec, holdout: pd.DataFrame, models: list[ModelVersion],
                       settings: Settings) -> None:
    """Check by row key (entity key, event time) that no model trained on a holdout row.

    Raises:
        UnfairHoldout: a model's training rows overlap the holdout, or they cannot be read.
    """
    for version, mask in seen_rows(spec, holdout, models, settings).items():
        if overlap := int(mask.sum()):
            raise UnfairHoldout(f"{spec.name!r} v{version} trained on {overlap} of the "
                                f"{len(holdout)} holdout rows; it cannot be judged on them")


def unseen_holdout(spec: ProblemSpec, holdout: pd.DataFrame, models: list[ModelVersion],
                   settings: Settings) -> tuple[pd.DataFrame, dict[int, int]]:
    """The holdout rows no model trained on, and how many each model had seen. A champion
    trained on part of today's holdout (history loaded newest first, ``latest_batch`` after a
    single-batch start, an old version judged again) is judged on the rest, with the contender.

    Raises:
        UnfairHoldout: fewer than ``evaluation.min_holdout_rows`` rows are left, or a model's
            training rows cannot be read.
    """
    seen = seen_rows(spec, holdout, models, settings)
    counts = {v: int(m.sum()) for v, m in seen.items() if m.any()}
    if not counts:
        return holdout, {}
    keep = ~np.logical_or.reduce(list(seen.values()))
    need = spec.evaluation.min_holdout_rows
    if int(keep.sum()) < need:
        which = ", ".join(f"v{v} trained on {n}" for v, n in counts.items())
        raise UnfairHoldout(f"{spec.name!r}: of the {len(holdout)} holdout rows {which}; only "
                            f"{int(keep.sum())} rows neither trained on are left, fewer than "
                            f"evaluation.min_holdout_rows {need}: they cannot be judged fairly")
    log.info("%s: %s rows of the holdout left out (%s trained on them); judged on %d rows",
             spec.name, int((~keep).sum()), counts, int(keep.sum()))
    return holdout[keep].reset_index(drop=True), counts


def largest_recent_batch(spec: ProblemSpec, settings: Settings, recent: int = 10) -> int | None:
    """Rows of the largest of the newest ``recent`` published batches (what a scoring run must
    handle; ``max_batch_seconds`` is the time it may take)."""
    if spec.promotion.guardrails.max_batch_seconds is None:
        return None
    batches = published_batches(spec.name, settings.db_url)[-recent:]
    return max((b.row_count for b in batches), default=None)




@dataclass(frozen=True)
class Assessment:
    """A contender judged against the champion: both versions, the holdout labels and both
    models' scores on it, the decision, the details behind it and the holdout's description."""

    contender: ModelVersion
    champion: ModelVersion | None
    y: np.ndarray
    p_new: np.ndarray
    p_old: np.ndarray | None
    decision: PromotionDecision
    details: dict[str, Any]
    holdout: dict[str, Any]


def assess_contender(spec: ProblemSpec, dataset: DatasetRef, contender: int,
                     settings: Settings) -> Assessment:
    """Score contender and current champion on the dataset's frozen holdout (rows either trained
    on left out), time both, and decide (plus the backtest when the spec asks for one).

    Raises:
        UnfairHoldout: fewer than ``evaluation.min_holdout_rows`` holdout rows are left that
            neither model trained on.
    """
    full = load_part(dataset.holdout_uri, dataset.holdout_hash)
    new_mv = get_version(spec.name, contender, settings.db_url)
    champ = alias_holder(spec.name, settings.db_url)
    old_mv = None if champ is None else get_version(spec.name, champ, settings.db_url)
    holdout, seen = unseen_holdout(spec, full, [m for m in (new_mv, old_mv) if m is not None],
                                   settings)
    X, y = holdout[spec.feature_names], holdout[spec.target.name].to_numpy()
    models = {"contender": load_model(new_mv, settings)}
    if old_mv is not None:
        models["champion"] = load_model(old_mv, settings)
    p_new = predict_proba(models["contender"], X)
    p_old = None if old_mv is None else predict_proba(models["champion"], X)
    timings = measure_throughput(models, X, spec)
    decision, details = judge(spec, holdout, p_new, p_old, timings, largest_recent_batch(
        spec, settings))
    details["split"] = dataset.method
    if spec.evaluation.backtest_batches:
        details["backtest"] = backtest(spec, load_part(dataset.train_uri, dataset.train_hash), {
            role: mv for role, mv in (("contender", new_mv), ("champion", old_mv))
            if mv is not None})
    return Assessment(new_mv, old_mv, y, p_new, p_old, decision, details, {
        "batches": dataset.holdout_batches, "rows": len(holdout),
        "hash": frame_hash(holdout) if seen else dataset.holdout_hash,
        "method": dataset.method, "rule": dataset.holdout, "from": dataset.holdout_from,
        "left_out_seen": {f"v{v}": n for v, n in seen.items()}})
