"""Point-in-time retrieval in one piece: the batches' entity rows joined by Feast with the
offline store as of each row's event time, and the rules every retrieval path shares (which rows
lack features, entity rows of several batches sharing a key and event time, the errors)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from mlcore.config import Settings
from mlcore.data.integrity import offline_files
from mlcore.data.io import read_curated
from mlcore.data.validation import duplicate_mask
from mlcore.feast.store import feature_store
from mlcore.problems import ProblemSpec
from mlcore.store.models import Batch, Materialization
from mlcore.store.session import session_scope

ROW_ID = "__row_id"


class FeatureRetrievalError(RuntimeError):
    """A point-in-time join cannot answer: rows without features, or entity rows of several
    batches sharing a key and event time (the message names the cause and the batches)."""


def missing_features(frame: pd.DataFrame, spec: ProblemSpec) -> np.ndarray:
    """Rows a point-in-time join found no feature row for: a required (non-nullable) feature
    is missing, or, when every feature is nullable, all of them are."""
    nullable = {c for f in spec.features if f.nullable for c in f.model_columns}
    required = [c for c in spec.feature_names if c not in nullable]
    if required:
        return frame[required].isna().any(axis=1).to_numpy()
    return frame[spec.feature_names].isna().all(axis=1).to_numpy()


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

    return duplicate_mask(entity_df[spec.entity.key], entity_df["event_timestamp"])


def shared_error(spec: ProblemSpec, batches: list[Any], rows: int, where: set[str]) -> str:
    """The error text for ``rows`` entity rows sharing a key and event time (batches ``where``)."""
    return (f"batches {', '.join(b.batch_id for b in batches)} of {spec.name!r}: {rows} rows "
            f"share their ({spec.entity.key}, event time) with a row of another batch (in "
            f"{', '.join(repr(b) for b in sorted(where))}); a point-in-time join keeps one row "
            "per key and event time. The same rows were published twice (before cross-batch "
            "duplicate checks): leave the duplicate batch out, or declare corrections: supersede")

