"""Problem specs: a model family declared in ``problems/<name>.yaml``, validated on load."""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from mlcore.config import get_settings
from mlcore.spec_columns import Entity, EventTime, Feature, SpecModel, Target
from mlcore.spec_rules import (
    CLASSIFIERS,
    DEFAULT_METRIC,
    METRICS_BY_KIND,
    REGRESSORS,
    Alerts,
    Candidate,
    Drift,
    EvaluationRule,
    Labels,
    Metric,
    Promotion,
    Retrain,
    Stream,
    Training,
    Validation,
)

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"


class ProblemSpec(SpecModel):
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
    stream: Stream = Field(default_factory=lambda: Stream())
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
