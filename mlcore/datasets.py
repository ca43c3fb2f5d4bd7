"""Training sets: a time-based split where the newest labelled batch is the frozen holdout."""

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

from mlcore.batches import BatchNotFound, check_batch_id
from mlcore.config import Settings
from mlcore.features import historical_features, require_materialized
from mlcore.ingestion import published_batches
from mlcore.problems import ProblemSpec
from mlcore.store.models import Batch


class NotEnoughData(ValueError):
    """No labelled batch to train on."""


@dataclass(frozen=True)
class SplitPlan:
    """Which batches train and which one is held out (``hash`` split: one batch only)."""

    train_batches: tuple[str, ...]
    holdout_batches: tuple[str, ...]
    method: str  # "newest_batch" | "entity_hash"


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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetRef:
        """Inverse of ``to_dict``."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def plan_split(batch_ids: list[str]) -> SplitPlan:
    """Newest batch is the holdout; with a single batch, a stable entity-hash 20% is held out.

    Args:
        batch_ids: labelled batches, oldest first.
    """
    if not batch_ids:
        raise NotEnoughData("no labelled published batch to train on")
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


def labelled_batches(spec: ProblemSpec, settings: Settings, until: str | None) -> list[Batch]:
    """Published batches carrying the target, oldest first, up to and including ``until``."""
    batches = [b for b in published_batches(spec.name, settings.db_url)
               if spec.target.name in b.schema]
    if until is not None:
        check_batch_id(until)
        ids = [b.batch_id for b in batches]
        if until not in ids:
            raise BatchNotFound(f"batch {until!r} of {spec.name!r} is not a published "
                                "labelled batch")
        batches = batches[: ids.index(until) + 1]
    return batches


def _split(frame: pd.DataFrame, plan: SplitPlan, spec: ProblemSpec
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    if plan.method == "entity_hash":
        held = entity_bucket(frame[spec.entity.key]) < 20
        return frame[~held], frame[held]
    held = frame["batch_id"].isin(plan.holdout_batches)
    return frame[~held], frame[held]


def build_dataset(spec: ProblemSpec, settings: Settings, until: str | None = None) -> DatasetRef:
    """Point-in-time training set from Feast, split and written once under its content hash."""
    return write_dataset(spec, settings, labelled_batches(spec, settings, until))


def write_dataset(spec: ProblemSpec, settings: Settings, batches: list[Batch],
                  root: Path | None = None) -> DatasetRef:
    """Join, split and write the training set of ``batches`` (oldest first).

    ``root`` defaults to the content-addressed folder under ``datasets/``; ``reproduce`` passes
    a scratch folder to rebuild from scratch instead of reusing what is there.
    """
    plan = plan_split([b.batch_id for b in batches])
    key = json.dumps([plan.method, [(b.batch_id, b.sha256) for b in batches]]).encode()
    dataset_id = hashlib.sha256(key).hexdigest()[:16]
    root = root or settings.home / "datasets" / f"problem={spec.name}" / f"dataset={dataset_id}"
    require_materialized(spec.name, [b.batch_id for b in batches], settings.db_url)
    frame = historical_features(spec, batches, settings)
    train, holdout = (part.reset_index(drop=True) for part in _split(frame, plan, spec))
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("holdout", holdout)):
        tmp = root / f".{name}.parquet.tmp"
        part.to_parquet(tmp, index=False)
        tmp.replace(root / f"{name}.parquet")
    return DatasetRef(dataset_id, str(root / "train.parquet"), str(root / "holdout.parquet"),
                      list(plan.train_batches), list(plan.holdout_batches), plan.method,
                      len(train), len(holdout), frame_hash(train), frame_hash(holdout))


def load_part(uri: str, expected_hash: str) -> pd.DataFrame:
    """Read a dataset part and check it is the frozen one the run recorded.

    Raises:
        ValueError: the file changed since the dataset was built.
    """
    frame = pd.read_parquet(Path(uri))
    if frame_hash(frame) != expected_hash:
        raise ValueError(f"dataset part {uri} changed since it was built (hash mismatch)")
    return frame
