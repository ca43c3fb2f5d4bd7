"""The rules a spec declares beside its columns: the metric, the estimator library and the
candidates, training windows, the holdout, guardrails, promotion, validation, drift, labels,
retraining and alerts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlcore.spec_columns import SpecModel

# Metrics by target kind, with the direction each implies (``metric.direction`` must agree).
METRICS_BY_KIND: dict[str, dict[str, str]] = {
    "binary": {"roc_auc": "maximize", "pr_auc": "maximize", "log_loss": "minimize",
               "brier": "minimize", "accuracy": "maximize", "f1": "maximize"},
    "multiclass": {"log_loss": "minimize", "accuracy": "maximize", "f1_macro": "maximize",
                   "roc_auc_ovr": "maximize"},
    "regression": {"rmse": "minimize", "mae": "minimize", "r2": "maximize", "mape": "minimize"},
}
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}


class Metric(SpecModel):
    """The primary metric; ``direction`` is implied by the name (written, it must agree)."""

    name: str = "roc_auc"
    direction: Literal["maximize", "minimize"] = "maximize"


# The algorithm library: the scikit-learn estimators a spec may name, by the target kinds each
# serves (import paths, checked on load without importing scikit-learn;
# ``mlcore.model.preprocessing`` imports only these). Classifiers have ``predict_proba``;
# ``random_state`` is seeded where the estimator takes one.
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


class Candidate(SpecModel):
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


class Guardrails(SpecModel):
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


class Promotion(SpecModel):
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


class Window(SpecModel):
    """A training window: which labelled rows (before the holdout cut) a candidate trains on.
    ``all``: every row; ``last_batches``: the newest N batches; ``last_days``: rows within D days
    of the newest training row; ``half_life_days``: every row, weighted
    ``0.5 ** (age_days / half_life)`` (age from the newest training row). Windows are chosen on
    the newest validation rows, as if they were the future (``mlcore.model.estimators``)."""

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


class Training(SpecModel):
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


class EvaluationRule(SpecModel):
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


class Validation(SpecModel):
    """When a batch as a whole is rejected instead of publishing its valid rows."""

    max_bad_row_share: float = Field(0.05, ge=0.0, le=1.0)
    critical_rules: tuple[str, ...] = ()  # any of these firing rejects the batch
    extra_columns: Literal["reject", "ignore"] = "reject"
    max_future_seconds: int = Field(0, ge=0)  # event times later than now + this are bad rows


class Drift(SpecModel):
    """Drift of a batch against the serving model's reference profile, judged by effect size."""

    drift_share: float = Field(0.5, gt=0.0, le=1.0)  # dataset drift: this share of features
    sample_rows: int = Field(50_000, ge=100)  # each side sampled to at most this many rows
    numeric_threshold: float = Field(0.1, gt=0.0)  # normed Wasserstein distance
    categorical_threshold: float = Field(0.1, gt=0.0)  # Jensen-Shannon distance
    prediction_threshold: float = Field(0.1, gt=0.0)  # on the model's scores
    segments: tuple[str, ...] = ()  # categorical columns: drift within each of their values
    budget_seconds: float = Field(300.0, gt=0.0)  # a drift check slower than this fails


class Labels(SpecModel):
    """Ground truth that arrives after scoring."""

    maturity_days: int = Field(0, ge=0)  # a row's label counts once its event time is this old
    min_rows: int = Field(500, ge=1)  # fewer matured labelled rows: no performance figure


class Retrain(SpecModel):
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


class Alerts(SpecModel):
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


class Stream(SpecModel):
    """Online ingestion (``mlcore stream serve``): when the service seals the events it has
    taken into a micro-batch, how many it reads at once, and when its health pages on-call."""

    # a micro-batch is sealed when its oldest unsealed event is this old, or at this many events
    seal_every_seconds: float = Field(60.0, gt=0, le=86_400)
    seal_every_events: int = Field(50_000, ge=1, le=10_000_000)
    read_count: int = Field(1_000, ge=1, le=100_000)  # events per XREADGROUP
    # alert thresholds (the backlog sweep checks them): events not yet read by the service,
    # and dead letters (events that failed validation) in the dead-letter stream
    max_lag_events: int = Field(100_000, ge=1)
    max_dead_letters: int = Field(100, ge=0)
