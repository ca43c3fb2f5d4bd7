"""Evaluation: contender vs champion on the same frozen holdout that neither trained on (checked
by row key), a paired-bootstrap CI of the metric delta, guardrails (slices, throughput) and a
promotion decision with every number behind it (TFX-style floor + change threshold + blessing),
written as a run card."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcore.config import Settings
from mlcore.datasets import DatasetRef, load_part
from mlcore.drift_report import links
from mlcore.metrics import compute_metrics, metric, paired_bootstrap
from mlcore.problems import ProblemSpec
from mlcore.store.models import Evaluation
from mlcore.store.session import session_scope
from mlcore.targets import predict

if TYPE_CHECKING:
    from mlcore.store.models import ModelVersion

log = logging.getLogger(__name__)

PROMOTE = "promote"
KEEP_WORSE = "keep: worse"
KEEP_TOO_CLOSE = "keep: too close to call"
REJECT_FLOOR = "reject: failed floor"
REJECT_GUARDRAIL = "reject: failed guardrail"
OUTCOMES = (PROMOTE, KEEP_WORSE, KEEP_TOO_CLOSE, REJECT_FLOOR, REJECT_GUARDRAIL)



def predict_proba(model: Any, X: pd.DataFrame) -> np.ndarray:
    """The model's outputs (``mlcore.targets.predict``): P(positive) for binary, one
    probability per class for multiclass, the value for regression."""
    return predict(model, X)


def weighted_metric(name: str, y: np.ndarray, p: np.ndarray, w: np.ndarray,
                    kind: str = "binary") -> float:
    """``metric`` of the rows repeated ``w`` times, without materializing the repeats."""
    return metric(name, y, p, kind, w)


@dataclass(frozen=True)
class PromotionDecision:
    """The blessing: the outcome, the numbers behind it and why.

    ``delta``/``ci_*`` are oriented so that positive always means "contender is better".
    """

    promote: bool
    outcome: str
    reason: str
    metric: str
    contender: float
    champion: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    guardrails: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "guardrails": list(self.guardrails)}


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def decide(spec: ProblemSpec, contender: float, champion: float | None,
           ci: tuple[float, float] | None,
           guardrails: list[dict[str, Any]] | None = None) -> PromotionDecision:
    """The rule, in order: a NaN or below-floor contender is rejected; with no champion the
    floor alone decides; otherwise the oriented delta must exceed ``min_improvement`` with a CI
    lower bound above ``-non_inferiority_margin`` (else "worse" when the whole CI is below 0,
    "too close to call" otherwise); a would-be promotion failing a guardrail is rejected.

    ``ci`` is oriented like the delta (positive: contender better).
    """
    name, rule, sign = spec.metric_name, spec.promotion, spec.sign
    checks = tuple(guardrails or ())

    def out(outcome: str, why: str, delta: float | None = None,
            low: float | None = None, high: float | None = None) -> PromotionDecision:
        return PromotionDecision(outcome == PROMOTE, outcome, why, name, contender, champion,
                                 delta, low, high, checks)

    if not _finite(contender):
        return out(REJECT_FLOOR, f"contender {name} is NaN (non-finite scores?); never promoted")
    if sign * (contender - rule.min_metric) < 0:
        return out(REJECT_FLOOR, f"{name} {contender:.4f} misses the floor {rule.min_metric}")
    if champion is None:
        return out(PROMOTE, f"no champion: judged by the absolute floor alone; {name} "
                   f"{contender:.4f} clears {rule.min_metric}")
    if ci is None or not _finite(champion, *ci):
        return out(REJECT_GUARDRAIL, f"champion {name} or its CI is NaN; no paired comparison "
                   "is possible, so nothing is promoted automatically")
    delta = sign * (contender - champion)
    low, high = ci
    numbers = (f"delta {delta:+.4f} {name}, {rule.confidence:.0%} CI {low:+.4f}..{high:+.4f}, "
               f"min improvement {rule.min_improvement}, margin {rule.non_inferiority_margin}")
    if not (delta > rule.min_improvement and low > -rule.non_inferiority_margin):
        if high < 0:
            return out(KEEP_WORSE, f"contender is worse than the champion: {numbers}; champion "
                       "kept", delta, low, high)
        return out(KEEP_TOO_CLOSE, f"too close to call: {numbers}; champion kept",
                   delta, low, high)
    failed = [g for g in checks if g["ok"] is False]
    if failed:
        return out(REJECT_GUARDRAIL, f"contender is better ({numbers}) but fails "
                   + "; ".join(f"{g['name']}: {g['detail']}" for g in failed), delta, low, high)
    return out(PROMOTE, f"contender beats the champion: {numbers}; guardrails pass",
               delta, low, high)


def timed_scores(model: Any, X: pd.DataFrame, repeats: int = 3,
                 budget_seconds: float = 0.5) -> tuple[np.ndarray, float]:
    """Scores and throughput (rows per second) of ``model`` on ``X``.

    Throughput is the best of up to ``repeats`` passes, but passes stop once ``budget_seconds``
    are spent: a large holdout is scored once (one long pass is a steady measurement; three
    cost as much as a fit, see benchmarks/BENCHMARKS.md), a small one up to ``repeats`` times.
    """
    best, spent, p = math.inf, 0.0, np.empty(0)
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        p = predict_proba(model, X)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent >= budget_seconds:
            break
    return p, len(X) / max(best, 1e-9)


def slice_checks(spec: ProblemSpec, frame: pd.DataFrame, y: np.ndarray, p_new: np.ndarray,
                 p_old: np.ndarray | None) -> list[dict[str, Any]]:
    """The primary metric within each value of each guardrail column, both models.

    Values with fewer than ``min_slice_rows`` rows or a single class are reported, not judged
    (``ok`` None); with no champion nothing is judged.
    """
    rules, name, sign, kind = (spec.promotion.guardrails, spec.metric_name, spec.sign,
                               spec.target.kind)
    rows = []
    for column, bound in sorted(rules.slices.items()):
        values = frame[column].to_numpy()
        for value in np.unique(values):
            mask = values == value
            n, ys = int(mask.sum()), y[mask]
            new = metric(name, ys, p_new[mask], kind)
            old = None if p_old is None else metric(name, ys, p_old[mask], kind)
            delta = None if old is None else sign * (new - old)
            note = ""
            if p_old is None:
                note = "no champion"
            elif n < rules.min_slice_rows:
                note = f"fewer than {rules.min_slice_rows} rows: not judged"
            elif not _finite(new, old):
                note = "metric undefined (one class or NaN scores): not judged"
            ok = None if note else bool(delta is not None and delta >= -bound)
            rows.append({"column": column, "value": str(value), "rows": n, "contender": new,
                         "champion": old, "delta": delta, "bound": bound, "ok": ok,
                         "note": note})
    return rows


def throughput_check(spec: ProblemSpec, new_rps: float | None,
                     old_rps: float | None) -> dict[str, Any]:
    """Contender rows/s against the champion's, on the same rows (not judged without both)."""
    drop = spec.promotion.guardrails.max_throughput_drop
    ratio = None if old_rps is None or new_rps is None else new_rps / old_rps
    return {"contender": new_rps, "champion": old_rps, "ratio": ratio, "max_drop": drop,
            "ok": None if ratio is None else ratio >= 1 - drop}


def guardrail_list(slices: list[dict[str, Any]], speed: dict[str, Any]) -> list[dict[str, Any]]:
    """The judged guardrails as ``{name, ok, detail}`` (what ``decide`` gates on)."""
    out = [{"name": f"slice {r['column']}={r['value']}", "ok": r["ok"],
            "detail": f"{r['rows']} rows, delta {r['delta']:+.4f} (bound -{r['bound']})"}
           for r in slices if r["ok"] is not None]
    if speed["ok"] is not None:
        out.append({"name": "throughput", "ok": speed["ok"],
                    "detail": f"{speed['contender']:,.0f} vs {speed['champion']:,.0f} rows/s "
                              f"(ratio {speed['ratio']:.2f}, may drop at most "
                              f"{speed['max_drop']:.0%})"})
    return out


class UnfairHoldout(ValueError):
    """A model being compared trained on rows of the holdout."""


def _row_keys(spec: ProblemSpec, frame: pd.DataFrame) -> np.ndarray:
    """One hash per row of (entity key as text, event time in UTC nanoseconds), whatever the
    frame's dtypes (a Feast join and a curated file store the same moment differently)."""
    stamps = pd.to_datetime(frame["event_timestamp"], utc=True).dt.as_unit("ns")
    norm = pd.DataFrame({"key": frame[spec.entity.key].astype(str).to_numpy(),
                         "at": stamps.astype("int64").to_numpy()})
    return pd.util.hash_pandas_object(norm, index=False).to_numpy()


def training_rows_path(mv: ModelVersion, settings: Settings) -> Path:
    """Where a version's training part is (recorded, or the content-addressed default)."""
    rec = mv.reproducibility or {}
    if "dataset" in rec:
        return Path(rec["dataset"]["train_uri"])
    return (settings.home / "datasets" / f"problem={mv.problem}"
            / f"dataset={mv.metrics['dataset_id']}" / "train.parquet")


def check_fair_holdout(spec: ProblemSpec, holdout: pd.DataFrame, models: list[ModelVersion],
                       settings: Settings) -> None:
    """Check by row key (entity key, event time) that no model trained on a holdout row.

    Raises:
        UnfairHoldout: a model's training rows overlap the holdout, or they cannot be read.
    """
    held = _row_keys(spec, holdout)
    for mv in models:
        path = training_rows_path(mv, settings)
        if not path.is_file():
            raise UnfairHoldout(f"{spec.name!r} v{mv.version}: its training rows ({path}) are "
                                "gone, so a fair holdout cannot be checked")
        trained = pd.read_parquet(path, columns=[spec.entity.key, "event_timestamp"])
        overlap = int(np.isin(held, _row_keys(spec, trained)).sum())
        if overlap:
            raise UnfairHoldout(f"{spec.name!r} v{mv.version} trained on {overlap} of the "
                                f"{len(holdout)} holdout rows; it cannot be judged on them")


def paired_ci(spec: ProblemSpec, y: np.ndarray, p_new: np.ndarray,
              p_old: np.ndarray) -> tuple[float, float] | None:
    """The oriented CI of the delta (positive: contender better); None if scores are NaN."""
    if not (np.isfinite(p_new).all() and np.isfinite(p_old).all()):
        return None
    rule = spec.promotion
    low, high = paired_bootstrap(y, p_new, p_old, spec.metric_name, rule.bootstrap_samples,
                                 rule.confidence, rule.seed, spec.target.kind)
    return (low, high) if spec.direction == "maximize" else (-high, -low)


def judge(spec: ProblemSpec, holdout: pd.DataFrame, p_new: np.ndarray, p_old: np.ndarray | None,
          new_rps: float | None = None, old_rps: float | None = None
          ) -> tuple[PromotionDecision, dict[str, Any]]:
    """The decision from both models' scores on the same holdout rows (``p_old`` None: no
    champion), and the details behind it (slices, throughput, bootstrap settings)."""
    y, name, kind = holdout[spec.target.name].to_numpy(), spec.metric_name, spec.target.kind
    slices = slice_checks(spec, holdout, y, p_new, p_old)
    speed = throughput_check(spec, new_rps, old_rps)
    decision = decide(spec, metric(name, y, p_new, kind),
                      None if p_old is None else metric(name, y, p_old, kind),
                      None if p_old is None else paired_ci(spec, y, p_new, p_old),
                      guardrail_list(slices, speed))
    return decision, {"slices": slices, "throughput": speed,
                      "confidence": spec.promotion.confidence,
                      "bootstrap_samples": spec.promotion.bootstrap_samples,
                      "bootstrap_seed": spec.promotion.seed}


def evaluate_contender(spec: ProblemSpec, dataset: DatasetRef, contender: int,
                       settings: Settings) -> dict[str, Any]:
    """Score contender and current champion on the dataset's frozen holdout, decide, record the
    decision with every number used, and write its run card.

    Returns:
        The decision plus ``evaluation_id``, ``contender_version``, ``champion_version``,
        ``holdout_batches`` and ``run_card``.

    Raises:
        UnfairHoldout: either model trained on holdout rows.
    """
    from mlcore.registry import alias_holder, get_version, load_model

    holdout = load_part(dataset.holdout_uri, dataset.holdout_hash)
    X, y = holdout[spec.feature_names], holdout[spec.target.name].to_numpy()
    new_mv = get_version(spec.name, contender, settings.db_url)
    champ = alias_holder(spec.name, settings.db_url)
    old_mv = None if champ is None else get_version(spec.name, champ, settings.db_url)
    check_fair_holdout(spec, holdout, [m for m in (new_mv, old_mv) if m is not None], settings)
    p_new, new_rps = timed_scores(load_model(new_mv, settings), X)
    p_old, old_rps = (None, None) if old_mv is None else timed_scores(
        load_model(old_mv, settings), X)
    decision, details = judge(spec, holdout, p_new, p_old, new_rps, old_rps)
    details["split"] = dataset.method
    return record_evaluation(spec, settings, new_mv, old_mv, y, p_new, p_old, decision, details,
                             {"batches": dataset.holdout_batches, "rows": len(holdout),
                              "hash": dataset.holdout_hash, "method": dataset.method})


def record_evaluation(spec: ProblemSpec, settings: Settings, new_mv: ModelVersion,
                      old_mv: ModelVersion | None, y: np.ndarray, p_new: np.ndarray,
                      p_old: np.ndarray | None, decision: PromotionDecision,
                      details: dict[str, Any], holdout: dict[str, Any]) -> dict[str, Any]:
    """Store a decision with every number used and write its run card (one transaction).

    ``holdout``: ``batches``, ``rows``, ``hash``, ``method`` of the rows both were judged on.
    """
    from mlcore.runcard import model_curves, write_run_card

    kind = spec.target.kind
    classes = version_classes(new_mv)
    speed = details.get("throughput") or {}
    new_metrics = {**compute_metrics(y, p_new, kind), "rows_per_second": speed.get("contender")}
    old_metrics = None if p_old is None else {**compute_metrics(y, p_old, kind),
                                              "rows_per_second": speed.get("champion")}
    contender, champ = new_mv.version, None if old_mv is None else old_mv.version
    with session_scope(settings.db_url) as s:
        row = Evaluation(
            problem=spec.name, contender_version=contender, champion_version=champ,
            holdout_batch_ids=holdout["batches"], holdout_hash=holdout["hash"],
            holdout_rows=holdout["rows"], metric=spec.metric.name,
            contender_metrics=_json(new_metrics), champion_metrics=_json(old_metrics),
            delta=decision.delta, ci_low=decision.ci_low, ci_high=decision.ci_high,
            thresholds=spec.promotion.model_dump(), promote=decision.promote,
            outcome=decision.outcome, reason=decision.reason, details=_json(details))
        s.add(row)
        s.flush()
        card = write_run_card(_json({
            "problem": spec.name, "evaluation_id": row.id, "links": links(spec.name),
            "created_at": row.created_at.isoformat(), "outcome": decision.outcome,
            "promote": decision.promote, "reason": decision.reason,
            "metric": spec.metric.model_dump(), "target": {"kind": kind, "classes": classes},
            "contender": {"version": contender, "algorithm": new_mv.algorithm,
                          "metrics": new_metrics, "rows_per_second": speed.get("contender"),
                          "curves": model_curves(kind, y, p_new, classes)},
            "champion": None if old_mv is None or p_old is None else {
                "version": champ, "algorithm": old_mv.algorithm, "metrics": old_metrics,
                "rows_per_second": speed.get("champion"),
                "curves": model_curves(kind, y, p_old, classes)},
            "delta": decision.delta,
            "ci": None if decision.ci_low is None else [decision.ci_low, decision.ci_high],
            "confidence": spec.promotion.confidence,
            "bootstrap_samples": spec.promotion.bootstrap_samples,
            "thresholds": spec.promotion.model_dump(), "holdout": holdout,
            "slices": details["slices"], "throughput": speed,
            "guardrails": list(decision.guardrails)}),
            settings.partition("reports", spec.name) / f"evaluation={row.id}")
        row.run_card_uri = str(card.html_path)
        eval_id = row.id
    log.info("evaluation %s of %s v%s: %s (%s); run card %s (%d bytes)", eval_id, spec.name,
             contender, decision.outcome, decision.reason, card.html_path, card.bytes)
    return {**_json(decision.to_dict()), "evaluation_id": eval_id,
            "contender_version": contender, "champion_version": champ,
            "holdout_batches": holdout["batches"], "run_card": str(card.html_path)}


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
    from mlcore.datasets import build_dataset
    from mlcore.registry import alias_holder, get_version, move_alias

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
