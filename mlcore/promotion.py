"""Promotion: the only code that records an evaluation and moves the ``champion``/``challenger``
aliases. A retrain's contender is judged (``mlcore.evaluation``) and its decision recorded with a
run card; the champion moves on ``promote`` (after the DAG's gates), a too-close contender becomes
the challenger; a manual promotion is judged the same way unless forced; matured shadow evidence
may promote the challenger; a rollback undoes the last promotion. Every move goes through the
registry's compare-and-set (``move_alias``, which checks the artifact's SHA-256 first)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from mlcore.config import Settings
from mlcore.datasets import build_dataset
from mlcore.evaluation import Assessment, assess_contender
from mlcore.model.evaluation import KEEP_TOO_CLOSE, PromotionDecision
from mlcore.model.metrics import compute_metrics
from mlcore.model.registry import (
    CHALLENGER,
    CHAMPION,
    ModelNotFound,
    alias_holder,
    get_version,
    move_alias,
)
from mlcore.model.splits import DatasetRef
from mlcore.problems import ProblemSpec
from mlcore.reports.html import links
from mlcore.reports.runcard import write_evaluation_card
from mlcore.reports.runcard_data import model_curves
from mlcore.store.models import AliasHistory, Evaluation
from mlcore.store.session import session_scope

if TYPE_CHECKING:
    from mlcore.store.models import ModelVersion

log = logging.getLogger(__name__)


def evaluate_contender(spec: ProblemSpec, dataset: DatasetRef, contender: int,
                       settings: Settings) -> dict[str, Any]:
    """Score contender and current champion on the dataset's frozen holdout, decide, record the
    decision with every number used, and write its run card.

    Returns:
        The decision plus ``evaluation_id``, ``contender_version``, ``champion_version``,
        ``holdout_batches`` and ``run_card``.

    Raises:
        UnfairHoldout: fewer than ``evaluation.min_holdout_rows`` holdout rows are left that
            neither model trained on.
    """
    return record_evaluation(spec, settings, assess_contender(spec, dataset, contender, settings))


def mark_challenger(problem: str, decision: dict[str, Any], settings: Settings,
                    actor: str | None = None) -> int | None:
    """Make a too-close contender the ``challenger`` (shadow-scored next to the champion).

    Returns:
        The contender's version, or None when the decision is not "too close to call".
    """
    if decision["outcome"] != KEEP_TOO_CLOSE:
        return None
    url = settings.db_url
    move_alias(problem, alias=CHALLENGER, url=url, new=decision["contender_version"],
               expected=alias_holder(problem, url, CHALLENGER), reason=decision["reason"],
               evaluation_id=decision["evaluation_id"], actor=actor, settings=settings)
    return int(decision["contender_version"])


def promote_contender(problem: str, decision: dict[str, Any], settings: Settings,
                      actor: str | None = None) -> int:
    """Move the champion from the decision's champion to its contender (compare-and-set).

    Returns:
        The new champion's version.

    Raises:
        AliasConflict: the champion moved since the decision was taken.
    """
    move_alias(problem, expected=decision["champion_version"],
               new=decision["contender_version"], reason=decision["reason"],
               url=settings.db_url, evaluation_id=decision["evaluation_id"], actor=actor,
               settings=settings)
    return int(decision["contender_version"])


def record_evaluation(spec: ProblemSpec, settings: Settings, a: Assessment) -> dict[str, Any]:
    """Store a decision with every number used and write its run card (one transaction).

    ``a.holdout``: ``batches``, ``rows``, ``hash``, ``method`` of the rows both were judged on.
    """

    kind, speed = spec.target.kind, a.details.get("throughput") or {}
    new_metrics = {**compute_metrics(a.y, a.p_new, kind),
                   "rows_per_second": speed.get("contender")}
    old_metrics = None if a.p_old is None else {**compute_metrics(a.y, a.p_old, kind),
                                                "rows_per_second": speed.get("champion")}
    contender, champ = a.contender.version, None if a.champion is None else a.champion.version
    decision, holdout = a.decision, a.holdout
    with session_scope(settings.db_url) as s:
        row = Evaluation(
            problem=spec.name, contender_version=contender, champion_version=champ,
            holdout_batch_ids=holdout["batches"], holdout_hash=holdout["hash"],
            holdout_rows=holdout["rows"], metric=spec.metric.name,
            contender_metrics=_json(new_metrics), champion_metrics=_json(old_metrics),
            delta=decision.delta, ci_low=decision.ci_low, ci_high=decision.ci_high,
            thresholds=spec.promotion.model_dump(), promote=decision.promote,
            outcome=decision.outcome, reason=decision.reason, details=_json(a.details))
        s.add(row)
        s.flush()
        card = write_evaluation_card(_json(_run_card(spec, a, row, new_metrics, old_metrics)),
                                     settings, spec.name, row.id)
        row.run_card_uri = str(card.html_path)
        eval_id = row.id
    log.info("evaluation %s of %s v%s: %s (%s); run card %s (%d bytes)", eval_id, spec.name,
             contender, decision.outcome, decision.reason, card.html_path, card.bytes)
    return {**_json(decision.to_dict()), "evaluation_id": eval_id,
            "contender_version": contender, "champion_version": champ,
            "holdout_batches": holdout["batches"], "run_card": str(card.html_path)}


def _run_card(spec: ProblemSpec, a: Assessment, row: Evaluation, new_metrics: dict[str, Any],
              old_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The run card's content: the decision, both models' metrics and curves, the rule's
    settings, the holdout, the guardrails and the backtest."""

    kind, classes = spec.target.kind, version_classes(a.contender)
    speed, decision, old_mv = a.details.get("throughput") or {}, a.decision, a.champion
    return {
        "problem": spec.name, "evaluation_id": row.id, "links": links(spec.name),
        "created_at": row.created_at.isoformat(), "outcome": decision.outcome,
        "promote": decision.promote, "reason": decision.reason,
        "metric": spec.metric.model_dump(), "target": {"kind": kind, "classes": classes},
        "contender": {"version": a.contender.version, "algorithm": a.contender.algorithm,
                      "window": (a.contender.reproducibility or {}).get("window_why"),
                      "metrics": new_metrics, "rows_per_second": speed.get("contender"),
                      "curves": model_curves(kind, a.y, a.p_new, classes)},
        "champion": None if old_mv is None or a.p_old is None else {
            "version": old_mv.version, "algorithm": old_mv.algorithm, "metrics": old_metrics,
            "rows_per_second": speed.get("champion"),
            "curves": model_curves(kind, a.y, a.p_old, classes)},
        "delta": decision.delta,
        "ci": None if decision.ci_low is None else [decision.ci_low, decision.ci_high],
        "confidence": spec.promotion.confidence,
        "bootstrap_samples": spec.promotion.bootstrap_samples,
        "thresholds": spec.promotion.model_dump(), "holdout": a.holdout,
        "slices": a.details["slices"], "throughput": speed,
        "guardrails": list(decision.guardrails), "held_by": list(decision.held_by),
        "backtest": a.details.get("backtest") or []}


def version_classes(mv: ModelVersion) -> list[str]:
    """The class names a version predicts, from its record (binary before target kinds: 0, 1;
    regression: none)."""
    target = (mv.reproducibility or {}).get("target")
    if target is None:
        return ["0", "1"]
    return list(target["classes"])


def _json(value: Any) -> Any:
    """NaN and infinities as None, numpy scalars as Python ones (JSON columns, XCom)."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def promote_version(spec: ProblemSpec, version: int, reason: str, settings: Settings, *,
                    force: bool = False, actor: str | None = None) -> dict[str, Any]:
    """``mlcore promote``: judge ``version`` against the champion exactly like a retrain would
    (on the newest labelled batch as holdout), and move the alias only if it passes, unless
    ``force``. Returns the decision (``promoted`` says whether the alias moved).

    Raises:
        ArtifactIntegrityError: the artifact is missing or its bytes differ from the registered
            SHA-256 (``move_alias`` checks it on every move, forced or not).
    """

    get_version(spec.name, version, settings.db_url)
    current = alias_holder(spec.name, settings.db_url)
    if force:
        decision: dict[str, Any] = {"outcome": "forced", "reason": reason, "evaluation_id": None,
                                    "champion_version": current}
    else:
        decision = evaluate_contender(spec, build_dataset(spec, settings), version, settings)
    promoted = force or decision["promote"]
    if promoted:
        move_alias(spec.name, expected=current, new=version, url=settings.db_url,
                   reason=f"{reason} ({'forced, checks skipped' if force else decision['reason']})",
                   action="manual", actor=actor, evaluation_id=decision["evaluation_id"],
                   settings=settings)  # --force skips the quality checks, never the SHA-256
    return {**decision, "promoted": promoted, "version": version, "previous": current}


def set_challenger(problem: str, version: int, reason: str, settings: Settings, *,
                   expected: int | None, actor: str | None = None) -> None:
    """A manual challenger move (``mlcore promote --alias challenger``, the UI): the challenger
    is only shadow-scored, so there are no checks to pass beyond the artifact's SHA-256.

    Raises:
        AliasConflict: the challenger is no longer ``expected``.
        ModelNotFound: ``version`` is not registered.
    """
    get_version(problem, version, settings.db_url)
    move_alias(problem, expected=expected, new=version, reason=reason, url=settings.db_url,
               action="manual", actor=actor, alias=CHALLENGER, settings=settings)


def promote_shadow(spec: ProblemSpec, settings: Settings, champion: int, challenger: int,
                   rows: int, decision: PromotionDecision, evaluation_id: int) -> bool:
    """Move the champion to the challenger when matured shadow evidence says promote and
    ``retrain.shadow_promotion`` allows it. Returns whether it moved."""
    promoted = bool(spec.retrain.shadow_promotion and decision.promote)
    if promoted:
        move_alias(spec.name, expected=champion, new=challenger, url=settings.db_url,
                   action="shadow",
                   reason=f"shadow evidence on {rows} matured rows: {decision.reason}",
                   evaluation_id=evaluation_id, actor="batchloop:shadow", settings=settings)
    return promoted


def rollback(problem: str, reason: str, url: str, actor: str | None = None,
             settings: Settings | None = None) -> tuple[int, int]:
    """Move the champion back to the version it replaced (its artifact checked as in
    ``move_alias``). Returns (from, to).

    Raises:
        ModelNotFound: there is no champion, or it has no previous holder.
    """
    current = alias_holder(problem, url)
    if current is None:
        raise ModelNotFound(f"{problem!r} has no champion to roll back")
    with session_scope(url) as s:
        previous = s.scalar(
            select(AliasHistory.from_version)
            .where(AliasHistory.problem == problem, AliasHistory.alias == CHAMPION,
                   AliasHistory.to_version == current, AliasHistory.from_version.is_not(None),
                   AliasHistory.action != "rollback")  # undoing a rollback is not a rollback
            .order_by(AliasHistory.id.desc()).limit(1))
    if previous is None:
        raise ModelNotFound(f"{problem!r} champion v{current} has no previous holder")
    move_alias(problem, expected=current, new=previous, reason=reason, url=url,
               action="rollback", actor=actor, settings=settings)
    return current, previous
