"""Splits and dataset identity: the time-based holdout (by default the latest rows, by event
time, of the newest labelled batch), stable entity buckets, one row order by (event time, key
hash), and the content-addressed ``DatasetRef`` a model records of its data."""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.util import hash_array

from mlcore.problems import ProblemSpec
from mlcore.spec_rules import EvaluationRule


class NotEnoughData(ValueError):
    """No labelled batch to train on."""


@dataclass(frozen=True)
class SplitPlan:
    """Which batches train and which one is held out.

    ``time_slice``: the latest rows of the newest batch are held out, its earlier rows train
    (so it is in both lists); ``newest_batch``: the whole newest batch; ``entity_hash``
    (``latest_batch`` with a single batch): a stable entity-hash 20 % of it.
    """

    train_batches: tuple[str, ...]
    holdout_batches: tuple[str, ...]
    method: str  # "time_slice" | "newest_batch" | "entity_hash"


@dataclass(frozen=True)
class DatasetRef:
    """A materialized, content-addressed training set: small enough for XCom."""

    dataset_id: str
    train_uri: str
    holdout_uri: str
    train_batches: list[str]
    holdout_batches: list[str]
    method: str
    train_rows: int
    holdout_rows: int
    train_hash: str
    holdout_hash: str
    holdout: str = "latest_batch"  # the spec's evaluation.holdout it was split by
    holdout_from: str | None = None  # time_slice: the cut (ISO event time) the holdout starts at
    left_out_rows: int = 0  # rows of older batches at or after the cut: in neither part

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetRef:
        """Inverse of ``to_dict``."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def plan_split(batch_ids: list[str], rule: EvaluationRule | None = None) -> SplitPlan:
    """The holdout of the newest batch: its latest rows (``time_slice``, the default rule), or
    (``latest_batch``) the whole batch, with a single batch a stable entity-hash 20 %.

    Args:
        batch_ids: labelled batches, oldest event time first.
        rule: the spec's ``evaluation`` (default: a 0.2 time slice).
    """
    if not batch_ids:
        raise NotEnoughData("no labelled published batch to train on")
    if (rule or EvaluationRule()).holdout != "latest_batch":
        return SplitPlan(tuple(batch_ids), (batch_ids[-1],), "time_slice")
    if len(batch_ids) == 1:
        return SplitPlan(tuple(batch_ids), tuple(batch_ids), "entity_hash")
    return SplitPlan(tuple(batch_ids[:-1]), (batch_ids[-1],), "newest_batch")


def entity_bucket(keys: pd.Series, purpose: str = "holdout") -> pd.Series:
    """A stable 0..99 bucket per entity key (independent of row order and process).

    Each ``purpose`` salts the hash, so the validation slice is not the holdout slice again.
    """
    salt = np.uint64(zlib.crc32(purpose.encode()))
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    return pd.Series(hash_array(hashed ^ salt) % 100, index=keys.index)


def frame_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's content (values and column names)."""
    digest = hashlib.sha256(json.dumps(list(map(str, frame.columns))).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Split:
    """Which rows of the joined frame train, which are held out (the rest: left out)."""

    train: np.ndarray
    held: np.ndarray
    holdout_from: str | None = None
    holdout_batches: tuple[str, ...] = ()  # time_slice: the batches the held rows come from


def event_ns(frame: pd.DataFrame) -> np.ndarray:
    """The rows' event times as int64 nanoseconds since the epoch (UTC)."""
    at = pd.to_datetime(frame["event_timestamp"], utc=True).dt.as_unit("ns")
    return np.asarray(at.astype("int64").to_numpy(), dtype="int64")


def key_hash(frame: pd.DataFrame, key: str) -> np.ndarray:
    """A stable hash of each row's entity key as text (breaks ties of one moment)."""
    return hash_array(frame[key].astype(str).to_numpy())


def newest_mask(at: np.ndarray, tie: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the newest ``fraction`` of rows (at least one) ordered by (``at``, ``tie``)."""
    order = np.lexsort((tie, at))
    held = np.zeros(len(at), dtype=bool)
    held[order[len(at) - max(1, round(fraction * len(at))):]] = True
    return held


def newest_rows(frame: pd.DataFrame, key: str, fraction: float) -> np.ndarray:
    """Mask of the newest ``fraction`` of the rows by event time (at least one row); rows of
    one moment are ordered by a stable hash of the entity key, so the cut is the same every
    time, whatever the row order."""
    return newest_mask(event_ns(frame), key_hash(frame, key), fraction)


def split_rows(frame: pd.DataFrame, plan: SplitPlan, spec: ProblemSpec) -> Split:
    """The row masks of ``plan`` (see ``time_slice``)."""
    if plan.method == "entity_hash":
        held = (entity_bucket(frame[spec.entity.key]) < 20).to_numpy()
        return Split(~held, held)
    if plan.method == "newest_batch":
        held = frame["batch_id"].isin(plan.holdout_batches).to_numpy()
        return Split(~held, held)
    return time_slice(frame, plan.train_batches, spec)


def holdout_source(frame: pd.DataFrame, batch_ids: tuple[str, ...], at: np.ndarray,
                   rule: EvaluationRule) -> np.ndarray:
    """Rows the time slice is cut from: the newest batch's, and older batches' too while the
    slice would hold fewer than ``min_holdout_rows`` (a stream's micro-batches: the newest is
    often a few events sealed by the clock). Batches large enough alone are never widened."""
    ids = frame["batch_id"].to_numpy()
    mine = ids == batch_ids[-1]
    for older in reversed(batch_ids[:-1]):
        n, seconds = int(mine.sum()), rule.holdout_seconds
        held = (int((at[mine] >= at[mine].max() - seconds * 1e9).sum()) if seconds is not None
                else max(1, round(float(rule.holdout) * n))) if n else 0
        if held >= rule.min_holdout_rows:
            break
        mine = mine | (ids == older)
    return mine


def time_slice(frame: pd.DataFrame, batch_ids: tuple[str, ...] | str, spec: ProblemSpec) -> Split:
    """The latest rows of the newest batch (``batch_ids``: oldest first, or just the newest;
    with older ones while it is too small: ``holdout_source``) by event time are held out;
    every row of any batch
    strictly before the cut trains; rows of other batches at or after it are left out (batches
    that overlap in time), so no training row is newer than a judged one.

    A fraction orders the batch's rows by (event time, a stable hash of the entity key), so rows
    sharing one moment (a yearly batch with one event time) are split by key, the same way every
    time; a duration holds out the rows within it of the batch's newest event time.

    Raises:
        NotEnoughData: no row is left before the cut (a holdout as large as all the data).
    """
    rule = spec.evaluation
    at, tie = event_ns(frame), key_hash(frame, spec.entity.key)
    batch_ids = (batch_ids,) if isinstance(batch_ids, str) else batch_ids
    newest = batch_ids[-1]
    mine = holdout_source(frame, batch_ids, at, rule)
    if not mine.any():
        raise NotEnoughData(f"{spec.name!r}: batch {newest!r} has no labelled rows to hold out")
    seconds = rule.holdout_seconds
    if seconds is not None:
        cut_at = int(at[mine].max() - seconds * 1e9)
        before = at < cut_at
        cut_tie = None
    else:
        idx = np.flatnonzero(mine)
        held_idx = idx[newest_mask(at[idx], tie[idx], float(rule.holdout))]
        first = held_idx[np.lexsort((tie[held_idx], at[held_idx]))[0]]  # the oldest held row
        cut_at, cut_tie = int(at[first]), tie[first]
        before = (at < cut_at) | ((at == cut_at) & (tie < cut_tie))
    held = mine & ~before
    if not before.any():
        raise NotEnoughData(
            f"{spec.name!r}: no labelled row is older than the holdout cut of batch {newest!r} "
            f"(evaluation.holdout {rule.holdout!r} takes every row): nothing to train on; "
            "declare a smaller holdout or load more batches")
    cut = pd.Timestamp(cut_at, unit="ns", tz="UTC").isoformat()
    sources = set(frame["batch_id"].to_numpy()[held])
    return Split(before, held, cut, tuple(b for b in batch_ids if b in sources))


def load_part(uri: str, expected_hash: str) -> pd.DataFrame:
    """Read a dataset part and check it is the frozen one the run recorded.

    Raises:
        ValueError: the file changed since the dataset was built.
    """
    if uri.startswith(("s3://", "s3a://")):  # an object-storage home (issue 19)
        from mlcore.model.artifacts_store import read_parquet

        frame = read_parquet(uri)
    else:
        frame = pd.read_parquet(Path(uri))
    if frame_hash(frame) != expected_hash:
        raise ValueError(f"dataset part {uri} changed since it was built (hash mismatch)")
    return frame

