"""Problem specs: a model family declared in ``problems/<name>.yaml``, validated on load."""

from __future__ import annotations

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


class Target(_Spec):
    name: str
    kind: Literal["binary"] = "binary"


class Feature(_Spec):
    name: str
    kind: Literal["numeric", "categorical"]
    min: float | None = None
    max: float | None = None
    values: tuple[int, ...] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> Feature:
        if self.kind == "categorical" and not self.values:
            raise ValueError(f"categorical feature {self.name!r} needs its allowed values")
        return self


class Metric(_Spec):
    name: Literal["roc_auc", "accuracy", "log_loss"] = "roc_auc"
    direction: Literal["maximize", "minimize"] = "maximize"


class Promotion(_Spec):
    min_metric: float
    min_improvement: float = Field(0.0, ge=0.0)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(200, ge=20, le=5000)


class Validation(_Spec):
    """When a batch as a whole is rejected instead of publishing its valid rows."""

    max_bad_row_share: float = Field(0.05, ge=0.0, le=1.0)
    critical_rules: tuple[str, ...] = ()  # any of these firing rejects the batch
    extra_columns: Literal["reject", "ignore"] = "reject"
    max_future_seconds: int = Field(0, ge=0)  # event times later than now + this are bad rows


class Drift(_Spec):
    drift_share: float = Field(0.5, gt=0.0, le=1.0)
    sample_rows: int = Field(50_000, ge=100)


class Retrain(_Spec):
    schedule: str | None = None


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
    algorithms: dict[str, dict[str, Any]] = Field(min_length=1)
    promotion: Promotion
    validation: Validation = Field(default_factory=lambda: Validation())
    drift: Drift = Field(default_factory=lambda: Drift())
    retrain: Retrain = Field(default_factory=lambda: Retrain())

    @cached_property
    def feature_names(self) -> list[str]:
        """Feature columns in declaration order."""
        return [f.name for f in self.features]

    @cached_property
    def numeric(self) -> list[str]:
        """Numeric feature columns."""
        return [f.name for f in self.features if f.kind == "numeric"]

    @cached_property
    def categorical(self) -> list[str]:
        """Categorical feature columns."""
        return [f.name for f in self.features if f.kind == "categorical"]

    @property
    def feature_view(self) -> str:
        """Name of the problem's Feast feature view (see ``feature_repo/``)."""
        return f"{self.name}_fv"

    @property
    def feature_service(self) -> str:
        """Name of the Feast feature service models of this problem train on."""
        return f"{self.name}_v1"

    @model_validator(mode="after")
    def _check_columns(self) -> ProblemSpec:
        names = [self.entity.key, self.target.name, *self.feature_names]
        if len(set(names)) != len(names):
            raise ValueError(f"problem {self.name!r}: entity, target and features must differ")
        return self


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
