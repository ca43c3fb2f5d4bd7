"""Training sets: a time-based split. By default the latest rows (by event time) of the newest
labelled batch are the frozen holdout and the contender trains on every row before the cut, so it
sees the newest regime (``evaluation.holdout`` in the spec; ``latest_batch`` holds out the whole
newest batch instead)."""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.util import hash_array

from mlcore.batches import BatchNotFound, check_batch_id
from mlcore.config import Settings
from mlcore.data.integrity import curated_files, offline_files, parquet_files
from mlcore.data.io import parquet_rows
from mlcore.features import (
    ROW_ID,
    FeatureRetrievalError,
    feature_store,
    historical_features,
    missing_features,
    no_features,
    require_materialized,
    shared_error,
    shared_mask,
    shared_rows,
)
from mlcore.problems import ProblemSpec
from mlcore.spec_rules import EvaluationRule
from mlcore.store.catalog import published_batches
from mlcore.store.models import Batch


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


@dataclass(frozen=True)
class Split:
    """Which rows of the joined frame train, which are held out (the rest: left out)."""

    train: np.ndarray
    held: np.ndarray
    holdout_from: str | None = None


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
    return time_slice(frame, plan.holdout_batches[0], spec)


def time_slice(frame: pd.DataFrame, newest: str, spec: ProblemSpec) -> Split:
    """The latest rows of batch ``newest`` by event time are held out; every row of any batch
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
    mine = (frame["batch_id"] == newest).to_numpy()
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
    return Split(before, held, cut)


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
    return DatasetRef(dataset_id, str(root / "train.parquet"), str(root / "holdout.parquet"),
                      list(plan.train_batches), list(plan.holdout_batches), plan.method,
                      len(train), len(holdout), frame_hash(train), frame_hash(holdout),
                      str(spec.evaluation.holdout), split.holdout_from, left_out)


def load_part(uri: str, expected_hash: str) -> pd.DataFrame:
    """Read a dataset part and check it is the frozen one the run recorded.

    Raises:
        ValueError: the file changed since the dataset was built.
    """
    frame = pd.read_parquet(Path(uri))
    if frame_hash(frame) != expected_hash:
        raise ValueError(f"dataset part {uri} changed since it was built (hash mismatch)")
    return frame


# ---------------------------------------------------------------------------- bounded retrieval

# Rows per Feast call on the file (dask) offline store. Its point-in-time join holds several
# copies of both inputs (3 GiB peak at 2M entity rows; over 9 GiB, killed, at 10M): above this,
# the join runs per entity-key hash bucket (benchmarks/BENCHMARKS.md, scale curve).
PIT_BUCKET_ROWS = 1_000_000


def point_in_time_features(spec: ProblemSpec, batches: list[Batch], settings: Settings,
                           with_target: bool = True) -> pd.DataFrame:
    """``features.historical_features`` in bounded memory: the same frame and the same errors.

    On the file offline store, when the batches' entity rows or the offline rows exceed
    ``PIT_BUCKET_ROWS``, both are split by a hash of the entity key into parquet files under
    ``<home>/tmp`` and Feast's own join runs once per bucket. An entity row can only match
    offline rows of its own key, so the buckets' joins together are the whole join; the rows
    are put back in input order. Other offline stores join in their database: unchanged.

    With ``corrections: supersede`` the file store always goes through the buckets (at least
    one): Feast's dask join breaks a tie of one key and event time by an unstable sort, whatever
    the created-timestamp column says (measured: Feast 0.67), so each bucket keeps only the
    newest published row per key and event time first, and entity rows a newer batch corrects
    are dropped (``features.shared_rows``).

    Raises:
        FeatureRetrievalError: an entity row got no features as of its event time; entity rows
            of several batches share a key and event time (not ``supersede``); a features
            partition lacks the created-timestamp column ``supersede`` needs.
    """
    from feast import FileSource

    store = feature_store(settings)
    view = store.get_feature_view(spec.feature_view)
    service = store.get_feature_service(spec.feature_service)
    src = bucketable_source(store, view, service, spec)
    if src is None:
        return historical_features(spec, batches, settings, with_target)
    entity_rows = parquet_rows([f for b in batches for f in curated_files(b)])
    offline_files(spec.name, settings.db_url)  # verified first (Feast reads them too)
    partitions = parquet_files(Path(src.path))
    buckets = -(-max(entity_rows, parquet_rows(partitions)) // PIT_BUCKET_ROWS)
    created = src.created_timestamp_column
    if buckets <= 1 and not created:
        return historical_features(spec, batches, settings, with_target, verified=True)
    if created:
        _require_column(partitions, created, spec)
    buckets = max(buckets, 1)
    (settings.home / "tmp").mkdir(parents=True, exist_ok=True)
    cols = [spec.entity.key, "event_timestamp"] + ([spec.target.name] if with_target else [])
    refs = [f"{view.name}:{f.name}" for p in service.feature_view_projections for f in p.features]
    out = _Assembled(entity_rows)
    with tempfile.TemporaryDirectory(prefix="pit-", dir=settings.home / "tmp") as tmp:
        ent = [Path(tmp) / f"entity-{i}.parquet" for i in range(buckets)]
        off = [Path(tmp) / f"offline-{i}.parquet" for i in range(buckets)]
        n_ent = _to_buckets(_entity_rows(batches, cols), spec.entity.key, ent)
        n_off = _to_buckets(_batches(partitions), spec.entity.key, off)
        for i in (i for i in range(buckets) if n_ent[i]):
            entity_df = out.resolve(pd.read_parquet(ent[i]), spec, batches)
            if out.shared:
                continue  # the join cannot answer: count the other buckets' shared rows only
            if created and n_off[i]:
                _newest_only(off[i], [spec.entity.key, src.timestamp_field], created)
            bucket_view = copy.copy(view)
            bucket_view.batch_source = FileSource(
                name=src.name, path=str(off[i]), timestamp_field=src.timestamp_field,
                created_timestamp_column=created)
            out.add(_join_bucket(store, bucket_view, refs, entity_df, n_off[i] > 0), spec)
    return out.frame(spec, batches)


def _require_column(partitions: list[Path], column: str, spec: ProblemSpec) -> None:
    """Every features partition has ``column`` (footers only).

    Raises:
        FeatureRetrievalError: naming the partitions without it.
    """
    lacking = [p.parent.name for p in partitions if column not in pq.read_schema(p).names]
    if lacking:
        raise FeatureRetrievalError(
            f"features partitions {', '.join(lacking)} of {spec.name!r} have no {column!r} "
            "column (materialized before corrections: supersede was declared): materialize "
            "those batches again")


def _newest_only(path: Path, keys: list[str], created: str) -> None:
    """Rewrite a bucket's offline rows keeping, per (key, event time), the newest ``created``
    (ties broken here, deterministically, not by Feast's unstable sort)."""
    table = pq.read_table(path)
    order = pc.sort_indices(table, [(k, "ascending") for k in keys] + [(created, "ascending")])
    table = table.take(order)
    key = [table.column(k).to_numpy(zero_copy_only=False) for k in keys]
    last = np.ones(table.num_rows, dtype=bool)  # the last row of each (key, event time) run
    last[:-1] = ~((key[0][1:] == key[0][:-1]) & (key[1][1:] == key[1][:-1]))
    if not last.all():
        pq.write_table(table.filter(pa.array(last)), path)


def bucketable_source(store: Any, view: Any, service: Any, spec: ProblemSpec) -> Any:
    """The view's parquet source (a local folder, path made absolute) when the join can be split
    by entity key: the file (dask) offline store, one view keyed by the spec's key, no renames."""
    from feast import FileSource
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig

    src = view.batch_source
    if (not isinstance(store.config.offline_store, DaskOfflineStoreConfig)
            or not isinstance(src, FileSource) or src.field_mapping
            or [p.name_to_use() for p in service.feature_view_projections] != [view.name]
            or view.projection.join_key_map or view.join_keys != [spec.entity.key]):
        return None
    path = FileSource.get_uri_for_file_path(store.config.repo_path, src.path)
    if not Path(path).is_dir():  # remote (s3://...) or not written yet: Feast reads it whole
        return None
    return FileSource(name=src.name, path=path, timestamp_field=src.timestamp_field,
                      created_timestamp_column=src.created_timestamp_column)


def _batches(files: list[Path], columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    for f in files:
        yield from pq.ParquetFile(f).iter_batches(columns=columns)


def _entity_rows(batches: list[Batch], cols: list[str]) -> Iterator[pa.RecordBatch]:
    """The entity rows ``historical_features`` builds: ``cols``, batch_id, then the row id."""
    start = 0
    for b in batches:
        for rb in _batches(curated_files(b), cols):
            ids = pa.array(np.arange(start, start + rb.num_rows, dtype=np.int64))
            start += rb.num_rows
            yield pa.RecordBatch.from_arrays(
                [*rb.columns, pa.array([b.batch_id] * rb.num_rows, pa.string()), ids],
                [*cols, "batch_id", ROW_ID])


def _to_buckets(rows: Iterator[pa.RecordBatch], key: str, paths: list[Path]) -> list[int]:
    """Write each row to ``paths[hash(key) % len(paths)]``; rows written per bucket."""
    k, counts = len(paths), [0] * len(paths)
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for rb in rows:
            which = hash_array(rb.column(key).to_numpy(zero_copy_only=False)) % np.uint64(k)
            order = np.argsort(which, kind="stable")
            table = pa.Table.from_batches([rb]).take(pa.array(order))
            edges = np.searchsorted(which[order], np.arange(k + 1, dtype=np.uint64))
            for i in map(int, np.flatnonzero(np.diff(edges))):
                if i not in writers:
                    writers[i] = pq.ParquetWriter(paths[i], table.schema)
                writers[i].write_table(table.slice(edges[i], edges[i + 1] - edges[i]))
                counts[i] += int(edges[i + 1] - edges[i])
    finally:
        for w in writers.values():
            w.close()
    return counts


def _join_bucket(store: Any, view: Any, refs: list[str], entity_df: pd.DataFrame,
                 has_offline_rows: bool) -> tuple[pd.DataFrame, int]:
    """Feast's join for one bucket, as ``FeatureStore.get_historical_features`` calls it.
    Returns (the joined rows, how many entity rows were asked for)."""
    from feast.infra.offline_stores.dask import DaskOfflineStore
    from feast.utils import make_df_tzaware

    if not has_offline_rows:  # nothing to join with: every row lacks features
        return entity_df.iloc[:0], len(entity_df)
    if store.config.coerce_tz_aware:
        entity_df = make_df_tzaware(entity_df)
    job = DaskOfflineStore.get_historical_features(
        config=store.config, feature_views=[view], feature_refs=refs, entity_df=entity_df,
        registry=store.registry, project=store.project, full_feature_names=False)
    return job.to_df(), len(entity_df)


class _Assembled:
    """Bucket results placed by row id into one array per column (no concat and sort copies)."""

    def __init__(self, rows: int) -> None:
        self.rows, self.asked, self.complete, self.failed = rows, 0, 0, False
        self.columns: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, Any] = {}
        self.dropped, self.shared, self.where = 0, 0, set[str]()  # see ``resolve``
        self.placed = np.zeros(rows, dtype=bool)

    def resolve(self, entity_df: pd.DataFrame, spec: ProblemSpec,
                batches: list[Batch]) -> pd.DataFrame:
        """A bucket's entity rows with shared (key, event time) resolved as
        ``features.shared_rows`` does: superseded rows dropped, or (not ``supersede``) counted
        for ``frame``'s error."""
        if spec.corrections == "supersede":
            kept = shared_rows(entity_df, spec, batches)
            self.dropped += len(entity_df) - len(kept)
            return kept
        shared = shared_mask(entity_df, spec)
        if shared.any():
            self.shared += int(shared.sum())
            self.where |= set(entity_df.loc[shared, "batch_id"])
        return entity_df

    def add(self, joined: tuple[pd.DataFrame, int], spec: ProblemSpec) -> None:
        out, asked = joined
        self.asked += asked
        lacking = missing_features(out, spec)
        self.complete += len(out) - int(lacking.sum())
        if len(out) != asked or lacking.any():
            self.failed = True  # reported by ``frame``
            return
        pos = out[ROW_ID].to_numpy()
        self.placed[pos] = True
        for c in out.columns.drop(ROW_ID):
            col = out[c]
            if c not in self.columns:
                self.dtypes[c] = col.dtype
                tz = isinstance(col.dtype, pd.DatetimeTZDtype)
                self.columns[c] = np.empty(self.rows, "int64" if tz else col.dtype)
            if col.dtype != self.dtypes[c]:
                raise FeatureRetrievalError(f"column {c!r} came back as {col.dtype} and "
                                            f"{self.dtypes[c]} from different buckets")
            self.columns[c][pos] = (col.array.asi8 if isinstance(col.dtype, pd.DatetimeTZDtype)
                                    else col.to_numpy())

    def frame(self, spec: ProblemSpec, batches: list[Batch]) -> pd.DataFrame:
        """The joined rows in input order (superseded rows left out), or
        ``historical_features``' error."""
        if self.shared:
            raise FeatureRetrievalError(shared_error(spec, batches, self.shared, self.where))
        asked = self.rows - self.dropped
        if self.failed or self.asked != asked:
            raise FeatureRetrievalError(no_features(spec, [b.batch_id for b in batches],
                                                    asked - self.complete, asked))
        keep = self.placed if self.dropped else slice(None)
        data = {}
        for c, full in self.columns.items():
            values = full[keep]
            dtype = self.dtypes[c]
            if isinstance(dtype, pd.DatetimeTZDtype):
                naive = pd.Series(values.view(f"datetime64[{dtype.unit}]"))
                data[c] = naive.dt.tz_localize("UTC").dt.tz_convert(dtype.tz)
            else:
                data[c] = pd.Series(values, copy=False)
        return pd.DataFrame(data, copy=False)
