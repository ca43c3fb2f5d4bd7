"""Features: engineer a batch into the offline store, apply Feast definitions, materialize online,
build point-in-time-correct frames for training and scoring, and read the online store."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, func, select

from mlcore.config import Settings
from mlcore.data.integrity import FileSet, curated_files, fingerprint, offline_files
from mlcore.data.io import read_curated
from mlcore.locks import file_lock
from mlcore.problems import ProblemSpec
from mlcore.store.catalog import get_batch
from mlcore.store.models import Batch, Materialization
from mlcore.store.session import session_scope

if TYPE_CHECKING:
    from feast import FeatureStore

ROW_ID = "__row_id"
CREATED = "batch_published_at"  # the created-timestamp column (feature_repo/problem_specs.py)


class FeatureRetrievalError(RuntimeError):
    """A point-in-time join cannot answer: rows without features, or entity rows of several
    batches sharing a key and event time (the message names the cause and the batches)."""


@dataclass(frozen=True)
class MaterializationResult:
    """What ``materialize_batch`` wrote."""

    problem: str
    batch_id: str
    feature_view: str
    offline_uri: str
    rows: int
    window_start: str
    window_end: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def engineer(curated: pd.DataFrame, spec: ProblemSpec) -> pd.DataFrame:
    """The offline-store row of each entity: key, event time and the model's feature columns
    (timestamp parts included) in their curated types, which the Feast view declares:
    numeric Float64, categorical Int64/String/Bool by vocabulary, boolean Bool."""
    return curated[[spec.entity.key, "event_timestamp", *spec.feature_names]].copy()


def missing_features(frame: pd.DataFrame, spec: ProblemSpec) -> np.ndarray:
    """Rows a point-in-time join found no feature row for: a required (non-nullable) feature
    is missing, or, when every feature is nullable, all of them are."""
    nullable = {c for f in spec.features if f.nullable for c in f.model_columns}
    required = [c for c in spec.feature_names if c not in nullable]
    if required:
        return frame[required].isna().any(axis=1).to_numpy()
    return frame[spec.feature_names].isna().all(axis=1).to_numpy()


def engineer_table(batch: Batch, spec: ProblemSpec) -> pa.Table:
    """``engineer(read_curated(batch), spec)`` as Arrow, read straight from the curated file:
    text columns stay Arrow strings (no Python object per value until the online write). With
    ``corrections: supersede``, plus ``CREATED``: when the batch was published (a correction,
    published later, wins over the row it corrects)."""
    columns = [spec.entity.key, "event_timestamp", *spec.feature_names]
    text = [f.name for f in spec.features if f.kind == "categorical" and f.value_type == "str"]
    # text read as the file's own dictionary (no per-value decode); written back as plain text
    files = curated_files(batch)
    table = pq.read_table(files[0] if len(files) == 1 else Path(batch.curated_uri or ""),
                          columns=columns, read_dictionary=text or None)
    if spec.corrections != "supersede":
        return table
    stamp = pd.Timestamp(batch.published_at or batch.created_at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return table.append_column(CREATED, pa.array(np.full(table.num_rows, stamp.value),
                                                 pa.timestamp("ns", tz="UTC")))


def write_offline(frame: pd.DataFrame | pa.Table, dest: Path) -> FileSet:
    """Write one batch's partition atomically (staging dir, then rename); its file record."""
    staging = dest.with_name(f".staging-{dest.name}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    if isinstance(frame, pa.Table):  # no Arrow schema stored: dictionaries read back as text
        pq.write_table(frame, staging / "part-0.parquet", store_schema=False)
    else:
        frame.to_parquet(staging / "part-0.parquet", index=False)
    record = fingerprint(staging)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    return record


def _feast_env(settings: Settings) -> None:
    # feature_store.yaml and the definition files read these; feast expands ${VAR} itself.
    os.environ["MLCORE_HOME"] = str(settings.home.resolve())
    os.environ["MLCORE_PROBLEMS_DIR"] = str(settings.problems_dir.resolve())
    (settings.home / "feast").mkdir(parents=True, exist_ok=True)


def feature_store(settings: Settings) -> FeatureStore:
    """The Feast store of ``feature_repo/`` over this settings' home.

    Configured by ``settings.feast_config_file``: ``MLCORE_FEAST_CONFIG`` (a production variant
    such as ``deploy/feature_store.postgres.yaml``) or ``feature_repo/feature_store.yaml``.
    Relative paths in that file resolve against ``feature_repo/``, as with the default.

    Raises:
        FileNotFoundError: the configured ``feature_store.yaml`` does not exist.
    """
    from feast import FeatureStore

    config = settings.feast_config_file.resolve()
    if not config.is_file():
        raise FileNotFoundError(f"Feast config {config} not found (MLCORE_FEAST_CONFIG)")
    _feast_env(settings)
    return FeatureStore(repo_path=str(settings.feature_repo.resolve()), fs_yaml_file=config)


def apply_definitions(settings: Settings) -> list[str]:
    """``feast apply`` in-process: parse ``feature_repo/`` and register its objects.

    Returns:
        Names of the feature views now registered.
    """
    from feast.repo_operations import parse_repo

    store = feature_store(settings)
    repo = settings.feature_repo.resolve()
    for path in repo.glob("*.py"):  # re-read definitions: MLCORE_HOME may differ per call
        sys.modules.pop(path.stem, None)
    sys.path.insert(0, str(repo))
    try:
        with contextlib.chdir(repo):
            contents = parse_repo(repo)
    finally:
        sys.path.remove(str(repo))
    objects: list[Any] = [*contents.entities, *contents.data_sources, *contents.feature_views,
                          *contents.feature_services]
    store.apply(objects)
    return [fv.name for fv in contents.feature_views]


@contextlib.contextmanager
def online_store_lock(settings: Settings, store: FeatureStore) -> Iterator[None]:
    """Serialize writers of the embedded SQLite online store across processes.

    Feast's own SQLite store opens it without a busy timeout, so two concurrent
    materializations (two mapped tasks, two problems) fail with "database is locked"; mlcore's
    (``mlcore.feast.sqlite_online``) waits, but writers still take turns here (WAL readers never
    wait).
    Server stores (PostgreSQL, Redis) take concurrent writers themselves: no lock for them.
    """
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    if not isinstance(store.config.online_store, SqliteOnlineStoreConfig):
        yield
        return
    with file_lock(settings.home / "feast" / "online_store.lock"):
        yield


def ensure_definitions(spec: ProblemSpec, settings: Settings) -> FeatureStore:
    """The store, with the Feast definitions applied first if ``spec``'s view is missing.

    Applying chdir()s (Feast parses the repo from its folder): call this once before starting
    threads that materialize.
    """
    store = feature_store(settings)
    if spec.feature_view not in {fv.name for fv in store.list_feature_views()}:
        apply_definitions(settings)
        store = feature_store(settings)
    return store


def materialize_batch(spec: ProblemSpec, batch_id: str,
                      settings: Settings) -> MaterializationResult:
    """Engineer a published batch into the offline store and materialize it online (idempotent).

    A late or re-run older batch never regresses the online store: the newer event time wins.
    With mlcore's SQLite store (``mlcore.feast.sqlite_online``) the engineered frame is written in
    bulk
    and the store's upsert keeps the newer row; other stores (PostgreSQL, Redis) go through
    Feast's ``materialize`` up to the newest window already online, so Feast keeps the latest row.
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    frame = engineer_table(batch, spec)
    dest = settings.partition("features", spec.name, batch_id)
    record = write_offline(frame, dest)
    store = ensure_definitions(spec, settings)
    times = frame.column("event_timestamp").to_pandas()
    start = times.min().to_pydatetime() - timedelta(seconds=1)
    end = times.max().to_pydatetime() + timedelta(seconds=1)
    with online_store_lock(settings, store):
        if _fast_store(store):
            _write_online(store, spec, frame, start, end)
        else:
            online_end = max(end, _latest_window_end(spec.name, settings.db_url) or end)
            store.materialize(start_date=start, end_date=online_end,
                              feature_views=[spec.feature_view])
    _record(spec, batch_id, dest, (frame.num_rows, record), start, end, settings.db_url)
    return MaterializationResult(spec.name, batch_id, spec.feature_view, str(dest), frame.num_rows,
                                 start.isoformat(), end.isoformat())


def _fast_store(store: FeatureStore) -> bool:
    from mlcore.feast.sqlite_online import FastSqliteOnlineStoreConfig

    return isinstance(store.config.online_store, FastSqliteOnlineStoreConfig)


def _write_online(store: FeatureStore, spec: ProblemSpec, frame: pa.Table, start: datetime,
                  end: datetime) -> None:
    """The bulk path: the engineered frame straight into mlcore's SQLite online store, and the
    interval into Feast's registry as ``materialize`` records it."""
    from mlcore.feast.sqlite_online import FastSqliteOnlineStore

    view = store.get_feature_view(spec.feature_view)
    writer = FastSqliteOnlineStore()
    created = CREATED if CREATED in frame.column_names else None  # newer batch wins a tie
    try:
        writer.write_frame(store.config, view, frame, created_col=created)
    finally:
        writer.disconnect()
    store.registry.apply_materialization(view, store.project, start, end)


def _latest_window_end(problem: str, url: str) -> datetime | None:
    with session_scope(url) as s:
        latest = s.scalar(select(func.max(Materialization.window_end))
                          .where(Materialization.problem == problem))
    # SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC.
    return latest.replace(tzinfo=UTC) if latest is not None and latest.tzinfo is None else latest


def require_materialized(problem: str, batch_ids: list[str], url: str) -> None:
    """Check every batch has its features in the offline store before asking Feast for them.

    Raises:
        FeatureRetrievalError: naming the batches that are not materialized.
    """
    with session_scope(url) as s:
        done = set(s.scalars(select(Materialization.batch_id).where(
            Materialization.problem == problem, Materialization.batch_id.in_(batch_ids))))
    missing = [b for b in batch_ids if b not in done]
    if missing:
        raise FeatureRetrievalError(f"batches {', '.join(missing)} of {problem!r} are not "
                                    "materialized; run materialize_features for them first")


def _record(spec: ProblemSpec, batch_id: str, dest: Path, written: tuple[int, FileSet],
            start: datetime, end: datetime, url: str) -> None:
    with session_scope(url) as s:
        s.execute(delete(Materialization).where(Materialization.problem == spec.name,
                                                Materialization.batch_id == batch_id))
        s.add(Materialization(problem=spec.name, batch_id=batch_id, feature_view=spec.feature_view,
                              offline_uri=str(dest), rows=written[0], window_start=start,
                              window_end=end, files=written[1]))


def historical_features(spec: ProblemSpec, batches: list[Batch], settings: Settings,
                        with_target: bool = True, *, verified: bool = False) -> pd.DataFrame:
    """Point-in-time join of the batches' entity rows with the offline store, in input order.

    Each row asks for features as of its own event time, so no row sees a later value.

    Callers check ``require_materialized`` first: with several offline partitions, Feast's
    dask store fails obscurely on entity rows it has no partition for. ``verified``: the
    caller already checked every features partition against its record (``offline_files``).

    Raises:
        FeatureRetrievalError: an entity row got no features (out of TTL, or not materialized).
        DataDamaged: a features partition differs from its record.
    """
    ids = [b.batch_id for b in batches]
    cols = [spec.entity.key, "event_timestamp"] + ([spec.target.name] if with_target else [])
    if not verified:  # Feast reads every partition: verify them first (unless the caller did)
        offline_files(spec.name, settings.db_url)
    entity_df = pd.concat([read_curated(b, cols).assign(batch_id=b.batch_id) for b in batches],
                          ignore_index=True)
    entity_df[ROW_ID] = range(len(entity_df))
    entity_df = shared_rows(entity_df, spec, batches)
    store = feature_store(settings)
    service = store.get_feature_service(spec.feature_service)
    out = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    if len(out) != len(entity_df) or missing_features(out, spec).any():
        found = len(out) - int(missing_features(out, spec).sum())
        raise FeatureRetrievalError(no_features(spec, ids, len(entity_df) - found,
                                                len(entity_df)))
    return out.sort_values(ROW_ID).drop(columns=[ROW_ID]).reset_index(drop=True)


def no_features(spec: ProblemSpec, ids: list[str], lacking: int, rows: int) -> str:
    """The error text when ``lacking`` of ``rows`` entity rows got no features."""
    return (f"batches {', '.join(ids)} of {spec.name!r}: {lacking} of {rows} rows have no "
            "features as of their event time: no feature row of their key at or before it "
            f"within the feature TTL ({spec.feature_ttl_days} days)")


def _newest_first(batches: list[Any]) -> dict[str, int]:
    """Each batch's precedence: later published, higher (then batch ID)."""
    def when(b: Any) -> float:
        stamp = getattr(b, "published_at", None) or getattr(b, "created_at", None)
        return 0.0 if stamp is None else pd.Timestamp(stamp).timestamp()
    ranked = sorted(batches, key=lambda b: (when(b), b.batch_id))
    return {b.batch_id: i for i, b in enumerate(ranked)}


def shared_rows(entity_df: pd.DataFrame, spec: ProblemSpec, batches: list[Any]) -> pd.DataFrame:
    """Entity rows of several batches sharing one (key, event time), resolved before a join
    (Feast's would keep one of them, arbitrarily, and report the others as lacking features).

    With ``corrections: supersede`` the row of the batch published last stays (the others are
    dropped: the frame then has fewer rows than its batches). Otherwise such rows are an error.

    Raises:
        FeatureRetrievalError: naming the batches and the number of rows (not ``supersede``).
    """
    shared = shared_mask(entity_df, spec)
    if not shared.any():
        return entity_df
    if spec.corrections != "supersede":
        raise FeatureRetrievalError(shared_error(
            spec, batches, int(shared.sum()), set(entity_df.loc[shared, "batch_id"])))
    rank = entity_df["batch_id"].map(_newest_first(batches)).to_numpy()
    order = np.argsort(rank, kind="stable")
    older = entity_df.iloc[order].duplicated([spec.entity.key, "event_timestamp"], keep="last")
    return entity_df.loc[~older.sort_index().to_numpy()]


def shared_mask(entity_df: pd.DataFrame, spec: ProblemSpec) -> np.ndarray:
    """True for each entity row whose (key, event time) another row has."""
    from mlcore.data.validation import duplicate_mask

    return duplicate_mask(entity_df[spec.entity.key], entity_df["event_timestamp"])


def shared_error(spec: ProblemSpec, batches: list[Any], rows: int, where: set[str]) -> str:
    """The error text for ``rows`` entity rows sharing a key and event time (batches ``where``)."""
    return (f"batches {', '.join(b.batch_id for b in batches)} of {spec.name!r}: {rows} rows "
            f"share their ({spec.entity.key}, event time) with a row of another batch (in "
            f"{', '.join(repr(b) for b in sorted(where))}); a point-in-time join keeps one row "
            "per key and event time. The same rows were published twice (before cross-batch "
            "duplicate checks): leave the duplicate batch out, or declare corrections: supersede")


def online_features(spec: ProblemSpec, keys: list[Any], settings: Settings, *,
                    via_feast: bool = False) -> pd.DataFrame:
    """The newest materialized features of each entity, read from the online store.

    Works with whichever online store the Feast config names (SQLite, PostgreSQL, Redis), on one
    ``FeatureStore`` per process and config (registry objects kept for the registry's cache
    TTL). With mlcore's SQLite store the rows are read directly from its table
    (``FastSqliteOnlineStore.read_rows``, the query its Feast ``online_read`` runs), skipping
    Feast's per-call conversions; ``via_feast=True`` goes through ``get_online_features``.

    Returns:
        One row per key, in input order: the entity key and the feature service's features
        (missing values for a key that was never materialized; the direct read gives numeric
        features as float64, NaN where missing).
    """
    online = _online(settings)
    plan = None if via_feast else _direct(online, spec)
    if not keys:
        return pd.DataFrame(columns=[spec.entity.key, *spec.feature_names])
    if plan is None:
        service = online.cached(("service", spec.feature_service), lambda: online.store.
                                get_feature_service(spec.feature_service, allow_cache=True))
        got = online.store.get_online_features(
            features=service, entity_rows=[{spec.entity.key: k} for k in keys]).to_dict()
        return pd.DataFrame(got)[[spec.entity.key, *spec.feature_names]]
    rows = online.reader.read_rows(online.store.config, plan[0], keys, spec.feature_names)
    values = [r or (None,) * (len(spec.feature_names) + 1) for r in rows]
    out = None
    if plan[1]:  # all numeric: one float64 block; integers are exact below 2**53
        arr = np.array(values, dtype=np.float64).reshape(len(rows), -1)[:, 1:]
        if np.nanmax(np.abs(arr), initial=0) < 2**53:
            out = pd.DataFrame(arr, columns=spec.feature_names, copy=False)
    if out is None:
        out = pd.DataFrame([v[1:] for v in values], columns=spec.feature_names)
    out.insert(0, spec.entity.key, np.asarray(keys))
    return out


def online_feature_rows(spec: ProblemSpec, keys: list[Any],
                        settings: Settings) -> list[tuple[Any, ...] | None]:
    """The lightest lookup (no DataFrame): per key, in input order, its features as a tuple in
    ``spec.feature_names`` order, or None for a key never materialized. Read directly from
    mlcore's SQLite store; from other stores through ``online_features``."""
    online = _online(settings)
    plan = _direct(online, spec)
    if plan is None:
        got = online_features(spec, keys, settings)[spec.feature_names]
        return [None if row.isna().all() else tuple(row) for _, row in got.iterrows()]
    rows = online.reader.read_rows(online.store.config, plan[0], keys, spec.feature_names)
    return [r[1:] if r else None for r in rows]


@dataclass
class _Online:
    """A process's FeatureStore for reads of one config, and mlcore's direct SQLite reader."""

    store: FeatureStore
    reader: Any  # a FastSqliteOnlineStore, None for other online stores
    path: str  # the SQLite file ("" for other stores) and its (device, inode): a teardown
    ident: tuple[int, int]  # replaces the file, and this entry with it
    kept: dict[tuple[str, ...], tuple[float, Any]] = field(default_factory=dict)

    def cached(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        """``make()``, kept for the registry's cache TTL (Feast re-parses its protos per call)."""
        expires, value = self.kept.get(key, (0.0, None))
        if time.monotonic() >= expires:
            value = make()
            ttl = self.store.config.registry.cache_ttl_seconds or 60
            self.kept[key] = (time.monotonic() + ttl, value)
        return value


def _direct(online: _Online, spec: ProblemSpec) -> tuple[Any, bool] | None:
    """(view, all features numeric) when the direct reader serves the spec's one-view service."""
    def plan() -> tuple[Any, bool] | None:
        from mlcore.feast.sqlite_online import column_kinds

        service = online.store.get_feature_service(spec.feature_service, allow_cache=True)
        [*views] = service.feature_view_projections
        if len(views) != 1 or not {*spec.feature_names} <= {f.name for f in views[0].features}:
            return None
        view = online.store.get_feature_view(views[0].name, allow_registry_cache=True)
        kinds = column_kinds(view)
        numeric = ("float_val", "double_val", "int32_val", "int64_val")
        return view, all(kinds[n][1] in numeric for n in spec.feature_names)

    if online.reader is None:
        return None
    return online.cached(("plan", spec.feature_service, *spec.feature_names), plan)


_ONLINE: dict[tuple[Any, ...], _Online] = {}
_ONLINE_LOCK = threading.Lock()


@functools.cache
def _config_vars(settings: Settings) -> tuple[str, ...]:
    with contextlib.suppress(OSError):
        text = settings.feast_config_file.read_text()
        return tuple(sorted({*re.findall(r"\$\{?(\w+)", text)} - {"MLCORE_HOME"}))
    return ()


def _online(settings: Settings) -> _Online:
    """The ``_Online`` of these settings and of the environment variables their config reads;
    rebuilt when the SQLite online store's file was replaced (``feast teardown``)."""
    key = (settings, *map(os.environ.get, _config_vars(settings)))
    online = _ONLINE.get(key)
    if online is None or (online.path and online.ident != _ident(online.path)):
        with _ONLINE_LOCK:
            for old in [key] + list(_ONLINE)[:-15]:  # this one, and beyond 16 (tests' homes)
                if (dropped := _ONLINE.pop(old, None)) and dropped.reader is not None:
                    dropped.reader.disconnect()
            store = feature_store(settings)
            from mlcore.feast.sqlite_online import FastSqliteOnlineStore, db_path

            path = db_path(store.config) if _fast_store(store) else ""
            online = _ONLINE[key] = _Online(store, FastSqliteOnlineStore() if path else None,
                                            path, _ident(path))
    return online


def _ident(path: str) -> tuple[int, int]:
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path) if path else None
        return (st.st_dev, st.st_ino) if st else (0, 0)
    return (0, 0)
