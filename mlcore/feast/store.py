"""The Feast store of ``feature_repo/``: its config, applying the definitions, and writing a
batch's engineered frame online (bulk into mlcore's SQLite store, else Feast's ``materialize``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from mlcore.config import Settings
from mlcore.locks import file_lock
from mlcore.problems import ProblemSpec
from mlcore.store.models import Materialization
from mlcore.store.session import session_scope

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

CREATED = "batch_published_at"  # the created-timestamp column (feature_repo/problem_specs.py)


def _feast_env(settings: Settings) -> None:
    # The definition files read these (on an object-storage home the offline partitions are
    # s3://.../features, read through MLCORE_S3_ENDPOINT_URL).
    os.environ["MLCORE_HOME"] = (str(settings.home.resolve()) if settings.home_is_local
                                 else settings.home_uri)
    os.environ["MLCORE_PROBLEMS_DIR"] = str(settings.problems_dir.resolve())


def _local_config(settings: Settings, config: Path) -> Any:
    """The ``RepoConfig`` of ``config`` on an object-storage home whose config keeps Feast's
    embedded registry/online store under ``${MLCORE_HOME}/feast``: read as Feast reads it, with
    ``${MLCORE_HOME}`` there taken as the folder holding ``Settings.feast_dir``
    (``MLCORE_LOCAL_DIR``); the process environment is left alone. None: Feast reads the file
    itself (a folder home, or server stores that name no local path)."""
    text = config.read_text()
    if settings.home_is_local or "${MLCORE_HOME}" not in text:
        return None
    import yaml
    from feast.repo_config import RepoConfig

    feast_dir = settings.feast_dir.resolve()  # raises NotOnObjectStorage without a local dir
    feast_dir.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(os.path.expandvars(text.replace("${MLCORE_HOME}", str(feast_dir.parent))))
    repo_config = RepoConfig(**raw)
    repo_config.repo_path = settings.feature_repo.resolve()
    return repo_config


def feature_store(settings: Settings) -> FeatureStore:
    """The Feast store of ``feature_repo/`` over this settings' home.

    Configured by ``settings.feast_config_file``: ``MLCORE_FEAST_CONFIG`` (a production variant
    such as ``deploy/feature_store.postgres.yaml``) or ``feature_repo/feature_store.yaml``.
    Relative paths in that file resolve against ``feature_repo/``, as with the default.

    Raises:
        FileNotFoundError: the configured ``feature_store.yaml`` does not exist.
        NotOnObjectStorage: an object-storage home, an embedded store and no MLCORE_LOCAL_DIR.
    """
    from feast import FeatureStore

    config = settings.feast_config_file.resolve()
    if not config.is_file():
        raise FileNotFoundError(f"Feast config {config} not found (MLCORE_FEAST_CONFIG)")
    _feast_env(settings)
    if settings.home_is_local:
        (settings.home / "feast").mkdir(parents=True, exist_ok=True)
    repo_path = str(settings.feature_repo.resolve())
    if (repo_config := _local_config(settings, config)) is not None:
        return FeatureStore(repo_path=repo_path, config=repo_config)
    return FeatureStore(repo_path=repo_path, fs_yaml_file=config)


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
    with file_lock(settings.feast_dir / "online_store.lock"):
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


def materialize_online(spec: ProblemSpec, settings: Settings, store: FeatureStore,
                       frame: pa.Table | Iterable[pa.Table], start: datetime,
                       end: datetime) -> None:
    """Write a batch's engineered frame online; a late or re-run older batch never regresses it.
    (PostgreSQL and Redis take ``mlcore.feast.online_write`` instead: see
    ``mlcore.features.materialize_online``; the Feast path below is for any other store.)

    With mlcore's SQLite store (``mlcore.feast.sqlite_online``) the frame is written in bulk and
    the store's upsert keeps the newer row; other stores go through Feast's ``materialize`` up to
    the newest window already online, so Feast keeps the latest row.
    """
    with online_store_lock(settings, store):
        if fast_store(store):
            write_online(store, spec, frame, start, end)
        else:
            online_end = max(end, _latest_window_end(spec.name, settings.db_url) or end)
            store.materialize(start_date=start, end_date=online_end,
                              feature_views=[spec.feature_view])


def fast_store(store: FeatureStore) -> bool:
    from mlcore.feast.sqlite_online import FastSqliteOnlineStoreConfig

    return isinstance(store.config.online_store, FastSqliteOnlineStoreConfig)


def write_online(store: FeatureStore, spec: ProblemSpec, frame: pa.Table | Iterable[pa.Table],
                 start: datetime, end: datetime) -> None:
    """The bulk path: the engineered frame (or its chunks, one at a time) straight into
    mlcore's SQLite online store, and the interval into Feast's registry once, as
    ``materialize`` records it."""
    from pyarrow import Table

    from mlcore.feast.sqlite_online import FastSqliteOnlineStore

    view = store.get_feature_view(spec.feature_view)
    writer = FastSqliteOnlineStore()
    try:
        for chunk in [frame] if isinstance(frame, Table) else frame:
            created = CREATED if CREATED in chunk.column_names else None  # newer batch wins a tie
            writer.write_frame(store.config, view, chunk, created_col=created)
    finally:
        writer.disconnect()
    store.registry.apply_materialization(view, store.project, start, end)


def _latest_window_end(problem: str, url: str) -> datetime | None:
    with session_scope(url) as s:
        latest = s.scalar(select(func.max(Materialization.window_end))
                          .where(Materialization.problem == problem))
    # SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC.
    return latest.replace(tzinfo=UTC) if latest is not None and latest.tzinfo is None else latest

