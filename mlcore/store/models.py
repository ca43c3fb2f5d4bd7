"""Metadata tables. Every change goes with an Alembic migration in ``store/migrations``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

from mlcore.config import get_settings
from mlcore.store.session import HOME


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the store uses."""
    return datetime.now(UTC)


class HomePath(TypeDecorator[str]):
    """A path under ``MLCORE_HOME``, stored relative to it so that a copy of the home and its
    database works at another path; paths outside the home are stored as given."""

    impl = Text
    cache_ok = True

    @staticmethod
    def _home() -> PurePosixPath:

        return PurePosixPath((HOME.get() or get_settings().home).resolve().as_posix())

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None or not value.startswith("/"):
            return value
        path = PurePosixPath(value)
        home = self._home()
        return path.relative_to(home).as_posix() if path.is_relative_to(home) else value

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is None or value.startswith("/") or "://" in value:
            return value
        return (self._home() / value).as_posix()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Batch(Base):
    """A batch's manifest. ``state``: staged -> published | rejected."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("problem", "batch_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    source_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int] = mapped_column(BigInteger)
    schema_hash: Mapped[str] = mapped_column(String(64))
    schema: Mapped[dict[str, Any]]
    quarantine_count: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))
    curated_uri: Mapped[str | None] = mapped_column(HomePath)
    code_version: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)  # the decision: why it was rejected
    event_time_min: Mapped[datetime | None]
    event_time_max: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    files: Mapped[dict[str, Any] | None]  # the curated files' record (mlcore.data.integrity)
    # The staged manifest's claim token: only the writer holding it may publish (CAS).
    claim: Mapped[str | None] = mapped_column(String(32))


class QuarantinedRow(Base):
    """A row kept out of a published batch, with the rule it broke."""

    __tablename__ = "quarantined_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64), index=True)
    row_number: Mapped[int] = mapped_column(BigInteger)
    rule: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)


class Materialization(Base):
    """One batch's features written to the offline store and materialized online."""

    __tablename__ = "materializations"
    __table_args__ = (UniqueConstraint("problem", "batch_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    feature_view: Mapped[str] = mapped_column(String(128))
    offline_uri: Mapped[str] = mapped_column(HomePath)
    rows: Mapped[int] = mapped_column(BigInteger)
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    files: Mapped[dict[str, Any] | None]  # the offline partition's record (mlcore.data.integrity)


class ModelVersion(Base):
    """A trained model and everything needed to reproduce it. Write-once (a DB trigger)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("problem", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    algorithm: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]]
    artifact_uri: Mapped[str] = mapped_column(HomePath)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    training_batch_ids: Mapped[list[Any]]
    data_hash: Mapped[str] = mapped_column(String(64))
    train_rows: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]]
    code_version: Mapped[str] = mapped_column(String(64))
    timings: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    reproducibility: Mapped[dict[str, Any] | None]  # see mlcore.training.reproducibility_record
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """Contender vs champion on one frozen holdout, and the decision taken."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    contender_version: Mapped[int] = mapped_column(Integer)
    champion_version: Mapped[int | None] = mapped_column(Integer)
    holdout_batch_ids: Mapped[list[Any]]
    holdout_hash: Mapped[str] = mapped_column(String(64))
    holdout_rows: Mapped[int] = mapped_column(BigInteger)
    metric: Mapped[str] = mapped_column(String(32))
    contender_metrics: Mapped[dict[str, Any]]
    champion_metrics: Mapped[dict[str, Any] | None]
    delta: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    thresholds: Mapped[dict[str, Any]]
    promote: Mapped[bool]
    outcome: Mapped[str | None] = mapped_column(String(32))  # promote | keep: ... | reject: ...
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None]  # guardrails, slices, throughput, bootstrap settings
    run_card_uri: Mapped[str | None] = mapped_column(HomePath)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alias(Base):
    """Which version holds an alias (``champion``) now. Moved only by compare-and-set."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("problem", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasHistory(Base):
    """Append-only log of every alias move: who, when, why, and the evaluation behind it.

    The database refuses UPDATE and DELETE on it (a trigger, migration 0003)."""

    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(32))
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(Base):
    """One score, keyed by batch, entity and model version."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("problem", "batch_id", "entity_key", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    entity_key: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    # binary: P(positive); multiclass: P(predicted class); regression: the predicted value
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    label: Mapped[str | None] = mapped_column(String(128))  # multiclass: the predicted class
    probabilities: Mapped[str | None] = mapped_column(Text)  # multiclass: JSON list per class


class DriftReport(Base):
    """Evidently drift of one batch against a model's reference data."""

    __tablename__ = "drift_reports"
    __table_args__ = (UniqueConstraint("problem", "batch_id", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    drift_share: Mapped[float] = mapped_column(Float)
    drifted_columns: Mapped[list[Any]]
    dataset_drift: Mapped[bool]
    json_uri: Mapped[str] = mapped_column(HomePath)
    html_uri: Mapped[str] = mapped_column(HomePath)
    details: Mapped[dict[str, Any] | None]  # per-column scores/thresholds, prediction, segments
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetrainRequest(Base):
    """Why a retrain should happen (schedule, drift, performance, new data, manual) and what came
    of it. ``trigger`` is the first that fired; ``triggers`` every one merged into it. A retrain
    run takes the pending request (``run_id``, ``taken_by``; it stays pending, absorbing
    triggers) and answers it: ``trained`` (the version it registered) or ``failed`` (``error``)."""

    __tablename__ = "retrain_requests"
    __table_args__ = (Index("one_pending_retrain_request", "problem", unique=True,
                            sqlite_where=text("state = 'pending'"),
                            postgresql_where=text("state = 'pending'")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    batch_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|trained|failed
    resolved_by_version: Mapped[int | None] = mapped_column(Integer)
    triggers: Mapped[list[Any] | None]
    details: Mapped[dict[str, Any] | None]
    taken_by: Mapped[str | None] = mapped_column(String(256))  # the retrain lease's holder
    resolved_at: Mapped[datetime | None]  # when it failed (trained: see the version)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    run_id: Mapped[str | None] = mapped_column(String(256))  # the Airflow run answering it
    error: Mapped[str | None] = mapped_column(Text)  # why that run failed or timed out


class GroundTruth(Base):
    """A label that arrived after scoring, keyed like the prediction it judges."""

    __tablename__ = "ground_truth"
    __table_args__ = (UniqueConstraint("problem", "batch_id", "entity_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    entity_key: Mapped[str] = mapped_column(String(128))
    # the target as encoded: binary 0/1, multiclass the class's position, regression the value
    label: Mapped[float] = mapped_column(Float)
    source_sha256: Mapped[str] = mapped_column(String(64))
    arrived_at: Mapped[datetime] = mapped_column(default=utcnow)


class PerformanceReport(Base):
    """A model's primary metric on one batch, over matured labelled rows only."""

    __tablename__ = "performance_reports"
    __table_args__ = (UniqueConstraint("problem", "batch_id", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # champion | challenger
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)  # None: too few matured labels
    predicted_rows: Mapped[int] = mapped_column(BigInteger)
    matured_rows: Mapped[int] = mapped_column(BigInteger)
    labelled_rows: Mapped[int] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetrainLease(Base):
    """Single-flight: the one retrain of a problem running now (until it ends or expires)."""

    __tablename__ = "retrain_leases"

    problem: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class TargetClasses(Base):
    """A classification problem's fixed label list: declared in the spec, or learnt from its
    first labelled batch. Write-once: the class order is the meaning of every stored code."""

    __tablename__ = "target_classes"

    problem: Mapped[str] = mapped_column(String(64), primary_key=True)
    classes: Mapped[list[Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(Text)  # "spec", or "batch <id>" it was learnt from
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PerformanceEstimate(Base):
    """A model's metric on one batch estimated from its own scores before labels arrive
    (``mlcore.estimation``: CBPE for classifiers, DLE for regression), with a confidence
    interval; ``realized`` is filled in beside it when matured labels are measured.
    ``estimate`` None: not estimated, ``reason`` says why."""

    __tablename__ = "performance_estimates"
    __table_args__ = (UniqueConstraint("problem", "batch_id", "model_version", "metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # champion | challenger | other
    metric: Mapped[str] = mapped_column(String(32))
    estimate: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    rows: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str] = mapped_column(String(16))  # cbpe | dle | none
    reason: Mapped[str | None] = mapped_column(Text)  # why it was not estimated
    details: Mapped[dict[str, Any] | None]  # reference set, interval method, cache key
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    realized: Mapped[float | None] = mapped_column(Float)  # the metric on matured labels
    realized_at: Mapped[datetime | None]
