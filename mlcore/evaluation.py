"""Evaluation: contender vs champion on the same frozen holdout rows, none of which either
trained on (checked by row key; rows a model trained on are left out of the judgement), a
paired-bootstrap CI of the metric delta, guardrails (slices; throughput as a service level,
timed as interleaved one-thread passes) and a promotion decision with every number behind it
(TFX-style floor + change threshold + blessing), naming the spec setting that held a better
contender back, written as a run card."""

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
from mlcore.datasets import DatasetRef, event_ns, load_part
from mlcore.model.metrics import compute_metrics, metric, paired_bootstrap
from mlcore.model.targets import predict
from mlcore.problems import ProblemSpec
from mlcore.reports.drift_report import links
from mlcore.store.models import Evaluation
from mlcore.store.session import session_scope

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
    """The model's outputs (``mlcore.model.targets.predict``): P(positive) for binary, one
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
    # a contender better on the metric but not promoted: each rule that held it, the spec
    # setting behind the rule, its value, and the value that would have let it through
    held_by: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "guardrails": list(self.guardrails),
                "held_by": list(self.held_by)}


def _held(setting: str, value: Any, needed: str) -> dict[str, Any]:
    return {"setting": setting, "value": value, "would_change": needed,
            "text": f"{setting} is {value}; {needed}"}


def held_text(held_by: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """``"held by: <setting> is <value>; <what would change it>"``, one clause per rule."""
    return "held by: " + " | ".join(h["text"] for h in held_by) if held_by else ""


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
    failed = [g for g in checks if g["ok"] is False]

    def out(outcome: str, why: str, delta: float | None = None, low: float | None = None,
            high: float | None = None, held: tuple[dict[str, Any], ...] = ()
            ) -> PromotionDecision:
        if held:
            why = f"{why}; {held_text(held)}"
        return PromotionDecision(outcome == PROMOTE, outcome, why, name, contender, champion,
                                 delta, low, high, checks, held)

    if not _finite(contender):
        return out(REJECT_FLOOR, f"contender {name} is NaN (non-finite scores?); never promoted")
    better = champion is not None and _finite(champion) and sign * (contender - champion) > 0
    if sign * (contender - rule.min_metric) < 0:
        return out(REJECT_FLOOR, f"{name} {contender:.4f} misses the floor {rule.min_metric}",
                   held=(_held("promotion.min_metric", rule.min_metric,
                               f"a floor of {contender:.4g} or {'lower' if sign > 0 else 'higher'}"
                               " would let it through"),) if better else ())
    if champion is None:
        if failed:
            return out(REJECT_GUARDRAIL, f"no champion; {name} {contender:.4f} clears the floor "
                       f"{rule.min_metric} but fails " + _failures(failed),
                       held=tuple(h for g in failed for h in g.get("held_by", ())))
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
        held: list[dict[str, Any]] = []
        if delta > 0 and delta <= rule.min_improvement:
            held.append(_held("promotion.min_improvement", rule.min_improvement,
                              f"below {delta:.4g} it would count as an improvement"))
        if delta > 0 and low <= -rule.non_inferiority_margin:
            held.append(_held("promotion.non_inferiority_margin", rule.non_inferiority_margin,
                              f"above {-low:.4g} the CI's low end {low:+.4f} would pass (or "
                              f"a lower promotion.confidence than {rule.confidence}, or more "
                              "holdout rows)"))
        return out(KEEP_TOO_CLOSE, f"too close to call: {numbers}; champion kept",
                   delta, low, high, tuple(held))
    if failed:
        return out(REJECT_GUARDRAIL, f"contender is better ({numbers}) but fails "
                   + _failures(failed), delta, low, high,
                   tuple(h for g in failed for h in g.get("held_by", ())))
    return out(PROMOTE, f"contender beats the champion: {numbers}; guardrails pass",
               delta, low, high)


def _failures(failed: list[dict[str, Any]]) -> str:
    return "; ".join(f"{g['name']}: {g['detail']}" for g in failed)


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


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype="float64"), q))


def measure_throughput(models: dict[str, Any], X: pd.DataFrame,
                       spec: ProblemSpec) -> dict[str, dict[str, Any]]:
    """Rows per second of each model on the same rows, measured so that two models can be
    compared on a shared, busy worker: BLAS/OpenMP held to ``timing_threads`` (threadpoolctl),
    one untimed warm-up pass each, then ``timing_repeats`` timed passes of every model,
    interleaved and in alternating order, so a burst of contention hits both. Reported: the
    median rows/s, the 10th/90th percentiles and the spread ``(p90 - p10) / median``.

    Timed on the first ``timing_rows`` rows of ``X`` (the throughput of a tree or linear model
    is per row; the whole holdout is scored once, untimed, for the metrics).
    """
    from threadpoolctl import threadpool_limits

    rules = spec.promotion.guardrails
    rows = X.iloc[: rules.timing_rows]
    passes: dict[str, list[float]] = {name: [] for name in models}
    with threadpool_limits(limits=rules.timing_threads):
        for model in models.values():
            predict_proba(model, rows.iloc[: min(len(rows), 1000)])
        names = list(models)
        for r in range(rules.timing_repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                predict_proba(models[name], rows)
                passes[name].append(len(rows) / max(time.perf_counter() - start, 1e-9))
    out = {}
    for name, rates in passes.items():
        median = _percentile(rates, 50)
        p10, p90 = _percentile(rates, 10), _percentile(rates, 90)
        out[name] = {"rows_per_second": median, "p10": p10, "p90": p90,
                     "spread": (p90 - p10) / median, "passes": [round(v, 1) for v in rates],
                     "rows": len(rows), "threads": rules.timing_threads}
    return out


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


def required_rows_per_second(spec: ProblemSpec,
                             largest_batch_rows: int | None) -> tuple[float | None, str]:
    """The service level in rows/s and where it comes from: ``min_rows_per_second``, or the
    largest recent batch within ``max_batch_seconds``, whichever asks more."""
    rules = spec.promotion.guardrails
    options = []
    if rules.min_rows_per_second is not None:
        options.append((rules.min_rows_per_second,
                        f"promotion.guardrails.min_rows_per_second {rules.min_rows_per_second:g}"))
    if rules.max_batch_seconds is not None and largest_batch_rows:
        options.append((largest_batch_rows / rules.max_batch_seconds,
                        f"the largest recent batch ({largest_batch_rows:,} rows) within "
                        f"promotion.guardrails.max_batch_seconds {rules.max_batch_seconds:g}"))
    if not options:
        return None, "no service level declared"
    return max(options)


def throughput_check(spec: ProblemSpec, timings: dict[str, dict[str, Any]] | None,
                     largest_batch_rows: int | None = None) -> dict[str, Any]:
    """The service level (and, when declared, the relative drop) from ``measure_throughput``'s
    timings. A contender whose passes spread more than ``max_timing_spread`` is reported as too
    noisy to judge (``ok`` None), never given a verdict; so is a relative comparison where either
    model's spread is too wide."""
    rules = spec.promotion.guardrails
    timings = timings or {}
    new, old = timings.get("contender"), timings.get("champion")
    required, source = required_rows_per_second(spec, largest_batch_rows)
    out: dict[str, Any] = {
        "contender": None if new is None else new["rows_per_second"],
        "champion": None if old is None else old["rows_per_second"],
        "timings": timings, "required": required, "required_from": source,
        "max_spread": rules.max_timing_spread, "ok": None, "note": "",
        "max_drop": rules.max_throughput_drop, "ratio": None, "ok_relative": None,
        "relative_note": ""}
    if new is None:
        out["note"] = "not measured"
        return out
    noisy = new["spread"] > rules.max_timing_spread
    if required is None:
        out["note"] = "no service level declared"
    elif noisy:
        out["note"] = (f"too noisy to judge: passes spread {new['spread']:.0%} of the median "
                       f"(p10 {new['p10']:,.0f}, p90 {new['p90']:,.0f} rows/s; allowed "
                       f"{rules.max_timing_spread:.0%})")
    else:
        out["ok"] = new["rows_per_second"] >= required
    if old is not None:
        out["ratio"] = new["rows_per_second"] / old["rows_per_second"]
        if rules.max_throughput_drop is not None:
            if noisy or old["spread"] > rules.max_timing_spread:
                out["relative_note"] = "too noisy to compare: a model's passes spread too wide"
            else:
                out["ok_relative"] = out["ratio"] >= 1 - rules.max_throughput_drop
    return out


def guardrail_list(slices: list[dict[str, Any]], speed: dict[str, Any]) -> list[dict[str, Any]]:
    """The judged guardrails as ``{name, ok, detail, held_by}`` (what ``decide`` gates on;
    ``held_by``: the spec setting to change if it fails)."""
    out = [{"name": f"slice {r['column']}={r['value']}", "ok": r["ok"],
            "detail": f"{r['rows']} rows, delta {r['delta']:+.4f} (bound -{r['bound']})",
            "held_by": [] if r["ok"] is not False else [_held(
                f"promotion.guardrails.slices.{r['column']}", r["bound"],
                f"a bound of at least {-r['delta']:.4g} would let it through")]}
           for r in slices if r["ok"] is not None]
    new = speed.get("timings", {}).get("contender")
    if speed["ok"] is not None and new is not None:
        rate = new["rows_per_second"]
        out.append({"name": "throughput", "ok": speed["ok"],
                    "detail": f"median {rate:,.0f} rows/s (p10 {new['p10']:,.0f}, p90 "
                              f"{new['p90']:,.0f}; {new['threads']} thread, {new['rows']:,} "
                              f"rows x {len(new['passes'])} passes) against a service level "
                              f"of {speed['required']:,.0f} rows/s ({speed['required_from']})",
                    "held_by": [] if speed["ok"] else [_held(
                        "promotion.guardrails.min_rows_per_second"
                        if "min_rows_per_second" in speed["required_from"]
                        else "promotion.guardrails.max_batch_seconds",
                        speed["required_from"].rsplit(" ", 1)[-1],
                        f"a service level of at most {rate:,.0f} rows/s would let it through")]})
    if speed.get("ok_relative") is not None:
        out.append({"name": "throughput vs champion", "ok": speed["ok_relative"],
                    "detail": f"{speed['contender']:,.0f} vs {speed['champion']:,.0f} rows/s "
                              f"(ratio {speed['ratio']:.2f}, may drop at most "
                              f"{speed['max_drop']:.0%})",
                    "held_by": [] if speed["ok_relative"] else [_held(
                        "promotion.guardrails.max_throughput_drop", speed["max_drop"],
                        f"at least {1 - speed['ratio']:.2f}, or null (no relative rule), "
                        "would let it through")]})
    return out


class UnfairHoldout(ValueError):
    """A model being compared trained on rows of the holdout."""


def _row_keys(spec: ProblemSpec, frame: pd.DataFrame) -> np.ndarray:
    """One hash per row of (entity key as text, event time in UTC nanoseconds), whatever the
    frame's dtypes (a Feast join and a curated file store the same moment differently)."""
    norm = pd.DataFrame({"key": frame[spec.entity.key].astype(str).to_numpy(),
                         "at": event_ns(frame)})
    return pd.util.hash_pandas_object(norm, index=False).to_numpy()


def training_rows_path(mv: ModelVersion, settings: Settings) -> Path:
    """Where a version's training part is (recorded, or the content-addressed default)."""
    rec = mv.reproducibility or {}
    if "dataset" in rec:
        return Path(rec["dataset"]["train_uri"])
    return (settings.home / "datasets" / f"problem={mv.problem}"
            / f"dataset={mv.metrics['dataset_id']}" / "train.parquet")


def seen_rows(spec: ProblemSpec, holdout: pd.DataFrame,
              models: list[ModelVersion], settings: Settings) -> dict[int, np.ndarray]:
    """For each model, a mask of the holdout rows it trained on, by row key (entity key, event
    time).

    Raises:
        UnfairHoldout: a model's training rows cannot be read.
    """
    held = _row_keys(spec, holdout)
    seen = {}
    for mv in models:
        path = training_rows_path(mv, settings)
        if not path.is_file():
            raise UnfairHoldout(f"{spec.name!r} v{mv.version}: its training rows ({path}) are "
                                "gone, so a fair holdout cannot be checked")
        trained = pd.read_parquet(path, columns=[spec.entity.key, "event_timestamp"])
        seen[mv.version] = np.isin(held, _row_keys(spec, trained))
    return seen


def check_fair_holdout(spec: ProblemSpec, holdout: pd.DataFrame, models: list[ModelVersion],
                       settings: Settings) -> None:
    """Check by row key (entity key, event time) that no model trained on a holdout row.

    Raises:
        UnfairHoldout: a model's training rows overlap the holdout, or they cannot be read.
    """
    for version, mask in seen_rows(spec, holdout, models, settings).items():
        if overlap := int(mask.sum()):
            raise UnfairHoldout(f"{spec.name!r} v{version} trained on {overlap} of the "
                                f"{len(holdout)} holdout rows; it cannot be judged on them")


def unseen_holdout(spec: ProblemSpec, holdout: pd.DataFrame, models: list[ModelVersion],
                   settings: Settings) -> tuple[pd.DataFrame, dict[int, int]]:
    """The holdout rows no model trained on, and how many each model had seen. A champion
    trained on part of today's holdout (history loaded newest first, ``latest_batch`` after a
    single-batch start, an old version judged again) is judged on the rest, with the contender.

    Raises:
        UnfairHoldout: fewer than ``evaluation.min_holdout_rows`` rows are left, or a model's
            training rows cannot be read.
    """
    seen = seen_rows(spec, holdout, models, settings)
    counts = {v: int(m.sum()) for v, m in seen.items() if m.any()}
    if not counts:
        return holdout, {}
    keep = ~np.logical_or.reduce(list(seen.values()))
    need = spec.evaluation.min_holdout_rows
    if int(keep.sum()) < need:
        which = ", ".join(f"v{v} trained on {n}" for v, n in counts.items())
        raise UnfairHoldout(f"{spec.name!r}: of the {len(holdout)} holdout rows {which}; only "
                            f"{int(keep.sum())} rows neither trained on are left, fewer than "
                            f"evaluation.min_holdout_rows {need}: they cannot be judged fairly")
    log.info("%s: %s rows of the holdout left out (%s trained on them); judged on %d rows",
             spec.name, int((~keep).sum()), counts, int(keep.sum()))
    return holdout[keep].reset_index(drop=True), counts


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
          timings: dict[str, dict[str, Any]] | None = None,
          largest_batch_rows: int | None = None) -> tuple[PromotionDecision, dict[str, Any]]:
    """The decision from both models' scores on the same holdout rows (``p_old`` None: no
    champion) and their ``measure_throughput`` timings (None: speed not judged), and the details
    behind it (slices, throughput, bootstrap settings)."""
    y, name, kind = holdout[spec.target.name].to_numpy(), spec.metric_name, spec.target.kind
    slices = slice_checks(spec, holdout, y, p_new, p_old)
    speed = throughput_check(spec, timings, largest_batch_rows)
    decision = decide(spec, metric(name, y, p_new, kind),
                      None if p_old is None else metric(name, y, p_old, kind),
                      None if p_old is None else paired_ci(spec, y, p_new, p_old),
                      guardrail_list(slices, speed))
    return decision, {"slices": slices, "throughput": speed,
                      "held_by": list(decision.held_by),
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
        UnfairHoldout: fewer than ``evaluation.min_holdout_rows`` holdout rows are left that
            neither model trained on.
    """
    from mlcore.datasets import frame_hash
    from mlcore.model.registry import alias_holder, get_version, load_model

    full = load_part(dataset.holdout_uri, dataset.holdout_hash)
    new_mv = get_version(spec.name, contender, settings.db_url)
    champ = alias_holder(spec.name, settings.db_url)
    old_mv = None if champ is None else get_version(spec.name, champ, settings.db_url)
    holdout, seen = unseen_holdout(spec, full, [m for m in (new_mv, old_mv) if m is not None],
                                   settings)
    X, y = holdout[spec.feature_names], holdout[spec.target.name].to_numpy()
    models = {"contender": load_model(new_mv, settings)}
    if old_mv is not None:
        models["champion"] = load_model(old_mv, settings)
    p_new = predict_proba(models["contender"], X)
    p_old = None if old_mv is None else predict_proba(models["champion"], X)
    timings = measure_throughput(models, X, spec)
    decision, details = judge(spec, holdout, p_new, p_old, timings, largest_recent_batch(
        spec, settings))
    details["split"] = dataset.method
    if spec.evaluation.backtest_batches:
        from mlcore.backtest import backtest

        details["backtest"] = backtest(spec, load_part(dataset.train_uri, dataset.train_hash), {
            role: mv for role, mv in (("contender", new_mv), ("champion", old_mv))
            if mv is not None})
    return record_evaluation(spec, settings, new_mv, old_mv, y, p_new, p_old, decision, details,
                             {"batches": dataset.holdout_batches, "rows": len(holdout),
                              "hash": frame_hash(holdout) if seen else dataset.holdout_hash,
                              "method": dataset.method, "rule": dataset.holdout,
                              "from": dataset.holdout_from, "left_out_seen": {
                                  f"v{v}": n for v, n in seen.items()}})


def largest_recent_batch(spec: ProblemSpec, settings: Settings, recent: int = 10) -> int | None:
    """Rows of the largest of the newest ``recent`` published batches (what a scoring run must
    handle; ``max_batch_seconds`` is the time it may take)."""
    from mlcore.store.catalog import published_batches

    if spec.promotion.guardrails.max_batch_seconds is None:
        return None
    batches = published_batches(spec.name, settings.db_url)[-recent:]
    return max((b.row_count for b in batches), default=None)


def record_evaluation(spec: ProblemSpec, settings: Settings, new_mv: ModelVersion,
                      old_mv: ModelVersion | None, y: np.ndarray, p_new: np.ndarray,
                      p_old: np.ndarray | None, decision: PromotionDecision,
                      details: dict[str, Any], holdout: dict[str, Any]) -> dict[str, Any]:
    """Store a decision with every number used and write its run card (one transaction).

    ``holdout``: ``batches``, ``rows``, ``hash``, ``method`` of the rows both were judged on.
    """
    from mlcore.reports.runcard import model_curves, write_run_card

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
                          "window": (new_mv.reproducibility or {}).get("window_why"),
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
            "guardrails": list(decision.guardrails), "held_by": list(decision.held_by),
            "backtest": details.get("backtest") or []}),
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
    from mlcore.model.registry import alias_holder, get_version, move_alias

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
