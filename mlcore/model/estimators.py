"""Candidate search: every configuration of the spec's candidates (their grids, and the training
windows when declared) fitted on the fit slice and scored on validation, the best refitted on the
whole training part (``select_and_fit``); and a recorded configuration refitted as it was
(``refit_recorded``, used by reproduction and the backtest)."""

from __future__ import annotations

import importlib
import inspect
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from mlcore.config import TrainConfig
from mlcore.data.target_coding import TargetCoder
from mlcore.model.metrics import compute_metrics
from mlcore.model.preprocessing import build_candidate, build_pipeline, pipeline_for
from mlcore.model.splits import entity_bucket, event_ns, newest_rows
from mlcore.model.targets import coder_for_codes, mark, predict
from mlcore.problems import ProblemSpec
from mlcore.spec_rules import Candidate, Scalar, Window


def search_space(candidate: Candidate) -> list[dict[str, Scalar]]:
    """Every point of the candidate's grid (``[{}]`` when nothing is searched)."""
    names = sorted(candidate.search)
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(candidate.search[n] for n in names))]


def _label(name: str, overrides: dict[str, Scalar]) -> str:
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")"
                   if overrides else "")


@dataclass(frozen=True)
class TrainedModel:
    """A fitted pipeline and how it was chosen.

    With training windows declared, ``window`` is the chosen one (its definition and the rows it
    trained on), ``window_scores`` what every window got on validation (or why it was skipped)
    and ``why`` one line saying why the winner won.
    """

    pipeline: Pipeline
    algorithm: str
    overrides: dict[str, Scalar]  # the chosen point of the search space
    validation: dict[str, dict[str, float]]  # tried configuration -> metrics on validation
    fit_seconds: float  # the final fit alone
    window: dict[str, Any] | None = None
    window_scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    why: str = ""


def select_and_fit(spec: ProblemSpec, train: pd.DataFrame, cfg: TrainConfig,
                   coder: TargetCoder | None = None) -> TrainedModel:
    """Fit every candidate configuration on the fit slice, keep the best on the validation
    slice, refit it on the whole training part.

    Without training windows the validation slice is a salted entity-hash share and every
    configuration trains on all history; with windows, see ``select_window_and_fit``. With
    ``cfg.algorithm`` set, only that candidate's grid is tried. A single configuration is
    fitted once, on everything, with nothing to select. Each fitted model is marked with what it
    predicts (``coder``: the problem's classes; default: the codes seen).
    """
    coder = coder or coder_for_codes(spec.target.kind, train[spec.target.name].to_numpy())
    names = sorted(spec.algorithms) if cfg.algorithm == "auto" else [cfg.algorithm]
    configs = [(n, o) for n in names for o in search_space(build_candidate(spec, n))]
    if spec.training.windows:
        return select_window_and_fit(spec, train, cfg, configs, coder)
    X, y = train[spec.feature_names], train[spec.target.name].to_numpy()
    kind, classes = spec.target.kind, coder.class_names
    scores: dict[str, dict[str, float]] = {}
    best = configs[0]
    if len(configs) > 1:
        val = (entity_bucket(train[spec.entity.key], "validation")
               < round(cfg.validation_fraction * 100)).to_numpy()
        sign = 1 if spec.metric.direction == "maximize" else -1
        best_score = -np.inf
        for name, overrides in configs:
            model = build_pipeline(spec, name, cfg.random_state, overrides)
            fitted = mark(model.fit(X[~val], y[~val]), kind, classes)
            metrics = compute_metrics(y[val], predict(fitted, X[val]), kind)
            scores[_label(name, overrides)] = metrics
            if sign * metrics[spec.metric.name] > best_score:  # NaN never wins
                best, best_score = (name, overrides), sign * metrics[spec.metric.name]
    start = time.perf_counter()
    final = mark(build_pipeline(spec, best[0], cfg.random_state, best[1]).fit(X, y), kind,
                 classes)
    return TrainedModel(final, best[0], best[1], scores, time.perf_counter() - start)


# ------------------------------------------------------------------------------ training windows

MIN_WINDOW_ROWS = 50  # a window with fewer (effective) rows is skipped, with the reason recorded
_NS_PER_DAY = 86_400 * 10**9


def window_rows(window: Window, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of ``frame`` a window trains on (a mask) and their sample weights (None:
    unweighted), ages measured from the frame's newest event time.

    ``last_batches``: the newest N batches, ordered by their newest event time (then batch
    ID); ``last_days``: rows at most D days older than the newest row; ``half_life_days``:
    every row, weighted ``0.5 ** (age_days / half_life)`` (the newest row weighs 1).
    """
    everything = np.ones(len(frame), dtype=bool)
    if window.last_batches is not None:
        newest = (pd.DataFrame({"b": frame["batch_id"].astype(str), "t": event_ns(frame)})
                  .groupby("b")["t"].max().reset_index().sort_values(["t", "b"]))
        keep = newest["b"].to_numpy()[-window.last_batches:]
        return frame["batch_id"].astype(str).isin(keep).to_numpy(), None
    if window.last_days is None and window.half_life_days is None:
        return everything, None
    at = event_ns(frame)
    ref = at.max(initial=0)
    if window.last_days is not None:
        return at >= ref - round(window.last_days * _NS_PER_DAY), None
    age_days = (ref - at).astype("float64") / _NS_PER_DAY
    return everything, np.power(0.5, age_days / float(window.half_life_days or 1.0))


def candidate_windows(spec: ProblemSpec) -> list[Window]:
    """The declared windows, after an implicit ``all`` (every row, unweighted) unless a declared
    window is named ``all`` (it replaces the implicit one). Earlier wins ties."""
    declared = list(spec.training.windows)
    return declared if any(w.name == "all" for w in declared) else [Window(name="all"),
                                                                     *declared]


def describe_window(window: Window) -> str:
    """A window's rule in words."""
    if window.last_batches is not None:
        return f"last {window.last_batches} batch{'es' if window.last_batches > 1 else ''}"
    if window.last_days is not None:
        return f"last {window.last_days:g} days"
    if window.half_life_days is not None:
        return f"every row, half-life {window.half_life_days:g} days"
    return "all history"


@dataclass
class _WindowPlan:
    """One window's rows: ``fit`` for selection (validation rows excluded), ``full`` for the
    final refit (the whole training part); weights aligned with the masked rows."""

    window: Window
    fit: np.ndarray
    fit_weights: np.ndarray | None
    full: np.ndarray
    full_weights: np.ndarray | None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def _effective_rows(mask: np.ndarray, weights: np.ndarray | None) -> float:
    """Kish's effective sample size of the masked rows (their count when unweighted)."""
    if weights is None:
        return float(mask.sum())
    return float(weights.sum() ** 2 / max(float((weights**2).sum()), 1e-300))


def _too_small(spec: ProblemSpec, y: np.ndarray, mask: np.ndarray,
               weights: np.ndarray | None, part: str) -> str | None:
    rows = _effective_rows(mask, weights)
    if rows < MIN_WINDOW_ROWS:
        what = "effective rows (weighted)" if weights is not None else "rows"
        return f"{rows:,.0f} {what} in the {part}, fewer than {MIN_WINDOW_ROWS}"
    if spec.target.kind != "regression" and len(np.unique(y[mask])) < 2:
        return f"one class only in the {part}"
    return None


def plan_window(spec: ProblemSpec, window: Window, train: pd.DataFrame,
                val: np.ndarray) -> _WindowPlan:
    """A window's rows among the non-validation rows (selection) and the whole training part
    (refit), or why it is skipped."""
    y = train[spec.target.name].to_numpy()
    rest = np.flatnonzero(~val)
    keep, weights = window_rows(window, train.iloc[rest])
    fit = np.zeros(len(train), dtype=bool)
    fit[rest[keep]] = True
    full, full_weights = window_rows(window, train)
    plan = _WindowPlan(window, fit, None if weights is None else weights[keep], full,
                       None if full_weights is None else full_weights[full])
    plan.skipped = (_too_small(spec, y, fit, plan.fit_weights, "fit rows")
                    or _too_small(spec, y, full, plan.full_weights, "training part"))
    return plan


def _takes_weights(estimator: str) -> bool:
    module, name = estimator.rsplit(".", 1)
    fit = getattr(importlib.import_module(module), name).fit
    return "sample_weight" in inspect.signature(fit).parameters


def _fit(spec: ProblemSpec, config: tuple[str, dict[str, Scalar]], seed: int, X: pd.DataFrame,
         y: np.ndarray, weights: np.ndarray | None, coder: TargetCoder) -> Pipeline:
    """Fit one configuration, with sample weights passed to the estimator step (the
    preprocessing is unweighted)."""
    pipe = build_pipeline(spec, config[0], seed, config[1])
    extra = {} if weights is None else {"model__sample_weight": weights}
    return mark(pipe.fit(X, y, **extra), spec.target.kind, coder.class_names)


def _weights_for(plan: _WindowPlan, estimator: str, weights: np.ndarray | None
                 ) -> np.ndarray | None:
    """``weights``, or None with a note when the estimator's ``fit`` takes no sample weights."""
    if weights is None or _takes_weights(estimator):
        return weights
    note = f"{estimator} takes no sample_weight: trained unweighted"
    if note not in plan.notes:
        plan.notes.append(note)
    return None


def select_window_and_fit(spec: ProblemSpec, train: pd.DataFrame, cfg: TrainConfig,
                          configs: list[tuple[str, dict[str, Scalar]]],
                          coder: TargetCoder) -> TrainedModel:
    """Training windows as candidates: every (window, configuration) trains on the window's
    rows outside validation (the newest ``cfg.validation_fraction`` of the training part by
    event time) and is scored there with the spec's metric; the best (NaN never wins, ties keep
    the earlier window) is refitted on the window's rows of the whole training part.

    Raises:
        ValueError: no window leaves enough rows (each window's reason in the message).
    """
    X, y = train[spec.feature_names], train[spec.target.name].to_numpy()
    val = newest_rows(train, spec.entity.key, cfg.validation_fraction)
    plans = [plan_window(spec, w, train, val) for w in candidate_windows(spec)]
    usable = [p for p in plans if p.skipped is None]
    if not usable:
        raise ValueError(f"problem {spec.name!r}: no training window leaves enough rows to "
                         "train on: " + "; ".join(f"{p.window.name}: {p.skipped}" for p in plans))
    scores: dict[str, dict[str, float]] = {}
    best, best_score = (usable[0], configs[0]), -np.inf
    sign = 1 if spec.metric.direction == "maximize" else -1
    if len(usable) * len(configs) > 1:
        for plan in usable:
            for config in configs:
                w = _weights_for(plan, spec.algorithms[config[0]].estimator, plan.fit_weights)
                fitted = _fit(spec, config, cfg.random_state, X[plan.fit], y[plan.fit], w, coder)
                metrics = compute_metrics(y[val], predict(fitted, X[val]), spec.target.kind)
                scores[f"{plan.window.name}:{_label(*config)}"] = metrics
                if sign * metrics[spec.metric.name] > best_score:  # NaN never wins
                    best, best_score = (plan, config), sign * metrics[spec.metric.name]
    plan, config = best
    start = time.perf_counter()
    w = _weights_for(plan, spec.algorithms[config[0]].estimator, plan.full_weights)
    final = _fit(spec, config, cfg.random_state, X[plan.full], y[plan.full], w, coder)
    seconds = time.perf_counter() - start
    table = window_table(spec, plans, scores)
    chosen = {**plan.window.model_dump(exclude_none=True), "rows": int(plan.full.sum()),
              "weighted": w is not None}
    return TrainedModel(final, config[0], config[1], scores, seconds, chosen, table,
                        window_why(spec, plan, table, int(val.sum()), cfg.validation_fraction))


def window_table(spec: ProblemSpec, plans: list[_WindowPlan],
                 scores: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per window: its rule, rows (fit and refit, effective when weighted), its best
    configuration and metric on validation, or why it was skipped."""
    sign = 1 if spec.metric.direction == "maximize" else -1
    table: dict[str, dict[str, Any]] = {}
    for p in plans:
        mine = {k.split(":", 1)[1]: v[spec.metric.name] for k, v in scores.items()
                if k.split(":", 1)[0] == p.window.name}
        scored = {k: v for k, v in mine.items() if not np.isnan(v)}
        top = max(scored, key=lambda k: sign * scored[k]) if scored else None
        table[p.window.name] = {
            "definition": p.window.model_dump(exclude_none=True),
            "rule": describe_window(p.window),
            "fit_rows": int(p.fit.sum()), "rows": int(p.full.sum()),
            "effective_rows": round(_effective_rows(p.full, p.full_weights), 1),
            "skipped": p.skipped, "notes": list(p.notes),
            "best_configuration": top,
            spec.metric.name: None if top is None else float(scored[top])}
    return table


def window_why(spec: ProblemSpec, plan: _WindowPlan, table: dict[str, dict[str, Any]],
               val_rows: int, fraction: float) -> str:
    """One line: the winner, its rows and metric on validation vs every other window's."""
    metric, name = spec.metric.name, plan.window.name
    head = (f"window {name} ({table[name]['rule']}, {table[name]['rows']:,} rows) with "
            f"{table[name]['best_configuration'] or 'its only configuration'}")
    if table[name][metric] is None:
        return (f"{head}: nothing to compare (one window and configuration, or no number on "
                "validation); the first usable window kept")
    others = ", ".join(f"{n} {t[metric]:.4g}" for n, t in table.items()
                       if n != name and t[metric] is not None)
    skipped = "; ".join(f"{n} skipped ({t['skipped']})" for n, t in table.items()
                        if t["skipped"])
    return (f"{head}: {metric} {table[name][metric]:.4g} on the newest {fraction:.0%} of "
            f"training rows ({val_rows:,})" + (f" vs {others}" if others else "")
            + (f"; {skipped}" if skipped else ""))


def refit_recorded(spec: ProblemSpec, rec: dict[str, Any], train: pd.DataFrame) -> Pipeline:
    """A version's recorded configuration (estimator, preprocessing, params, seed, training
    window and its weights) fitted on ``train``, marked with the recorded target."""
    candidate = Candidate(estimator=rec["estimator"], preprocessing=rec["preprocessing"],
                          params=rec["params"])
    rows, extra = recorded_window(rec, train)
    model = pipeline_for(spec, candidate, rec["seed"]).fit(
        train[spec.feature_names][rows], train[spec.target.name].to_numpy()[rows], **extra)
    target = rec.get("target", {"kind": "binary", "classes": ["0", "1"]})
    return mark(model, target["kind"], target["classes"])


def recorded_window(rec: dict[str, Any], train: pd.DataFrame
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The rows a recorded version trained on (a mask of ``train``) and the fit's extra
    arguments (its sample weights), as ``select_window_and_fit`` chose them."""
    if "window" not in rec:  # no windows declared: every row, unweighted
        return np.ones(len(train), dtype=bool), {}
    definition = {k: v for k, v in rec["window"].items() if k != "weighted"}
    rows, weights = window_rows(Window.model_validate(definition), train)
    if weights is None or not rec["window"]["weighted"]:
        return rows, {}
    return rows, {"model__sample_weight": weights[rows]}
