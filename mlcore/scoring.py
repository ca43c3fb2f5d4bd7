"""Scoring: a published batch through the champion, predictions keyed by batch, entity, version."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, insert

from mlcore.config import Settings
from mlcore.evaluation import predict_proba
from mlcore.features import historical_features, require_materialized
from mlcore.ingestion import get_batch
from mlcore.problems import ProblemSpec
from mlcore.registry import ModelNotFound, alias_holder, get_version, load_model
from mlcore.store.models import Prediction
from mlcore.store.session import session_scope

_CHUNK = 20_000


@dataclass(frozen=True)
class ScoringResult:
    """What ``score_batch`` stored."""

    problem: str
    batch_id: str
    model_version: int
    rows: int
    mean_score: float
    rows_per_second: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def score_batch(spec: ProblemSpec, batch_id: str, settings: Settings,
                version: int | None = None) -> ScoringResult:
    """Score every row of a published batch with the champion (or ``version``); idempotent.

    Raises:
        ModelNotFound: no champion yet and no version given.
        BatchNotFound: the batch is not published.
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    version = version or alias_holder(spec.name, settings.db_url)
    if version is None:
        raise ModelNotFound(f"batch {batch_id!r}: {spec.name!r} has no champion to score with")
    model = load_model(get_version(spec.name, version, settings.db_url), settings)
    require_materialized(spec.name, [batch_id], settings.db_url)
    frame = historical_features(spec, [batch], settings, with_target=False)
    start = time.perf_counter()
    scores = predict_proba(model, frame[spec.feature_names])
    rps = len(frame) / max(time.perf_counter() - start, 1e-9)
    keys = frame[spec.entity.key].astype(str).tolist()
    with session_scope(settings.db_url) as s:
        s.execute(delete(Prediction).where(Prediction.problem == spec.name,
                                           Prediction.batch_id == batch_id,
                                           Prediction.model_version == version))
        for lo in range(0, len(keys), _CHUNK):
            s.execute(insert(Prediction), [
                {"problem": spec.name, "batch_id": batch_id, "entity_key": k,
                 "model_version": version, "score": float(v)}
                for k, v in zip(keys[lo:lo + _CHUNK], scores[lo:lo + _CHUNK], strict=True)])
    return ScoringResult(spec.name, batch_id, version, len(keys), float(scores.mean()), rps)
