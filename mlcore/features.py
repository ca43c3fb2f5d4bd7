"""Features: engineer a batch into the offline store, apply Feast definitions, materialize online,
and build point-in-time-correct frames for training and scoring."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import delete

from mlcore.config import Settings
from mlcore.ingestion import get_batch, read_curated
from mlcore.problems import ProblemSpec
from mlcore.store.models import Batch, Materialization
from mlcore.store.session import session_scope

if TYPE_CHECKING:
    from feast import FeatureStore

ROW_ID = "__row_id"


class FeatureRetrievalError(RuntimeError):
    """The feature store returned fewer rows than asked for."""


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
    """The offline-store row of each entity: key, event time and features with Feast's dtypes."""
    out = curated[[spec.entity.key, "event_timestamp"]].copy()
    for feat in spec.features:
        out[feat.name] = curated[feat.name].astype("float32" if feat.kind == "numeric"
                                                   else "int64")
    return out


def write_offline(frame: pd.DataFrame, dest: Path) -> None:
    """Write one batch's partition atomically (staging dir, then rename)."""
    staging = dest.with_name(f".staging-{dest.name}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    frame.to_parquet(staging / "part-0.parquet", index=False)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)


def _feast_env(settings: Settings) -> None:
    # feature_store.yaml and the definition files read these; feast expands ${VAR} itself.
    os.environ["MLCORE_HOME"] = str(settings.home.resolve())
    os.environ["MLCORE_PROBLEMS_DIR"] = str(settings.problems_dir.resolve())
    (settings.home / "feast").mkdir(parents=True, exist_ok=True)


def feature_store(settings: Settings) -> FeatureStore:
    """The Feast store of ``feature_repo/`` over this settings' home."""
    from feast import FeatureStore

    _feast_env(settings)
    return FeatureStore(repo_path=str(settings.feature_repo.resolve()))


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


def materialize_batch(spec: ProblemSpec, batch_id: str,
                      settings: Settings) -> MaterializationResult:
    """Engineer a published batch into the offline store and materialize it online (idempotent)."""
    batch = get_batch(spec.name, batch_id, settings.db_url)
    frame = engineer(read_curated(batch), spec)
    dest = settings.partition("features", spec.name, batch_id)
    write_offline(frame, dest)
    store = feature_store(settings)
    if spec.feature_view not in {fv.name for fv in store.list_feature_views()}:
        apply_definitions(settings)
        store = feature_store(settings)
    start = frame["event_timestamp"].min().to_pydatetime() - timedelta(seconds=1)
    end = frame["event_timestamp"].max().to_pydatetime() + timedelta(seconds=1)
    store.materialize(start_date=start, end_date=end, feature_views=[spec.feature_view])
    _record(spec, batch_id, dest, len(frame), start, end, settings.db_url)
    return MaterializationResult(spec.name, batch_id, spec.feature_view, str(dest), len(frame),
                                 start.isoformat(), end.isoformat())


def _record(spec: ProblemSpec, batch_id: str, dest: Path, rows: int, start: datetime,
            end: datetime, url: str) -> None:
    with session_scope(url) as s:
        s.execute(delete(Materialization).where(Materialization.problem == spec.name,
                                                Materialization.batch_id == batch_id))
        s.add(Materialization(problem=spec.name, batch_id=batch_id, feature_view=spec.feature_view,
                              offline_uri=str(dest), rows=rows, window_start=start,
                              window_end=end))


def historical_features(spec: ProblemSpec, batches: list[Batch], settings: Settings,
                        with_target: bool = True) -> pd.DataFrame:
    """Point-in-time join of the batches' entity rows with the offline store, in input order.

    Each row asks for features as of its own event time, so no row sees a later value.

    Raises:
        FeatureRetrievalError: an entity row got no features (not materialized, or out of TTL).
    """
    cols = [spec.entity.key, "event_timestamp"] + ([spec.target.name] if with_target else [])
    entity_df = pd.concat([read_curated(b, cols).assign(batch_id=b.batch_id) for b in batches],
                          ignore_index=True)
    entity_df[ROW_ID] = range(len(entity_df))
    store = feature_store(settings)
    service = store.get_feature_service(spec.feature_service)
    out = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    if len(out) != len(entity_df) or out[spec.feature_names].isna().any().any():
        ids = ", ".join(b.batch_id for b in batches)
        raise FeatureRetrievalError(
            f"batches {ids} of {spec.name!r}: {len(entity_df) - len(out.dropna())} of "
            f"{len(entity_df)} rows have no features in the offline store (not materialized?)")
    return out.sort_values(ROW_ID).drop(columns=[ROW_ID]).reset_index(drop=True)
