"""Shadow evidence: the challenger, scored next to the champion on every batch, compared once
their labels have matured — through the same decision rules as a retrain (``judge``), recorded
as an evaluation with a run card, and (``retrain.shadow_promotion``) allowed to promote it.

Only batches neither model trained or was judged on count, and only labelled rows whose event
time is at least ``labels.maturity_days`` old; an unlabelled row is never given a label.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from mlcore.config import Settings
from mlcore.data.io import read_curated
from mlcore.evaluation import Assessment, check_fair_holdout
from mlcore.model.evaluation import judge
from mlcore.model.registry import CHALLENGER, alias_holder, get_version
from mlcore.problems import ProblemSpec
from mlcore.promotion import promote_shadow, record_evaluation
from mlcore.scoring import stored_outputs
from mlcore.store.catalog import get_batch
from mlcore.store.models import GroundTruth, ModelVersion, Prediction, utcnow
from mlcore.store.session import session_scope


def _seen_batches(mv: ModelVersion) -> set[str]:
    """Batches a version trained on or was judged on when it was trained."""
    rec = (mv.reproducibility or {}).get("dataset") or {}
    return {*mv.training_batch_ids, *rec.get("holdout_batches", [])}


def evidence(spec: ProblemSpec, settings: Settings, champion: ModelVersion,
             challenger: ModelVersion, as_of: datetime | None = None) -> pd.DataFrame:
    """Matured, labelled rows scored by both models: key, batch, label, both scores, event time
    and the guardrail slice columns; batches either model has seen are left out."""
    url, key = settings.db_url, spec.entity.key
    cutoff = (as_of or utcnow()) - timedelta(days=spec.labels.maturity_days)
    versions = (champion.version, challenger.version)
    with session_scope(url) as s:
        scored = pd.DataFrame(s.execute(select(
            Prediction.batch_id, Prediction.entity_key, Prediction.model_version, Prediction.score,
            Prediction.probabilities)
            .where(Prediction.problem == spec.name, Prediction.model_version.in_(versions))).all(),
            columns=["batch_id", "entity_key", "model_version", "score", "probabilities"])
        labels = pd.DataFrame(s.execute(select(
            GroundTruth.batch_id, GroundTruth.entity_key, GroundTruth.label)
            .where(GroundTruth.problem == spec.name)).all(),
            columns=["batch_id", "entity_key", "label"])
    if scored.empty or labels.empty:
        return pd.DataFrame()
    sides = [scored[scored["model_version"] == v].drop(columns="model_version").rename(
        columns={"score": f"p_{role}", "probabilities": f"probs_{role}"})
        for v, role in ((champion.version, "champion"), (challenger.version, "challenger"))]
    wide = sides[0].merge(sides[1], on=["batch_id", "entity_key"])  # scored by both
    if wide.empty:
        return pd.DataFrame()
    rows = wide.merge(labels, on=["batch_id", "entity_key"])  # labelled only
    rows = rows[~rows["batch_id"].isin(_seen_batches(champion) | _seen_batches(challenger))]
    parts = []
    for batch_id, part in rows.groupby("batch_id", sort=True):
        curated = read_curated(get_batch(spec.name, str(batch_id), url),
                               [key, "event_timestamp", *spec.promotion.guardrails.slices])
        curated["entity_key"] = curated[key].astype(str)
        parts.append(part.merge(curated, on="entity_key"))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    matured = pd.to_datetime(out["event_timestamp"], utc=True) <= cutoff
    return out[matured].rename(columns={"label": spec.target.name}).reset_index(drop=True)


def compare_shadow(spec: ProblemSpec, settings: Settings,
                   as_of: datetime | None = None) -> dict[str, Any] | None:
    """Judge the challenger against the champion on the matured shadow evidence.

    Returns None without a challenger; ``{"outcome": "not enough evidence", ...}`` below
    ``labels.min_rows`` rows; else the recorded decision, with ``promoted`` True when
    ``retrain.shadow_promotion`` let it move the champion alias.
    """
    url = settings.db_url
    champ, chall = alias_holder(spec.name, url), alias_holder(spec.name, url, CHALLENGER)
    if champ is None or chall is None or champ == chall:
        return None
    champion, challenger = get_version(spec.name, champ, url), get_version(spec.name, chall, url)
    rows = evidence(spec, settings, champion, challenger, as_of)
    if len(rows) < spec.labels.min_rows:
        return {"outcome": "not enough evidence", "rows": len(rows), "promoted": False,
                "reason": f"{len(rows)} matured labelled rows scored by both champion v{champ} "
                          f"and challenger v{chall}; {spec.labels.min_rows} needed"}
    check_fair_holdout(spec, rows, [champion, challenger], settings)
    y = rows[spec.target.name].to_numpy()
    p_new, p_old = (stored_outputs(rows[f"p_{r}"].to_numpy(), rows[f"probs_{r}"].tolist())
                    for r in ("challenger", "champion"))
    decision, details = judge(spec, rows, p_new, p_old)
    details["split"] = "shadow"
    if decision.promote and not spec.retrain.shadow_promotion:
        decision = replace(decision, reason=f"{decision.reason} (shadow evidence only: "
                           "retrain.shadow_promotion is off, the champion stays)")
    batches = sorted(rows["batch_id"].unique().tolist())
    digest = hashlib.sha256(pd.util.hash_pandas_object(
        rows[["batch_id", "entity_key", spec.target.name]], index=False).to_numpy().tobytes())
    result = record_evaluation(spec, settings, Assessment(
        challenger, champion, y, p_new, np.asarray(p_old), decision, details,
        {"batches": batches, "rows": len(rows), "hash": digest.hexdigest(), "method": "shadow"}))
    promoted = promote_shadow(spec, settings, champ, chall, len(rows), decision,
                              result["evaluation_id"])
    return {**result, "rows": len(rows), "promoted": promoted}
