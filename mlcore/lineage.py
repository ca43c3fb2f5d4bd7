"""Lineage: from a model version back to its batches, data, evaluations and alias moves."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from mlcore.registry import get_version
from mlcore.store.models import AliasHistory, Batch, Evaluation
from mlcore.store.session import session_scope


def model_lineage(problem: str, version: int, url: str) -> dict[str, Any]:
    """Everything needed to explain and reproduce ``version``."""
    mv = get_version(problem, version, url)
    with session_scope(url) as s:
        batches = s.scalars(select(Batch).where(Batch.problem == problem,
                                                Batch.batch_id.in_(mv.training_batch_ids)))
        evals = s.scalars(select(Evaluation).where(
            Evaluation.problem == problem,
            or_(Evaluation.contender_version == version, Evaluation.champion_version == version)))
        moves = s.scalars(select(AliasHistory).where(
            AliasHistory.problem == problem,
            or_(AliasHistory.to_version == version, AliasHistory.from_version == version)))
        return {
            "problem": problem, "version": version, "algorithm": mv.algorithm,
            "hyperparameters": mv.hyperparameters, "artifact_uri": mv.artifact_uri,
            "artifact_sha256": mv.artifact_sha256, "code_version": mv.code_version,
            "spec_hash": mv.spec_hash, "data_hash": mv.data_hash, "train_rows": mv.train_rows,
            "dataset": mv.metrics.get("dataset_id"), "timings": mv.timings,
            "training_batches": [{"batch_id": b.batch_id, "sha256": b.sha256,
                                  "source_uri": b.source_uri, "rows": b.row_count}
                                 for b in batches],
            "evaluations": [{"id": e.id, "contender": e.contender_version,
                             "champion": e.champion_version, "holdout": e.holdout_batch_ids,
                             "holdout_hash": e.holdout_hash, "promote": e.promote,
                             "reason": e.reason} for e in evals],
            "alias_history": [{"from": h.from_version, "to": h.to_version, "action": h.action,
                               "actor": h.actor, "reason": h.reason,
                               "at": h.created_at.isoformat()} for h in moves],
        }
