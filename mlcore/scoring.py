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
from mlcore.registry import CHALLENGER, ModelNotFound, alias_holder, get_version, load_model
from mlcore.store.models import Prediction
from mlcore.store.session import session_scope

_CHUNK = 20_000


@dataclass(frozen=True)
class ScoringResult:
    """What ``score_batch`` stored (``challenger_*``: the shadow model's scores, if any)."""

    problem: str
    batch_id: str
    model_version: int
    rows: int
    mean_score: float
    rows_per_second: float
    challenger_version: int | None = None
    challenger_mean_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def score_batch(spec: ProblemSpec, batch_id: str, settings: Settings,
                version: int | None = None) -> ScoringResult:
    """Score every row of a published batch with the champion (or ``version``); idempotent.

    Shadow scoring: when a ``challenger`` exists (and no explicit version was asked for), the
    same rows are scored by it too and stored under its version; only the champion's scores are
    what consumers read as "the" prediction.

    Raises:
        ModelNotFound: no champion yet and no version given.
        BatchNotFound: the batch is not published.
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    shadow = None if version else alias_holder(spec.name, settings.db_url, CHALLENGER)
    version = version or alias_holder(spec.name, settings.db_url)
    if version is None:
        raise ModelNotFound(f"batch {batch_id!r}: {spec.name!r} has no champion to score with")
    model = load_model(get_version(spec.name, version, settings.db_url), settings)
    require_materialized(spec.name, [batch_id], settings.db_url)
    frame = historical_features(spec, [batch], settings, with_target=False)
    keys = frame[spec.entity.key].astype(str).tolist()
    start = time.perf_counter()
    scores = predict_proba(model, frame[spec.feature_names])
    rps = len(frame) / max(time.perf_counter() - start, 1e-9)
    _store(spec.name, batch_id, version, keys, scores, settings.db_url)
    shadow_mean = None
    if shadow is not None and shadow != version:
        challenger = load_model(get_version(spec.name, shadow, settings.db_url), settings)
        shadow_scores = predict_proba(challenger, frame[spec.feature_names])
        _store(spec.name, batch_id, shadow, keys, shadow_scores, settings.db_url)
        shadow_mean = float(shadow_scores.mean())
    return ScoringResult(spec.name, batch_id, version, len(keys), float(scores.mean()), rps,
                         shadow if shadow_mean is not None else None, shadow_mean)


def _store(problem: str, batch_id: str, version: int, keys: list[str], scores: Any,
           url: str) -> None:
    """Replace one version's predictions for a batch, in one transaction."""
    with session_scope(url) as s:
        s.execute(delete(Prediction).where(Prediction.problem == problem,
                                           Prediction.batch_id == batch_id,
                                           Prediction.model_version == version))
        for lo in range(0, len(keys), _CHUNK):
            s.execute(insert(Prediction), [
                {"problem": problem, "batch_id": batch_id, "entity_key": k,
                 "model_version": version, "score": float(v)}
                for k, v in zip(keys[lo:lo + _CHUNK], scores[lo:lo + _CHUNK], strict=True)])
