"""Training: the spec's candidates as scikit-learn pipelines; search, pick, fit, save, register,
with a record of everything needed to retrain the same model (``reproduce_version``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import itertools
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlcore.batches import sha256_file
from mlcore.config import Settings, TrainConfig
from mlcore.data.target_coding import TargetCoder, target_coder
from mlcore.datasets import write_dataset
from mlcore.evaluation import timed_scores
from mlcore.model.metrics import compute_metrics
from mlcore.model.preprocessing import CategoryCodes
from mlcore.model.splits import DatasetRef, entity_bucket, event_ns, load_part, newest_rows
from mlcore.model.targets import coder_for_codes, mark, model_target, predict
from mlcore.problems import ProblemSpec, spec_hash
from mlcore.provenance import code_version, failpoint, lock_hash
from mlcore.spec_rules import ESTIMATORS, NAN_NATIVE, Candidate, Scalar, Window

# Estimators that refuse sparse input: one-hot output is densified for them only (it stays
# sparse for linear models, where it is ~6x smaller).
_DENSE_ONLY = {"sklearn.ensemble.HistGradientBoostingClassifier",
               "sklearn.ensemble.HistGradientBoostingRegressor", "sklearn.naive_bayes.GaussianNB"}
_LIBRARIES = ("scikit-learn", "numpy", "pandas", "scipy", "joblib", "pyarrow", "feast")


def _estimator(path: str) -> Any:
    if path not in ESTIMATORS:  # the spec validator checks too; never import anything else
        raise ValueError(f"estimator {path!r} is not in the library")
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)()


def missing_values_plan(spec: ProblemSpec, candidate: Candidate) -> dict[str, str]:
    """How each nullable model column's missing values reach the estimator (recorded with the
    version): passed as NaN to estimators that take it, else a median plus a missing-indicator
    column (numeric) or an all-zero one-hot / NaN code (categories)."""
    plan = {}
    for f in spec.features:
        if not f.nullable:
            continue
        for column in f.model_columns:
            if spec.column_kinds[column] == "categorical":
                plan[column] = ("all-zero one-hot" if candidate.preprocessing == "one_hot"
                                else "missing category code (NaN)")
            elif candidate.estimator in NAN_NATIVE:
                plan[column] = "passed as NaN (the estimator handles missing values)"
            else:
                plan[column] = "imputed: median, plus a missing-indicator column"
    return plan


def _numeric_prep(spec: ProblemSpec, candidate: Candidate) -> Any:
    impute = bool(missing_values_plan(spec, candidate)) and any(
        v.startswith("imputed") for v in missing_values_plan(spec, candidate).values())
    steps: list[tuple[str, Any]] = []
    if impute:
        steps.append(("impute", SimpleImputer(strategy="median", add_indicator=True)))
    if candidate.preprocessing == "one_hot":
        steps.append(("scale", StandardScaler()))
    if not steps:
        return "passthrough"
    return steps[0][1] if len(steps) == 1 else Pipeline(steps)


def pipeline_for(spec: ProblemSpec, candidate: Candidate, seed: int,
                 overrides: dict[str, Scalar] | None = None) -> Pipeline:
    """An unfitted ``Pipeline(prep, model)`` for one candidate and one point of its search space.

    Categories (strings, ints or bools) become codes of the declared vocabulary first
    (``CategoryCodes``); ``one_hot`` then one-hot encodes them and scales numerics, ``ordinal``
    passes the codes on (HistGradientBoosting splits them natively). Nullable numerics are
    imputed for estimators that cannot take NaN (``missing_values_plan``).

    Raises:
        ValueError: a hyperparameter the estimator does not take (named in the message).
    """
    model = _estimator(candidate.estimator)
    params: dict[str, Any] = {**candidate.params, **(overrides or {})}
    if "random_state" in model.get_params():
        params["random_state"] = seed
    codes = CategoryCodes([spec.vocabulary(c) for c in spec.categorical])
    num = _numeric_prep(spec, candidate)
    if candidate.preprocessing == "one_hot":
        sizes = [np.arange(len(spec.vocabulary(c)), dtype="float64") for c in spec.categorical]
        prep = ColumnTransformer([
            ("num", num, spec.numeric),
            ("cat", Pipeline([("codes", codes), ("one_hot", OneHotEncoder(
                categories=sizes, handle_unknown="ignore"))]), spec.categorical)],
            sparse_threshold=0.0 if candidate.estimator in _DENSE_ONLY else 0.3)
    else:
        prep = ColumnTransformer([("cat", codes, spec.categorical), ("num", num, spec.numeric)])
        if "categorical_features" in model.get_params():  # native categorical splits
            params.setdefault("categorical_features",
                              [True] * len(spec.categorical) + [False] * len(spec.numeric))
    try:
        model.set_params(**params)
    except ValueError as exc:
        raise ValueError(f"problem {spec.name!r}: bad hyperparameters for "
                         f"{candidate.estimator}: {exc}") from exc
    return Pipeline([("prep", prep), ("model", model)])


def build_pipeline(spec: ProblemSpec, algorithm: str, seed: int = 0,
                   overrides: dict[str, Scalar] | None = None) -> Pipeline:
    """An unfitted pipeline for one of the spec's candidates (fixed params plus ``overrides``).

    Raises:
        ValueError: the algorithm is not a candidate of the spec.
    """
    return pipeline_for(spec, build_candidate(spec, algorithm), seed, overrides)


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


def build_candidate(spec: ProblemSpec, name: str) -> Candidate:
    """The spec's candidate ``name``.

    Raises:
        ValueError: no such candidate.
    """
    if name not in spec.algorithms:
        raise ValueError(f"algorithm {name!r} is not a candidate of problem {spec.name!r} "
                         f"(candidates: {sorted(spec.algorithms)})")
    return spec.algorithms[name]


def save_artifact(pipeline: Pipeline, settings: Settings, problem: str) -> tuple[str, str]:
    """Dump the pipeline under a content-addressed path. Returns (uri, sha256)."""
    root = settings.home / "artifacts" / f"problem={problem}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".model-{time.time_ns()}.joblib"
    joblib.dump(pipeline, tmp)
    sha = sha256_file(tmp)
    dest = root / f"sha256={sha[:16]}" / "model.joblib"
    dest.parent.mkdir(exist_ok=True)
    tmp.replace(dest)
    return str(dest), sha


def predictions_hash(p: np.ndarray) -> str:
    """SHA-256 of a score vector's exact float64 bytes (identical means bit-for-bit)."""
    return hashlib.sha256(np.ascontiguousarray(p, dtype="float64").tobytes()).hexdigest()


def library_versions() -> dict[str, str]:
    """Python and the versions of the libraries a fitted model depends on."""
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = pkg_version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def reproducibility_record(spec: ProblemSpec, dataset: DatasetRef, cfg: TrainConfig,
                           trained: TrainedModel, batch_hashes: dict[str, str],
                           sampled_rows: int | None, holdout_scores: np.ndarray,
                           rows_per_second: float) -> dict[str, Any]:
    """Everything ``reproduce_version`` needs, and what a reviewer asks about a model."""
    candidate = spec.algorithms[trained.algorithm]
    config = {"estimator": candidate.estimator, "preprocessing": candidate.preprocessing,
              "params": {**candidate.params, **trained.overrides}, "seed": cfg.random_state,
              "validation_fraction": cfg.validation_fraction, "algorithm_param": cfg.algorithm,
              "max_train_rows": cfg.max_train_rows, "spec_hash": spec_hash(spec),
              "target": {"kind": spec.target.kind,
                         "classes": model_target(trained.pipeline)["classes"]},
              "missing_values": missing_values_plan(spec, candidate)}
    if trained.window is not None:  # only with windows declared: older records stay as they were
        config["window"] = {k: v for k, v in trained.window.items() if k != "rows"}
    windows = {} if trained.window is None else {
        "window_rows": trained.window["rows"], "windows": trained.window_scores,
        "window_why": trained.why}
    return {
        **config,
        "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "code_version": code_version(), "lock_hash": lock_hash(),
        "libraries": library_versions(),
        "batches": [{"batch_id": b, "sha256": batch_hashes[b]}
                    for b in dict.fromkeys(dataset.train_batches + dataset.holdout_batches)],
        "dataset": dataset.to_dict(), "sampled_rows": sampled_rows,
        "feature_definitions_hash": spec.feature_definitions_hash,
        "feature_service": spec.feature_service,
        "selection": trained.validation, **windows,
        "fit_seconds": round(trained.fit_seconds, 3),
        "predict_rows_per_second": round(rows_per_second, 1),
        "holdout_predictions_sha256": predictions_hash(holdout_scores),
    }


@dataclass(frozen=True)
class ContenderRef:
    """A trained, registered contender (small enough for XCom)."""

    problem: str
    version: int
    algorithm: str
    artifact_uri: str
    artifact_sha256: str
    validation: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def train_contender(spec: ProblemSpec, dataset: DatasetRef, cfg: TrainConfig,
                    settings: Settings) -> ContenderRef:
    """Train on the dataset's train part, save the artifact, register a new version with its
    reproducibility record (including the hash of its holdout predictions)."""
    from pathlib import Path

    from mlcore.model.reference import write_reference_profile
    from mlcore.model.registry import register_version
    from mlcore.policy import close_retrain_requests
    from mlcore.store.catalog import published_batches

    failpoint("training.started")
    start = time.perf_counter()
    train = load_part(dataset.train_uri, dataset.train_hash)
    sampled = None
    if len(train) > cfg.max_train_rows:
        train = train.sample(cfg.max_train_rows, random_state=cfg.random_state)
        sampled = cfg.max_train_rows
    trained = select_and_fit(spec, train, cfg, target_coder(spec, settings.db_url))
    holdout = load_part(dataset.holdout_uri, dataset.holdout_hash)
    scores, rps = timed_scores(trained.pipeline, holdout[spec.feature_names])
    hashes = {b.batch_id: b.sha256 for b in published_batches(spec.name, settings.db_url)}
    record = reproducibility_record(spec, dataset, cfg, trained, hashes, sampled, scores, rps)
    uri, sha = save_artifact(trained.pipeline, settings, spec.name)
    record["reference_profile"] = write_reference_profile(  # before the write-once registration
        spec, train, trained.pipeline, Path(uri).parent, cfg.random_state)
    timings = {"fit_seconds": round(trained.fit_seconds, 3),
               "total_seconds": round(time.perf_counter() - start, 3)}
    failpoint("training.before_register")
    version = register_version(
        spec, settings, algorithm=trained.algorithm, artifact_uri=uri, artifact_sha256=sha,
        hyperparameters={"algorithm": trained.algorithm, **record["params"],
                         "random_state": cfg.random_state},
        dataset=dataset, validation=trained.validation, timings=timings,
        train_rows=len(train) if trained.window is None else trained.window["rows"],
        reproducibility=record)
    close_retrain_requests(spec.name, version, settings.db_url)
    return ContenderRef(spec.name, version, trained.algorithm, uri, sha, trained.validation)


class NotReproducible(ValueError):
    """A version cannot be rebuilt as recorded (missing record, changed batch or features)."""


@dataclass(frozen=True)
class Reproduction:
    """What ``mlcore reproduce`` found."""

    problem: str
    version: int
    dataset_identical: bool
    predictions_identical: bool  # retrained model vs the recorded holdout predictions
    matches_registered: bool  # retrained model vs the registered artifact, same rows
    max_abs_diff: float
    rows: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        """Everything matched bit for bit."""
        return self.dataset_identical and self.predictions_identical and self.matches_registered

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "verified": self.verified}


def reproduce_version(spec: ProblemSpec, version: int, settings: Settings) -> Reproduction:
    """Rebuild a version's training set from its recorded batches (from scratch, in a scratch
    folder), retrain it with its recorded configuration and seed, and compare holdout
    predictions with the recorded hash and with the registered artifact.

    Raises:
        NotReproducible: no record, a batch is gone or changed, or the features changed.
    """
    import shutil

    from mlcore.model.registry import get_version, load_model
    from mlcore.store.catalog import published_batches

    start = time.perf_counter()
    mv = get_version(spec.name, version, settings.db_url)
    rec = mv.reproducibility
    if not rec:
        raise NotReproducible(f"{spec.name!r} v{version} has no reproducibility record "
                              "(trained before it was kept)")
    if rec["feature_definitions_hash"] != spec.feature_definitions_hash:
        raise NotReproducible(f"{spec.name!r} v{version}: the feature definitions changed since "
                              "it was trained")
    published = {b.batch_id: b for b in published_batches(spec.name, settings.db_url)}
    batches = []
    for b in rec["batches"]:
        found = published.get(b["batch_id"])
        if found is None or found.sha256 != b["sha256"]:
            raise NotReproducible(f"{spec.name!r} v{version}: batch {b['batch_id']!r} is no "
                                  "longer published with the content it was trained on")
        batches.append(found)
    scratch = settings.home / "tmp" / f"reproduce-v{version}-{time.time_ns()}"
    try:
        rebuilt = write_dataset(spec, settings, batches, root=scratch)
        recorded = DatasetRef.from_dict(rec["dataset"])
        same_data = (rebuilt.train_hash, rebuilt.holdout_hash) == (recorded.train_hash,
                                                                    recorded.holdout_hash)
        train = pd.read_parquet(rebuilt.train_uri)
        if rec["sampled_rows"]:
            train = train.sample(rec["sampled_rows"], random_state=rec["seed"])
        model = refit_recorded(spec, rec, train)
        X = pd.read_parquet(rebuilt.holdout_uri)[spec.feature_names]
        again = predict(model, X)
        registered = predict(load_model(mv, settings), X)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    notes = [] if same_data else ["rebuilt training set differs from the recorded hashes"]
    if rec["code_version"] != code_version():
        notes.append(f"code version differs: trained with {rec['code_version']}, now "
                     f"{code_version()}")
    if rec["libraries"] != library_versions():
        notes.append("library versions differ from the record")
    return Reproduction(
        spec.name, version, same_data,
        predictions_hash(again) == rec["holdout_predictions_sha256"],
        bool(np.array_equal(again, registered)), float(np.max(np.abs(again - registered),
                                                             initial=0.0)),
        len(X), round(time.perf_counter() - start, 3), notes)


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
