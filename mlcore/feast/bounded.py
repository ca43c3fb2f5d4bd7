"""Point-in-time retrieval in bounded memory: on the file (dask) offline store, large joins run
per entity-key hash bucket (the same frame and the same errors as the join in one piece)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.util import hash_array

from mlcore.config import Settings
from mlcore.data.integrity import curated_files, offline_files, parquet_files
from mlcore.data.io import parquet_rows
from mlcore.feast.retrieval import (
    ROW_ID,
    FeatureRetrievalError,
    historical_features,
    missing_features,
    no_features,
    shared_error,
    shared_mask,
    shared_rows,
)
from mlcore.feast.store import feature_store
from mlcore.problems import ProblemSpec
from mlcore.store.models import Batch

# Rows per Feast call on the file (dask) offline store. Its point-in-time join holds several
# copies of both inputs (3 GiB peak at 2M entity rows; over 9 GiB, killed, at 10M): above this,
# the join runs per entity-key hash bucket (benchmarks/BENCHMARKS.md, scale curve).
PIT_BUCKET_ROWS = 1_000_000


def point_in_time_features(spec: ProblemSpec, batches: list[Batch], settings: Settings,
                           with_target: bool = True) -> pd.DataFrame:
    """``retrieval.historical_features`` in bounded memory: the same frame and the same errors.

    On the file offline store, when the batches' entity rows or the offline rows exceed
    ``PIT_BUCKET_ROWS``, both are split by a hash of the entity key into parquet files under
    ``<home>/tmp`` and Feast's own join runs once per bucket. An entity row can only match
    offline rows of its own key, so the buckets' joins together are the whole join; the rows
    are put back in input order. Other offline stores join in their database: unchanged.

    With ``corrections: supersede`` the file store always goes through the buckets (at least
    one): Feast's dask join breaks a tie of one key and event time by an unstable sort, whatever
    the created-timestamp column says (measured: Feast 0.67), so each bucket keeps only the
    newest published row per key and event time first, and entity rows a newer batch corrects
    are dropped (``retrieval.shared_rows``).

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
        ``retrieval.shared_rows`` does: superseded rows dropped, or (not ``supersede``) counted
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
