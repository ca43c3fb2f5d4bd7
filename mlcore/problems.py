"""Problem specs: a model family declared in ``problems/<name>.yaml``, validated on load."""

from __future__ import annotations

import hashlib
import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Entity(_Spec):
    name: str
    key: str
    dtype: Literal["int64", "string"] = "int64"


class EventTime(_Spec):
    """How a row's event time is derived: a timestamp column, or the end of a year column."""

    column: str
    kind: Literal["timestamp", "year_end"] = "timestamp"


Label = bool | int | str
TIME_PARTS = ("year", "month", "day", "day_of_week", "day_of_year", "hour", "minute",
              "is_weekend")
# YAML 1.1 reads yes/no/on/off as booleans: a label or category written that way is matched
# against the data's text forms of a boolean as well (``mlcore.columns.vocabulary_codes``).


def label_key(value: Any) -> str:
    """The canonical text of a scalar label or category, whatever its type: ``"Organic"`` stays
    itself (stripped), ``3``, ``3.0`` and ``numpy.int64(3)`` are ``"3"``, ``True`` is ``"true"``
    (pure Python: specs load without numpy)."""
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy scalars
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value == int(value) else repr(value)
    return str(value).strip()


class Target(_Spec):
    """What is predicted. ``binary``: two labels, ``positive`` names the positive one (default
    1 / true); ``classes`` may list both. ``multiclass``: ``classes`` declared, or learnt from the
    first labelled batch and then fixed. ``regression``: a float."""

    name: str
    kind: Literal["binary", "multiclass", "regression"] = "binary"
    positive: Label | None = None
    classes: tuple[Label, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> Target:
        if self.kind == "regression" and (self.positive is not None or self.classes):
            raise ValueError(f"target {self.name!r}: a regression target has no positive label "
                             "or classes")
        if self.kind == "multiclass" and self.positive is not None:
            raise ValueError(f"target {self.name!r}: positive is for binary targets only")
        if self.classes is not None:
            keys = [label_key(c) for c in self.classes]
            if len(set(keys)) != len(keys):
                raise ValueError(f"target {self.name!r}: classes repeat a label")
            want = 2 if self.kind == "binary" else None
            if want and len(keys) != want or len(keys) < 2:
                raise ValueError(f"target {self.name!r}: a {self.kind} target needs "
                                 f"{'exactly 2' if want else 'at least 2'} classes, "
                                 f"got {len(keys)}")
            if self.positive is not None and label_key(self.positive) not in keys:
                raise ValueError(f"target {self.name!r}: positive {self.positive!r} is not one "
                                 f"of the classes {list(self.classes)}")
        return self

    @property
    def is_classification(self) -> bool:
        """Binary or multiclass."""
        return self.kind != "regression"


class Feature(_Spec):
    """One input column. ``numeric``: int or float, optional ``min``/``max``. ``categorical``:
    ``values`` (strings, ints or bools) is the vocabulary; a value outside it quarantines its row
    unless ``unknown: other`` (then it reaches the model as an unknown category). ``boolean``:
    true/false (also 1/0, yes/no as text). ``timestamp``: parsed (ISO 8601 text or a timestamp
    column, naive = UTC) and expanded into ``parts``, each a numeric model feature
    ``<name>_<part>``. ``nullable: true``: a missing value is data, not a bad row."""

    name: str
    kind: Literal["numeric", "categorical", "boolean", "timestamp"]
    min: float | None = None
    max: float | None = None
    values: tuple[bool | int | str, ...] | None = None
    unknown: Literal["quarantine", "other"] = "quarantine"
    nullable: bool = False
    parts: tuple[Literal[TIME_PARTS], ...] | None = None  # type: ignore[valid-type]
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> Feature:
        if self.kind == "categorical":
            if not self.values:
                raise ValueError(f"categorical feature {self.name!r} needs its allowed values")
            types = {_value_type(v) for v in self.values}
            if len(types) > 1:
                raise ValueError(f"categorical feature {self.name!r}: values mix types "
                                 f"{sorted(types)}; write them all as text (quoted) or all "
                                 "as numbers")
            if len({label_key(v) for v in self.values}) != len(self.values):
                raise ValueError(f"categorical feature {self.name!r}: values repeat")
        elif self.values is not None or self.unknown != "quarantine":
            raise ValueError(f"feature {self.name!r}: values/unknown are for categorical "
                             f"features, not {self.kind}")
        if self.kind != "numeric" and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r}: min/max are for numeric features")
        if self.kind == "timestamp":
            if not self.parts:
                raise ValueError(f"timestamp feature {self.name!r} needs its parts (any of "
                                 f"{', '.join(TIME_PARTS)})")
            if len(set(self.parts)) != len(self.parts):
                raise ValueError(f"timestamp feature {self.name!r}: parts repeat")
        elif self.parts is not None:
            raise ValueError(f"feature {self.name!r}: parts are for timestamp features")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        return self

    @property
    def value_type(self) -> str:
        """How the column is stored: ``float`` (numeric, timestamp parts), ``int``, ``str`` or
        ``bool`` (categorical by its vocabulary; boolean), ``timestamp`` (the raw timestamp)."""
        if self.kind == "numeric":
            return "float"
        if self.kind == "boolean":
            return "bool"
        if self.kind == "timestamp":
            return "timestamp"
        return _value_type((self.values or ("",))[0])

    @property
    def model_columns(self) -> list[str]:
        """The model (and Feast) feature columns this input yields."""
        if self.kind == "timestamp":
            return [f"{self.name}_{p}" for p in self.parts or ()]
        return [self.name]


def _value_type(value: bool | int | str) -> str:
    return "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "str"


# Metrics by target kind, with the direction each implies (``metric.direction`` must agree).
METRICS_BY_KIND: dict[str, dict[str, str]] = {
    "binary": {"roc_auc": "maximize", "pr_auc": "maximize", "log_loss": "minimize",
               "brier": "minimize", "accuracy": "maximize", "f1": "maximize"},
    "multiclass": {"log_loss": "minimize", "accuracy": "maximize", "f1_macro": "maximize",
                   "roc_auc_ovr": "maximize"},
    "regression": {"rmse": "minimize", "mae": "minimize", "r2": "maximize", "mape": "minimize"},
}
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}


class Metric(_Spec):
    """The primary metric; ``direction`` is implied by the name (written, it must agree)."""

    name: str = "roc_auc"
    direction: Literal["maximize", "minimize"] = "maximize"


# The algorithm library: the scikit-learn estimators a spec may name, by the target kinds each
# serves (import paths, checked on load without importing scikit-learn; ``mlcore.training``
# imports only these). Classifiers have ``predict_proba``; ``random_state`` is seeded where the
# estimator takes one.
CLASSIFIERS = frozenset({
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.SGDClassifier",
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.ExtraTreesClassifier",
    "sklearn.ensemble.GradientBoostingClassifier",
    "sklearn.tree.DecisionTreeClassifier",
    "sklearn.naive_bayes.GaussianNB",
})
REGRESSORS = frozenset({
    "sklearn.linear_model.LinearRegression",
    "sklearn.linear_model.Ridge",
    "sklearn.linear_model.Lasso",
    "sklearn.linear_model.ElasticNet",
    "sklearn.linear_model.SGDRegressor",
    "sklearn.ensemble.HistGradientBoostingRegressor",
    "sklearn.ensemble.RandomForestRegressor",
    "sklearn.ensemble.ExtraTreesRegressor",
    "sklearn.ensemble.GradientBoostingRegressor",
    "sklearn.tree.DecisionTreeRegressor",
})
ESTIMATORS = CLASSIFIERS | REGRESSORS
# Estimators that take missing values themselves; the others get a median imputer (plus a
# missing-indicator column) in front of nullable numeric features.
NAN_NATIVE = frozenset({
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "sklearn.ensemble.HistGradientBoostingRegressor",
})
MAX_SEARCH_COMBINATIONS = 12
Scalar = bool | int | float | str | None


class Candidate(_Spec):
    """One candidate model: an allow-listed estimator, its preprocessing, fixed hyperparameters
    and a small grid searched on the validation slice.

    ``preprocessing``: ``one_hot`` scales numerics and one-hot encodes categoricals (linear
    models); ``ordinal`` turns categories into codes (trees; HistGradientBoosting splits them
    natively).
    """

    estimator: str
    preprocessing: Literal["one_hot", "ordinal"] = "one_hot"
    params: dict[str, Scalar] = Field(default_factory=dict)
    search: dict[str, tuple[Scalar, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Candidate:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r} is not in the library "
                             f"(allowed: {', '.join(sorted(ESTIMATORS))})")
        if "random_state" in self.params or "random_state" in self.search:
            raise ValueError("random_state comes from the run's seed, not the spec")
        if both := set(self.params) & set(self.search):
            raise ValueError(f"{sorted(both)} are both fixed and searched")
        combos = 1
        for name, values in self.search.items():
            if not values:
                raise ValueError(f"search space of {name!r} is empty")
            combos *= len(values)
        if combos > MAX_SEARCH_COMBINATIONS:
            raise ValueError(f"search space has {combos} combinations; at most "
                             f"{MAX_SEARCH_COMBINATIONS} (keep it small, or fix some values)")
        return self


class Guardrails(_Spec):
    """What a contender may not make worse, even when the primary metric improves."""

    # categorical column -> largest allowed drop of the primary metric within any of its values
    slices: dict[str, float] = Field(default_factory=dict)
    min_slice_rows: int = Field(500, ge=1)  # smaller slice values are reported, not judged
    # Throughput is a service level, not a race: the contender must score at least this many
    # rows per second (median of interleaved timed passes, one thread each) ...
    min_rows_per_second: float | None = Field(1000.0, gt=0.0)
    # ... and/or score the largest recent labelled batch within this many seconds.
    max_batch_seconds: float | None = Field(None, gt=0.0)
    # Optional relative rule, off by default: contender rows/s >= (1 - drop) x the champion's.
    max_throughput_drop: float | None = Field(None, ge=0.0, le=1.0)
    timing_repeats: int = Field(5, ge=3, le=25)  # interleaved timed passes per model
    timing_threads: int = Field(1, ge=1, le=64)  # BLAS/OpenMP threads while timing
    timing_rows: int = Field(20_000, ge=100)  # rows timed (the holdout's first rows)
    # (p90 - p10) / median of the passes' rows/s above this: too noisy, reported, not judged
    max_timing_spread: float = Field(1.0, gt=0.0)


class Promotion(_Spec):
    """The blessing rule (TFX-style): an absolute floor, then a paired comparison with the
    champion on the same holdout, then guardrails."""

    min_metric: float
    min_improvement: float = Field(0.0, ge=0.0)
    non_inferiority_margin: float = Field(0.0, ge=0.0)  # CI low must be above -margin
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(1000, ge=1000, le=20000)
    seed: int = Field(0, ge=0)
    guardrails: Guardrails = Field(default_factory=lambda: Guardrails())
    require_approval: bool = False  # retrain_model waits for a human before promoting


class Window(_Spec):
    """A training window: which labelled rows (before the holdout cut) a candidate trains on.
    ``all``: every row; ``last_batches``: the newest N batches; ``last_days``: rows within D days
    of the newest training row; ``half_life_days``: every row, weighted
    ``0.5 ** (age_days / half_life)`` (age from the newest training row). Windows are chosen on
    the newest validation rows, as if they were the future (``mlcore.training``)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    last_batches: int | None = Field(None, ge=1)
    last_days: float | None = Field(None, gt=0.0)
    half_life_days: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _one_rule(self) -> Window:
        rules = [r for r in ("last_batches", "last_days", "half_life_days")
                 if getattr(self, r) is not None]
        if len(rules) > 1:
            raise ValueError(f"training window {self.name!r}: at most one of last_batches, "
                             f"last_days, half_life_days (got {', '.join(rules)})")
        return self


class Training(_Spec):
    """How contenders are trained. ``windows``: candidate training windows, each trained and
    the best on the newest validation rows kept (none declared: all history)."""

    windows: tuple[Window, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Training:
        names = [w.name for w in self.windows]
        if len(set(names)) != len(names):
            raise ValueError("training.windows: names repeat")
        return self


HOLDOUT_DURATION = r"^\d+(\.\d+)?[hd]$"


class EvaluationRule(_Spec):
    """Which rows contender and champion are judged on.

    ``holdout``: a fraction (0.2) of the newest labelled batch, its latest rows by event time
    (ties broken by a stable hash of the entity key); a duration (``"14d"``, ``"36h"``): that
    batch's rows this close to its newest event time; ``latest_batch``: the whole newest batch
    (with a single batch, a stable entity-hash 20 %). The contender trains on every row before
    the cut, so it sees the newest regime; neither model may have trained on a judged row.
    """

    holdout: float | str = 0.2
    min_holdout_rows: int = Field(200, ge=1)  # fewer rows neither model trained on: refused
    # rolling-origin backtest over the last k batches before the cut, on the run card (2k fits)
    backtest_batches: int = Field(0, ge=0, le=12)

    @model_validator(mode="after")
    def _check_holdout(self) -> EvaluationRule:
        import re

        h = self.holdout
        if isinstance(h, float | int) and not isinstance(h, bool):
            if not 0 < float(h) < 1:
                raise ValueError(f"evaluation.holdout: a fraction must be in (0, 1), got {h}")
        elif not (h == "latest_batch" or (isinstance(h, str) and re.match(HOLDOUT_DURATION, h))):
            raise ValueError(f"evaluation.holdout: {h!r} is not a fraction, a duration like "
                             "'14d' or '36h', or 'latest_batch'")
        return self

    @property
    def holdout_seconds(self) -> float | None:
        """The duration in seconds (None: not a duration)."""
        h = self.holdout
        if not isinstance(h, str) or h == "latest_batch":
            return None
        return float(h[:-1]) * (86400 if h.endswith("d") else 3600)


class Validation(_Spec):
    """When a batch as a whole is rejected instead of publishing its valid rows."""

    max_bad_row_share: float = Field(0.05, ge=0.0, le=1.0)
    critical_rules: tuple[str, ...] = ()  # any of these firing rejects the batch
    extra_columns: Literal["reject", "ignore"] = "reject"
    max_future_seconds: int = Field(0, ge=0)  # event times later than now + this are bad rows


class Drift(_Spec):
    """Drift of a batch against the serving model's reference profile, judged by effect size."""

    drift_share: float = Field(0.5, gt=0.0, le=1.0)  # dataset drift: this share of features
    sample_rows: int = Field(50_000, ge=100)  # each side sampled to at most this many rows
    numeric_threshold: float = Field(0.1, gt=0.0)  # normed Wasserstein distance
    categorical_threshold: float = Field(0.1, gt=0.0)  # Jensen-Shannon distance
    prediction_threshold: float = Field(0.1, gt=0.0)  # on the model's scores
    segments: tuple[str, ...] = ()  # categorical columns: drift within each of their values
    budget_seconds: float = Field(300.0, gt=0.0)  # a drift check slower than this fails


class Labels(_Spec):
    """Ground truth that arrives after scoring."""

    maturity_days: int = Field(0, ge=0)  # a row's label counts once its event time is this old
    min_rows: int = Field(500, ge=1)  # fewer matured labelled rows: no performance figure


class Retrain(_Spec):
    """When to retrain. The policy runs on data time (the monitored batch's event time), so a
    replay of history retrains when it would have then."""

    schedule: str | None = None  # cron: a tick since the champion's newest training data
    # a tick missed while retrain_model was paused (or before it existed) runs when it is
    # unpaused; default: it waits for the next tick (batchloop_airflow.timetables)
    run_missed_schedule: bool = False
    cooldown_days: float = Field(7.0, ge=0.0)  # no new request this soon after the last one
    performance_drop: float = Field(0.02, gt=0.0)  # matured metric this far below its holdout
    # the metric estimated from the champion's own scores (before labels) this far below its
    # holdout metric (None: estimates never trigger a retrain)
    estimated_performance_drop: float | None = Field(None, gt=0.0)
    new_data_rows: int | None = Field(None, ge=1)  # labelled rows since the champion's data
    lease_hours: float = Field(6.0, gt=0.0)  # a crashed retrain frees the problem after this
    shadow_promotion: bool = False  # matured evidence may promote the challenger


# The stages a problem gets a DAG for: one ``dags/<stage>.py`` each, DAG id ``<problem>__<stage>``.
DAG_STAGES = ("ingest_batch", "materialize_features", "score_batch", "monitor_model",
              "ingest_labels", "retrain_model", "backfill_batches", "sweep_backlog")
MAX_DEADLINE_MINUTES = 7 * 24 * 60


class Alerts(_Spec):
    """On-call alerting the spec owns. Where alerts go is deployment config (Airflow Connections
    and env, see RUNBOOK.md), not the spec."""

    # stage -> minutes: a run of that stage still unfinished this long after it was queued pages
    # on-call ("deadline missed"); a stage not listed has no deadline.
    deadline_minutes: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_deadlines(self) -> Alerts:
        if unknown := set(self.deadline_minutes) - set(DAG_STAGES):
            raise ValueError(f"alerts.deadline_minutes: unknown stages {sorted(unknown)} "
                             f"(stages: {', '.join(DAG_STAGES)})")
        for stage, minutes in self.deadline_minutes.items():
            if not 0 < minutes <= MAX_DEADLINE_MINUTES:
                raise ValueError(f"alerts.deadline_minutes.{stage} must be in (0, "
                                 f"{MAX_DEADLINE_MINUTES}] minutes, got {minutes}")
        return self


class ProblemSpec(_Spec):
    """One declared model family. Every stage reads its columns, metric and policy from here."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    entity: Entity
    event_time: EventTime
    target: Target
    features: tuple[Feature, ...] = Field(min_length=1)
    feature_ttl_days: int = Field(400, ge=1)
    metric: Metric = Field(default_factory=lambda: Metric())
    algorithms: dict[str, Candidate] = Field(min_length=1)
    promotion: Promotion
    evaluation: EvaluationRule = Field(default_factory=lambda: EvaluationRule())
    training: Training = Field(default_factory=lambda: Training())
    validation: Validation = Field(default_factory=lambda: Validation())
    drift: Drift = Field(default_factory=lambda: Drift())
    labels: Labels = Field(default_factory=lambda: Labels())
    retrain: Retrain = Field(default_factory=lambda: Retrain())
    alerts: Alerts = Field(default_factory=lambda: Alerts())
    corrections: Literal["reject", "supersede"] = "reject"
    """What a row whose (entity key, event time) is already published in another batch means.
    ``reject`` (the default): a mistake (a file ingested twice, overlapping exports); the row is
    quarantined under ``duplicate_in_published_batch``, naming that batch. ``supersede``: a
    correction; the row is published and the newer batch (later ``published_at``) wins in every
    point-in-time join and in the online store (a created-timestamp column in the Feast source).
    Changing it on a problem with materialized batches needs them materialized again."""

    @model_validator(mode="before")
    @classmethod
    def _fill_metric(cls, data: Any) -> Any:
        """An unnamed metric is the kind's default; an unwritten direction the metric's."""
        if not isinstance(data, dict):
            return data
        target = data.get("target")
        kind = target.get("kind", "binary") if isinstance(target, dict) else "binary"
        metric = dict(data.get("metric") or {})
        metric["name"] = metric.get("name") or DEFAULT_METRIC.get(kind, "roc_auc")
        if metric["name"] in METRICS_BY_KIND.get(kind, {}):
            metric.setdefault("direction", METRICS_BY_KIND[kind][metric["name"]])
        return {**data, "metric": metric}

    @cached_property
    def inputs(self) -> list[str]:
        """The declared input columns (a batch file's feature columns), in declaration order."""
        return [f.name for f in self.features]

    @cached_property
    def feature_names(self) -> list[str]:
        """The model's (and Feast's) feature columns: the inputs, with each timestamp feature
        expanded into its parts."""
        return [c for f in self.features for c in f.model_columns]

    @cached_property
    def column_kinds(self) -> dict[str, str]:
        """Each model feature column: ``numeric`` or ``categorical`` (booleans included)."""
        return {c: "numeric" if f.kind in ("numeric", "timestamp") else "categorical"
                for f in self.features for c in f.model_columns}

    @cached_property
    def numeric(self) -> list[str]:
        """Numeric model feature columns (timestamp parts included)."""
        return [c for c, k in self.column_kinds.items() if k == "numeric"]

    @cached_property
    def categorical(self) -> list[str]:
        """Categorical model feature columns (boolean features included)."""
        return [c for c, k in self.column_kinds.items() if k == "categorical"]

    def feature(self, name: str) -> Feature:
        """The declared feature ``name``."""
        return next(f for f in self.features if f.name == name)

    def vocabulary(self, column: str) -> list[Any]:
        """The categories of a categorical model column, as stored (bools for ``boolean``)."""
        f = self.feature(column)
        return [False, True] if f.kind == "boolean" else list(f.values or ())

    @property
    def metric_name(self) -> str:
        """The primary metric (the kind's default when the spec names none)."""
        return self.metric.name

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize``, implied by the metric."""
        return METRICS_BY_KIND[self.target.kind][self.metric_name]

    @property
    def sign(self) -> float:
        """+1 when larger is better, -1 otherwise."""
        return 1.0 if self.direction == "maximize" else -1.0

    @property
    def feature_view(self) -> str:
        """Name of the problem's Feast feature view (see ``feature_repo/``)."""
        return f"{self.name}_fv"

    @property
    def feature_service(self) -> str:
        """Name of the Feast feature service models of this problem train on."""
        return f"{self.name}_v1"

    @property
    def feature_definitions_hash(self) -> str:
        """SHA-256 of what the Feast definitions are generated from (the feature version)."""
        data = {"entity": self.entity.model_dump(), "event_time": self.event_time.model_dump(),
                "features": [f.model_dump() for f in self.features],
                "ttl_days": self.feature_ttl_days, "service": self.feature_service}
        if self.corrections != "reject":  # the source gains a created-timestamp column
            data["corrections"] = self.corrections
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @model_validator(mode="after")
    def _check_columns(self) -> ProblemSpec:
        names = [self.entity.key, self.target.name, self.event_time.column, *self.inputs]
        if self.event_time.column in self.inputs:  # the event time may also be a feature
            names.remove(self.event_time.column)
        if len(set(names)) != len(names) or len(set(self.feature_names)) != len(
                self.feature_names) or set(self.feature_names) & {self.entity.key,
                                                                 self.target.name}:
            raise ValueError(f"problem {self.name!r}: entity key, event time, target and "
                             "feature columns must differ")
        self._check_metric()
        self._check_estimators()
        if bad := set(self.promotion.guardrails.slices) - set(self.categorical):
            raise ValueError(f"problem {self.name!r}: slice guardrails on {sorted(bad)}, which "
                             "are not categorical features")
        if bad := set(self.drift.segments) - set(self.categorical):
            raise ValueError(f"problem {self.name!r}: drift segments {sorted(bad)} are not "
                             "categorical features")
        return self


    def _check_metric(self) -> None:
        allowed = METRICS_BY_KIND[self.target.kind]
        if self.metric.name not in allowed:
            raise ValueError(f"problem {self.name!r}: metric {self.metric.name!r} does not fit a "
                             f"{self.target.kind} target (allowed: {', '.join(allowed)})")
        if self.metric.direction != self.direction:
            raise ValueError(f"problem {self.name!r}: metric {self.metric_name} is to "
                             f"{self.direction}, but the spec says {self.metric.direction}")

    def _check_estimators(self) -> None:
        allowed = REGRESSORS if self.target.kind == "regression" else CLASSIFIERS
        for name, c in self.algorithms.items():
            if c.estimator not in allowed:
                what = "regressor" if self.target.kind == "regression" else "classifier"
                raise ValueError(f"problem {self.name!r}: algorithm {name!r} uses "
                                 f"{c.estimator}, not a {what}; a {self.target.kind} target "
                                 f"takes: {', '.join(sorted(allowed))}")


class ProblemNotFound(LookupError):
    """No spec of that name in the problems folder."""


def load_problem_file(path: Path) -> ProblemSpec:
    """Read and validate one spec file.

    Raises:
        ValueError: the file is not a valid spec (the message names the file).
    """
    try:
        raw = yaml.safe_load(path.read_text())
        return ProblemSpec.model_validate(raw)
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"invalid problem spec {path}: {exc}") from exc


def load_problems(problems_dir: Path) -> dict[str, ProblemSpec]:
    """All specs in ``problems_dir``, keyed by name (file stem must equal the name)."""
    return {path.stem: get_problem(path.stem, problems_dir)
            for path in sorted(problems_dir.glob("*.yaml"))}


def get_problem(name: str, problems_dir: Path | None = None) -> ProblemSpec:
    """The spec called ``name``.

    Raises:
        ProblemNotFound: no such spec.
    """
    if problems_dir is None:
        from mlcore.config import get_settings

        problems_dir = get_settings().problems_dir
    path = problems_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in problems_dir.glob("*.yaml"))) or "none"
        raise ProblemNotFound(f"unknown problem {name!r} (known: {known})")
    spec = load_problem_file(path)
    if spec.name != name:
        raise ValueError(f"invalid problem spec {path}: name {spec.name!r} != file stem")
    return spec


def spec_hash(spec: ProblemSpec) -> str:
    """SHA-256 of the spec as validated (what a model was trained under)."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
