"""The stream service's ledger (``mlcore.streaming``): every event it took in, once, and the
micro-batches it sealed them into. Migration ``0009_stream_ledger``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mlcore.store.models import Base, utcnow


class StreamEvent(Base):
    """A valid event the service took in: unique per (problem, ``event_id``), so a redelivered
    or re-sent event is stored once. ``segment`` is None until a seal claims it."""

    __tablename__ = "stream_events"
    __table_args__ = (UniqueConstraint("problem", "event_id"),
                      Index("ix_stream_events_open", "problem", "segment"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    problem: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)  # the event's columns as JSON (typed values)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    segment: Mapped[int | None] = mapped_column(Integer, nullable=True)
    labelled: Mapped[bool] = mapped_column(default=False)  # carries the target: sealed apart


class StreamSegment(Base):
    """A micro-batch: ``claimed`` (its events chosen) -> ``published`` | ``rejected`` (the batch
    path's verdict); ``notified_at`` when Airflow was told of the published batch."""

    __tablename__ = "stream_segments"
    __table_args__ = (UniqueConstraint("problem", "segment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem: Mapped[str] = mapped_column(String(64))
    segment: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[str] = mapped_column(String(64))
    events: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="claimed")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    sealed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    notified_at: Mapped[datetime | None] = mapped_column(nullable=True)
