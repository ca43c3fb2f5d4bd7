"""Pure evaluation: the promotion rule over two models' scores on the same holdout rows. A
paired-bootstrap CI of the metric delta, guardrails (slices; throughput as a service level, from
timings measured elsewhere) and the decision with every number behind it (TFX-style floor + change
threshold + blessing), naming the spec setting that held a better contender back.

No database, no files, no alias moves: ``mlcore.evaluation`` loads and scores the holdout,
``mlcore.promotion`` records the decision and moves aliases."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlcore.model.metrics import metric, paired_bootstrap
from mlcore.model.targets import predict
from mlcore.problems import ProblemSpec

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

