"""Lineage: from a model version back to its batches, data, evaluations and alias moves; from a
batch forward to the models trained on it, the evaluations it judged, its predictions and drift."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select

from mlcore.batches import BatchNotFound, check_batch_id
from mlcore.model.registry import get_version
from mlcore.store.catalog import find_batch
from mlcore.store.models import (
    AliasHistory,
    Batch,
    DriftReport,
    Evaluation,
    Materialization,
    ModelVersion,
    Prediction,
)
from mlcore.store.session import session_scope


def _evaluation(e: Evaluation) -> dict[str, Any]:
    return {"id": e.id, "contender": e.contender_version, "champion": e.champion_version,
            "holdout": e.holdout_batch_ids, "holdout_hash": e.holdout_hash,
            "holdout_rows": e.holdout_rows, "metric": e.metric, "delta": e.delta,
            "ci": None if e.ci_low is None else [e.ci_low, e.ci_high], "promote": e.promote,
            "outcome": e.outcome, "reason": e.reason, "run_card": e.run_card_uri}


def model_lineage(problem: str, version: int, url: str) -> dict[str, Any]:
    """Everything needed to explain and reproduce ``version``.

    ``judged_on`` lists the holdouts it was evaluated on as the contender (batch IDs and hash).

    Raises:
        ModelNotFound: no such version.
    """
    mv = get_version(problem, version, url)
    with session_scope(url) as s:
        batches = s.scalars(select(Batch).where(Batch.problem == problem,
                                                Batch.batch_id.in_(mv.training_batch_ids)))
        evals = list(s.scalars(select(Evaluation).where(
            Evaluation.problem == problem,
            or_(Evaluation.contender_version == version, Evaluation.champion_version == version))
            .order_by(Evaluation.id)))
        moves = s.scalars(select(AliasHistory).where(
            AliasHistory.problem == problem,
            or_(AliasHistory.to_version == version, AliasHistory.from_version == version))
            .order_by(AliasHistory.id))
        return {
            "problem": problem, "version": version, "algorithm": mv.algorithm,
            "hyperparameters": mv.hyperparameters, "artifact_uri": mv.artifact_uri,
            "artifact_sha256": mv.artifact_sha256, "code_version": mv.code_version,
            "spec_hash": mv.spec_hash, "data_hash": mv.data_hash, "train_rows": mv.train_rows,
            "dataset": mv.metrics.get("dataset_id"), "timings": mv.timings,
            "reproducibility": mv.reproducibility,
            "training_batches": [{"batch_id": b.batch_id, "sha256": b.sha256,
                                  "source_uri": b.source_uri, "rows": b.row_count}
                                 for b in batches],
            "judged_on": [{"evaluation_id": e.id, "holdout_batch_ids": e.holdout_batch_ids,
                           "holdout_hash": e.holdout_hash, "holdout_rows": e.holdout_rows}
                          for e in evals if e.contender_version == version],
            "evaluations": [_evaluation(e) for e in evals],
            "alias_history": [{"alias": h.alias, "from": h.from_version, "to": h.to_version,
                               "action": h.action, "evaluation_id": h.evaluation_id,
                               "actor": h.actor, "reason": h.reason,
                               "at": h.created_at.isoformat()} for h in moves],
        }


def _manifest(b: Batch) -> dict[str, Any]:
    return {"sha256": b.sha256, "rows": b.row_count, "quarantine_count": b.quarantine_count,
            "state": b.state, "source_uri": b.source_uri, "schema_hash": b.schema_hash,
            "curated_uri": b.curated_uri,
            "event_time": [b.event_time_min and b.event_time_min.isoformat(),
                           b.event_time_max and b.event_time_max.isoformat()]}


def batch_lineage(problem: str, batch_id: str, url: str) -> dict[str, Any]:
    """Everything that used ``batch_id``: models trained on it, evaluations that held it out,
    predictions made for it (count per model version), drift reports, and its manifest.

    Model versions and evaluations (one per retrain, few) are filtered in Python because their
    batch lists are JSON, which SQLite and PostgreSQL cannot search the same way; predictions
    (up to millions) are counted in SQL.

    Raises:
        InvalidBatchId: the ID is malformed (checked before any SQL).
        BatchNotFound: no manifest with that ID, in any state.
    """
    check_batch_id(batch_id)
    batch = find_batch(problem, batch_id, url)
    if batch is None:
        raise BatchNotFound(f"batch {batch_id!r} of {problem!r} is unknown (no manifest)")
    with session_scope(url) as s:
        models = [{"version": v, "algorithm": a, "training_batch_ids": ids}
                  for v, a, ids in s.execute(
                      select(ModelVersion.version, ModelVersion.algorithm,
                             ModelVersion.training_batch_ids)
                      .where(ModelVersion.problem == problem).order_by(ModelVersion.version))
                  if batch_id in ids]
        evals = [_evaluation(e) for e in s.scalars(
            select(Evaluation).where(Evaluation.problem == problem).order_by(Evaluation.id))
            if batch_id in e.holdout_batch_ids]
        predictions = [{"model_version": v, "count": n} for v, n in s.execute(
            select(Prediction.model_version, func.count()).where(
                Prediction.problem == problem, Prediction.batch_id == batch_id)
            .group_by(Prediction.model_version).order_by(Prediction.model_version))]
        drift = [{"model_version": d.model_version, "drift_share": d.drift_share,
                  "dataset_drift": d.dataset_drift, "drifted_columns": d.drifted_columns,
                  "json_uri": d.json_uri, "html_uri": d.html_uri}
                 for d in s.scalars(select(DriftReport).where(
                     DriftReport.problem == problem, DriftReport.batch_id == batch_id)
                     .order_by(DriftReport.model_version))]
        feats = s.scalar(select(Materialization).where(Materialization.problem == problem,
                                                       Materialization.batch_id == batch_id))
        return {"problem": problem, "batch_id": batch_id, "manifest": _manifest(batch),
                "materialization": None if feats is None else {
                    "feature_view": feats.feature_view, "offline_uri": feats.offline_uri,
                    "rows": feats.rows},
                "trained_models": models, "holdout_evaluations": evals,
                "predictions": predictions, "drift_reports": drift}
