"""The stream service's ledger in the metadata store (``store/stream_tables.py``): take events
in once per ``event_id``, claim the unsealed ones into a numbered segment, record its verdict.

A segment's batch ID is ``<problem>-stream-<segment:06d>``: the same events always make the
same batch, so sealing a claimed segment again after a crash is the batch path's idempotent
re-run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from mlcore.store.models import utcnow
from mlcore.store.session import session_scope
from mlcore.store.stream_tables import StreamEvent, StreamSegment

EVENTS = cast(Table, StreamEvent.__table__)


def segment_batch_id(problem: str, segment: int) -> str:
    """The batch ID a segment is published under."""
    return f"{problem}-stream-{segment:06d}"


def take_in(problem: str, events: list[tuple[str, dict[str, Any]]], target: str, url: str) -> int:
    """Store events not stored before (by ``event_id``), in one transaction; returns how many
    were new. ``events``: (event ID, the event's columns); ``target``: the spec's target column
    (an event carrying it is sealed with labelled events only)."""
    if not events:
        return 0
    now = utcnow()
    rows = [{"problem": problem, "event_id": e, "received_at": now,
             "payload": json.dumps(cols, default=str),
             "labelled": cols.get(target) is not None} for e, cols in events]
    with session_scope(url) as s:
        dialect = sqlite_insert if s.get_bind().dialect.name == "sqlite" else pg_insert
        stmt = dialect(EVENTS).on_conflict_do_nothing(index_elements=["problem", "event_id"])
        new = s.execute(stmt.returning(EVENTS.c.id), rows).all()  # only the rows inserted
    return len(new)


@dataclass(frozen=True)
class Open:
    """Events taken in and not yet claimed by a segment."""

    events: int
    oldest: datetime | None


def open_events(problem: str, url: str) -> Open:
    """How many events await sealing, and when the oldest came."""
    with session_scope(url, readonly=True) as s:
        n, oldest = s.execute(select(func.count(), func.min(StreamEvent.received_at)).where(
            StreamEvent.problem == problem, StreamEvent.segment.is_(None))).one()
    if oldest is not None and oldest.tzinfo is None:  # SQLite hands back naive UTC
        oldest = oldest.replace(tzinfo=UTC)
    return Open(int(n), oldest)


def last_open(problem: str, url: str) -> int | None:
    """The newest unsealed event's ledger ID (what a seal starting now may take, at most)."""
    with session_scope(url, readonly=True) as s:
        return s.scalar(select(func.max(StreamEvent.id)).where(
            StreamEvent.problem == problem, StreamEvent.segment.is_(None)))


def claim(problem: str, url: str, limit: int, up_to: int | None = None) -> int | None:
    """Claim up to ``limit`` unsealed events (oldest first, all labelled or all not, as the
    oldest is) into the next segment; its number, or None when there is nothing to seal. Two
    sealers racing: one wins the number, the other retries with the next. ``up_to``: only
    events taken in up to that ledger ID (``last_open`` when the seal began)."""
    for _ in range(5):
        try:
            with session_scope(url) as s:
                open_ = (StreamEvent.problem == problem, StreamEvent.segment.is_(None),
                         StreamEvent.id <= (up_to if up_to is not None else 2**62))
                oldest = s.execute(select(StreamEvent.labelled).where(*open_)
                                   .order_by(StreamEvent.id).limit(1)).first()
                if oldest is None:
                    return None
                ids = list(s.scalars(select(StreamEvent.id).where(
                    *open_, StreamEvent.labelled == oldest[0]).order_by(StreamEvent.id)
                    .limit(limit)))
                number = (s.scalar(select(func.max(StreamSegment.segment)).where(
                    StreamSegment.problem == problem)) or 0) + 1
                moved: Any = s.execute(update(StreamEvent).where(
                    StreamEvent.problem == problem, StreamEvent.id.between(ids[0], ids[-1]),
                    StreamEvent.segment.is_(None), StreamEvent.labelled == oldest[0])
                    .values(segment=number).execution_options(synchronize_session=False))
                s.add(StreamSegment(problem=problem, segment=number, events=moved.rowcount,
                                    batch_id=segment_batch_id(problem, number), state="claimed"))
                s.flush()  # a racing sealer that took this number: IntegrityError, all undone
            return number
        except IntegrityError:
            continue
    raise RuntimeError(f"problem {problem!r}: could not claim a stream segment (5 races lost)")


def segment_events(problem: str, segment: int, url: str) -> list[tuple[str, dict[str, Any]]]:
    """A segment's events (event ID, columns), in the order they were taken in."""
    with session_scope(url, readonly=True) as s:
        rows = s.execute(select(StreamEvent.event_id, StreamEvent.payload).where(
            StreamEvent.problem == problem, StreamEvent.segment == segment)
            .order_by(StreamEvent.id))
        return [(e, json.loads(p)) for e, p in rows]


def unfinished(problem: str, url: str) -> list[int]:
    """Segments claimed whose batch has no verdict yet (a sealer died)."""
    with session_scope(url, readonly=True) as s:
        return list(s.scalars(select(StreamSegment.segment).where(
            StreamSegment.problem == problem, StreamSegment.state == "claimed")
            .order_by(StreamSegment.segment)))


def unnotified(problem: str, url: str) -> list[str]:
    """Published segments' batch IDs Airflow has not been told of."""
    with session_scope(url, readonly=True) as s:
        return list(s.scalars(select(StreamSegment.batch_id).where(
            StreamSegment.problem == problem, StreamSegment.state == "published",
            StreamSegment.notified_at.is_(None)).order_by(StreamSegment.segment)))


def finish(problem: str, segment: int, state: str, reason: str | None, url: str) -> None:
    """Record a segment's verdict: ``published`` or ``rejected`` (with the reason)."""
    with session_scope(url) as s:
        s.execute(update(StreamSegment).where(StreamSegment.problem == problem,
                                              StreamSegment.segment == segment)
                  .values(state=state, reason=reason, sealed_at=utcnow()))


def notified(problem: str, batch_id: str, url: str) -> None:
    """Airflow was told of this segment's batch."""
    with session_scope(url) as s:
        s.execute(update(StreamSegment).where(StreamSegment.problem == problem,
                                              StreamSegment.batch_id == batch_id)
                  .values(notified_at=utcnow()))


def summary(problem: str, url: str) -> dict[str, Any]:
    """Events taken in, segments by state, and the last sealed segment."""
    with session_scope(url, readonly=True) as s:
        taken = s.scalar(select(func.count()).where(StreamEvent.problem == problem)) or 0
        states = dict(s.execute(select(StreamSegment.state, func.count()).where(
            StreamSegment.problem == problem).group_by(StreamSegment.state)).all())
        last = s.scalars(select(StreamSegment).where(
            StreamSegment.problem == problem, StreamSegment.sealed_at.is_not(None))
            .order_by(StreamSegment.segment.desc()).limit(1)).first()
        last_sealed = None if last is None else {
            "batch_id": last.batch_id, "state": last.state, "events": last.events,
            "sealed_at": last.sealed_at, "reason": last.reason}
    return {"events_taken": int(taken), "segments": {k: int(v) for k, v in states.items()},
            "last_sealed": last_sealed}
