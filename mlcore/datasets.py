"""Training sets: the labelled batches' point-in-time features (``mlcore.feast``), split by time
(``mlcore.model.splits``: by default the latest rows, by event time, of the newest labelled batch
are the frozen holdout and the contender trains on every row before the cut, so it sees the
newest regime) and written once under their content hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mlcore.batches import BatchNotFound, check_batch_id
from mlcore.config import Settings
from mlcore.feast.bounded import point_in_time_features
from mlcore.feast.retrieval import require_materialized
from mlcore.model.splits import DatasetRef, frame_hash, plan_split, split_rows
from mlcore.problems import ProblemSpec
from mlcore.store.catalog import published_batches
from mlcore.store.models import Batch


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


def build_dataset(spec: ProblemSpec, settings: Settings, until: str | None = None) -> DatasetRef:
    """Point-in-time training set from Feast, split and written once under its content hash."""
    return write_dataset(spec, settings, labelled_batches(spec, settings, until))


def write_dataset(spec: ProblemSpec, settings: Settings, batches: list[Batch],
                  root: Path | None = None) -> DatasetRef:
    """Join, split and write the training set of ``batches`` (oldest first).

    ``root`` defaults to the content-addressed folder under ``datasets/``; ``reproduce`` passes
    a scratch folder to rebuild from scratch instead of reusing what is there.
    """
    plan = plan_split([b.batch_id for b in batches], spec.evaluation)
    how = [plan.method, str(spec.evaluation.holdout)] if plan.method == "time_slice" else \
        plan.method  # datasets of the older rule keep their ids
    key = json.dumps([how, [(b.batch_id, b.sha256) for b in batches]]).encode()
    dataset_id = hashlib.sha256(key).hexdigest()[:16]
    remote = root is None and not settings.home_is_local
    if remote:  # parts staged in a process folder, then one PUT each (``_upload``)
        from mlcore.data.objects import process_tmp
        root = process_tmp("dataset")
    root = root or settings.home / "datasets" / f"problem={spec.name}" / f"dataset={dataset_id}"
    require_materialized(spec.name, [b.batch_id for b in batches], settings.db_url)
    frame = point_in_time_features(spec, batches, settings)
    split = split_rows(frame, plan, spec)
    left_out = len(frame) - int(split.train.sum()) - int(split.held.sum())
    train, holdout = frame[split.train], frame[split.held]
    del frame  # the two parts are copies: never hold three frames of this size at once
    for part in (train, holdout):
        part.reset_index(drop=True, inplace=True)
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("holdout", holdout)):
        tmp = root / f".{name}.parquet.tmp"
        part.to_parquet(tmp, index=False)
        tmp.replace(root / f"{name}.parquet")
    uris = [str(root / "train.parquet"), str(root / "holdout.parquet")]
    if remote:
        uris = _upload(settings, root, spec.name, dataset_id)
    return DatasetRef(dataset_id, uris[0], uris[1],
                      list(plan.train_batches), list(split.holdout_batches or plan.holdout_batches),
                      plan.method,
                      len(train), len(holdout), frame_hash(train), frame_hash(holdout),
                      str(spec.evaluation.holdout), split.holdout_from, left_out)



def _upload(settings: Settings, staged: Path, problem: str, dataset_id: str) -> list[str]:
    """The staged parts put under ``datasets/problem=<p>/dataset=<id>/`` of an object-storage
    home (the id is the content's: a re-run writes the same bytes), the staging removed."""
    import shutil

    from mlcore.model.artifacts_store import upload

    try:
        return [upload(settings.store_home(), staged / f"{name}.parquet", "datasets",
                       f"problem={problem}", f"dataset={dataset_id}", f"{name}.parquet")
                for name in ("train", "holdout")]
    finally:
        shutil.rmtree(staged, ignore_errors=True)
