"""Online ingestion: events in through a stream, readable online within a second, sealed into
batches in the same raw store as offline files.

``serve`` is the long-running online ingestion service (``mlcore stream serve``), one per problem.
Per read of up to ``stream.read_count`` events (``mlcore.stream.bus``):

1. validate every event with the batch path's own row rules (``mlcore.data.validation``); an
   event that fails goes to the dead-letter stream with its rule and reason;
2. take the valid ones into the ledger (``mlcore.stream.ledger``): stored once per ``event_id``,
   committed — this is what makes them durable;
3. write their features online, newest by event time (``mlcore.feast.online_write``: a late,
   older event never overwrites a newer value);
4. acknowledge the read. A crash anywhere before leaves the entries pending: the restarted
   service reads them again, and 2 and 3 are idempotent (0 lost, 0 duplicated).

Every ``stream.seal_every_seconds`` or ``stream.seal_every_events`` the service seals: it claims
the unsealed events into a numbered segment, writes them as one raw parquet file and publishes it
with ``mlcore.ingestion.ingest_batch`` under ``<problem>-stream-<segment>`` (manifest, SHA-256,
quarantine, atomic publish, exactly as offline), then tells Airflow (``mlcore.stream.notify``) so
the loop runs on; the backlog sweep nudges a batch whose event was lost.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlcore.batches import BatchError
from mlcore.config import Settings
from mlcore.data.curation import curate_table
from mlcore.data.parsing import entity_keys, event_time
from mlcore.data.target_coding import ClassesUnknown, TargetCoder, target_coder
from mlcore.data.validation import required_columns, row_violations
from mlcore.feast.online_write import OnlineWriter
from mlcore.feast.store import ensure_definitions
from mlcore.ingestion import ingest_batch
from mlcore.problems import ProblemSpec
from mlcore.provenance import failpoint
from mlcore.store.session import DatabaseUnavailable
from mlcore.stream import ledger
from mlcore.stream.bus import UNAVAILABLE, Entry, EventBus, decode_all, encode
from mlcore.stream.health import status
from mlcore.stream.notify import NotifyFailed, curated_event
from mlcore.stream.produce import EVENT_ID, event_id_of, produce

log = logging.getLogger(__name__)
RETRIED: tuple[type[Exception], ...] = (*UNAVAILABLE, DatabaseUnavailable)

__all__ = ["Counts", "Service", "event_id_of", "produce", "seal", "serve", "status"]

RECLAIM_IDLE_MS = 30_000  # an entry pending this long in another consumer is taken over
RECLAIM_EVERY_S = 5.0


@dataclass
class Counts:
    """What a service run did."""

    read: int = 0
    taken: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    sealed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


class Service:
    """The online ingestion service of one problem (see the module docstring)."""

    def __init__(self, spec: ProblemSpec, settings: Settings, consumer: str | None = None) -> None:
        self.spec, self.settings = spec, settings
        self.consumer = consumer or f"serve-{socket.gethostname()}"
        self.bus = EventBus(settings.stream_url, spec.name)
        self.writer = OnlineWriter(ensure_definitions(spec, settings), spec)
        self.coder = _coder(spec, settings)
        self.counts = Counts()
        self._last_reclaim = 0.0
        self._sealer: threading.Thread | None = None

    def run(self, should_stop: Callable[[], bool], max_seconds: float | None = None) -> Counts:
        """Serve until ``should_stop()`` (checked after each read) or ``max_seconds`` pass.

        Redis or the metadata store unreachable: logged, retried every second; the read in
        hand stays pending and is read again (own pending entries) once they answer."""
        end = None if max_seconds is None else time.monotonic() + max_seconds
        recover = True
        while not should_stop() and (end is None or time.monotonic() < end):
            try:
                if recover:
                    self._recover()
                    recover = False
                entries = self._reclaim() or self.bus.read(
                    self.consumer, self.spec.stream.read_count, block_ms=200)
                if entries:
                    self.take(entries)
                self._maybe_seal()
            except RETRIED as exc:
                log.warning("stream service %s: %s unreachable (%s); retrying", self.spec.name,
                            "Redis" if not isinstance(exc, DatabaseUnavailable) else "the store",
                            exc)
                recover = True
                time.sleep(1.0)
        if self._sealer is not None:
            self._sealer.join()
        return self.counts

    def _recover(self) -> None:
        """At start and after an outage: the group exists, segments a dead sealer claimed are
        published, and this consumer's pending entries (a read it never acknowledged) are taken."""
        self.bus.ensure_group()
        self.seal(only_unfinished=True)
        while entries := self.bus.own_pending(self.consumer, self.spec.stream.read_count):
            self.take(entries)

    def _maybe_seal(self) -> None:
        if self._sealer is not None and self._sealer.is_alive():
            return
        self._sealer = None
        if self._seal_due():  # in the background: reads go on while a batch publishes
            self._sealer = threading.Thread(target=self.seal, name="sealer", daemon=True)
            self._sealer.start()

    def close(self) -> None:
        """Release the connections."""
        self.writer.close()
        self.bus.close()

    def take(self, entries: list[Entry]) -> None:
        """Validate, take in, write online, acknowledge one read (steps 1-4)."""
        events = _unique(list(zip([i for i, _ in entries], decode_all(entries), strict=True)))
        letters: list[dict[str, str]] = []
        frame, passed = self._validate(events, letters)
        self.bus.dead_letter(letters)
        failpoint("stream.after_dead_letters")
        new = ledger.take_in(self.spec.name, passed, self.spec.target.name, self.settings.db_url)
        failpoint("stream.after_take_in")
        if len(frame):
            self.writer.write(_online_table(frame, self.spec))
        failpoint("stream.after_online")
        self.bus.ack([i for i, _ in entries])
        c = self.counts
        c.read, c.taken, c.dead_letters = c.read + len(entries), c.taken + new, \
            c.dead_letters + len(letters)
        c.duplicates += len(entries) - len(letters) - new

    def _validate(self, events: list[tuple[str, dict[str, Any]]],
                  letters: list[dict[str, str]]) -> tuple[pd.DataFrame, list[tuple[str, dict]]]:
        """The valid events as a frame and as (event ID, columns); the others into ``letters``."""
        spec = self.spec
        if not events:
            return pd.DataFrame(), []
        known = {*required_columns(spec), spec.target.name, EVENT_ID}
        rows = [cols for _, cols in events]
        frame = pd.DataFrame.from_records(rows)
        for col in required_columns(spec):
            if col not in frame.columns:
                frame[col] = None
        extra = [c for c in frame.columns if c not in known]
        when = event_time(frame[spec.event_time.column], spec)
        bad, violations = row_violations(frame[required_columns(spec)], spec, datetime.now(UTC),
                                         duplicates=superseded(frame, spec, when), when=when)
        reasons: dict[int, tuple[str, str]] = {
            int(r): (",".join(v["rule"]), "; ".join(map(str, v["reason"])))
            for r, v in violations.groupby("row_number")} if bad.any() else {}
        target_bad = self._bad_targets(frame)
        for n, cols in enumerate(rows):
            if n in reasons:
                continue
            if extra and spec.validation.extra_columns == "reject" and \
                    (found := [c for c in extra if c in cols]):
                reasons[n] = ("undeclared_columns", f"undeclared columns {found}")
            elif target_bad[n]:
                reasons[n] = ("target_invalid", f"{spec.target.name} is not "
                              f"{self.coder.describe() if self.coder else 'a known class'}")
        for n in sorted(reasons):
            entry, cols = events[n]
            rule, reason = reasons[n]
            letters.append({**encode(cols), "_rule": rule, "_reason": reason, "_entry": entry})
        keep = [n for n in range(len(rows)) if n not in reasons]
        passed = [(str(rows[n][EVENT_ID]), {k: v for k, v in rows[n].items() if k != EVENT_ID})
                  for n in keep]
        return frame.iloc[keep].reset_index(drop=True), passed

    def _bad_targets(self, frame: pd.DataFrame) -> np.ndarray:
        """Per event: it carries a target its coder cannot encode (no target: unlabelled, fine;
        classes not learnt yet: the seal's batch path decides)."""
        name = self.spec.target.name
        if self.coder is None or name not in frame.columns:
            return np.zeros(len(frame), dtype=bool)
        present = frame[name].notna().to_numpy()
        bad = np.zeros(len(frame), dtype=bool)
        if present.any():
            bad[present] = np.isnan(self.coder.encode(frame[name][present]))
        return bad

    def _reclaim(self) -> list[Entry]:
        if time.monotonic() - self._last_reclaim < RECLAIM_EVERY_S:
            return []
        self._last_reclaim = time.monotonic()
        return self.bus.reclaim(self.consumer, RECLAIM_IDLE_MS, self.spec.stream.read_count)

    def _seal_due(self) -> bool:
        state = ledger.open_events(self.spec.name, self.settings.db_url)
        if state.events == 0 or state.oldest is None:
            return False
        age = datetime.now(UTC) - state.oldest
        return state.events >= self.spec.stream.seal_every_events or \
            age >= timedelta(seconds=self.spec.stream.seal_every_seconds)

    def seal(self, only_unfinished: bool = False) -> list[str]:
        """Seal what is open (and finish segments a dead sealer left); the batch IDs published.
        A failure is logged and retried at the next due time: the events stay in the ledger."""
        try:
            published = seal(self.spec, self.settings, only_unfinished=only_unfinished)
            self.bus.trim_acknowledged()
        except Exception:
            log.exception("sealing %s failed; retried at the next seal", self.spec.name)
            return []
        self.counts.sealed += published
        return published


def _coder(spec: ProblemSpec, settings: Settings) -> TargetCoder | None:
    try:
        return target_coder(spec, settings.db_url)
    except ClassesUnknown:
        return None


def _unique(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Events of one read with their ``event_id`` (the first of a repeated one only)."""
    seen: set[str] = set()
    out = []
    for entry, cols in events:
        eid = event_id_of(cols)
        if eid in seen:
            continue
        seen.add(eid)
        out.append((entry, {**cols, EVENT_ID: eid}))
    return out


def _online_table(frame: pd.DataFrame, spec: ProblemSpec) -> pa.Table:
    """Valid events as the engineered frame the online store takes (key, time, features)."""
    table = curate_table(frame[[c for c in required_columns(spec)]], spec,
                         event_time(frame[spec.event_time.column], spec))
    return table.select([spec.entity.key, "event_timestamp", *spec.feature_names])


def seal(spec: ProblemSpec, settings: Settings, only_unfinished: bool = False) -> list[str]:
    """Publish open events as micro-batches: finish claimed segments, then claim and publish
    what was open when the seal began (events arriving meanwhile wait for the next seal, so a
    steady stream makes one batch per ``seal_every_seconds``, not one per publish), telling
    Airflow after each. Returns the batch IDs published (a rejected segment is recorded in the
    ledger with the batch path's reason: its events stay in it, never lost)."""
    published = []
    for left in ledger.unfinished(spec.name, settings.db_url):
        published += _publish(spec, settings, left)
        _notify(spec, settings)
    up_to = None if only_unfinished else ledger.last_open(spec.name, settings.db_url)
    while up_to is not None and (number := ledger.claim(
            spec.name, settings.db_url, spec.stream.seal_every_events, up_to)) is not None:
        published += _publish(spec, settings, number)
        _notify(spec, settings)
    _notify(spec, settings)  # an earlier seal's batch Airflow was not told of
    return published


def superseded(frame: pd.DataFrame, spec: ProblemSpec, when: pd.Series) -> np.ndarray:
    """Events another, later event of the same (entity, event time) replaces (the batch path's
    ``duplicate_entity_event_time``; a stream keeps the last sent, as the online store does)."""
    keys = entity_keys(frame[spec.entity.key], spec)
    pairs = pd.DataFrame({"k": keys.to_numpy(), "t": pd.DatetimeIndex(when).asi8})
    return (pairs.duplicated(keep="last") & keys.notna().to_numpy() & when.notna().to_numpy()) \
        .to_numpy()


def segment_spec(spec: ProblemSpec) -> ProblemSpec:
    """The spec a segment is published under: every event passed the row rules when it came,
    so what the batch path can still quarantine is a (key, event time) an earlier batch holds;
    that must not hold back the segment's other events (``max_bad_row_share`` 1: a segment is
    rejected only when every row is, or a critical rule fires)."""
    return spec.model_copy(update={"validation": spec.validation.model_copy(
        update={"max_bad_row_share": 1.0})})


def _publish(spec: ProblemSpec, settings: Settings, number: int) -> list[str]:
    batch_id = ledger.segment_batch_id(spec.name, number)
    path = settings.home / "stream" / f"problem={spec.name}" / f"segment={number:06d}.parquet"
    if not path.exists():
        _write_segment(_latest_of_each(spec, settings, number), path)
    failpoint("stream.segment_written")
    try:
        manifest = ingest_batch(segment_spec(spec), str(path), batch_id, settings)
    except BatchError as exc:
        log.warning("stream segment %s of %s rejected: %s", number, spec.name, exc)
        ledger.finish(spec.name, number, "rejected", str(exc), settings.db_url)
        return []
    failpoint("stream.segment_published")
    ledger.finish(spec.name, number, "published", None, settings.db_url)
    path.unlink(missing_ok=True)  # the batch keeps its own raw copy
    return [manifest.batch_id]


def _latest_of_each(spec: ProblemSpec, settings: Settings, number: int) -> list[dict[str, Any]]:
    """A segment's events but those a later event of the segment supersedes (sent in another
    read); those go to the dead letters with the reason, so each event is published or told."""
    events = ledger.segment_events(spec.name, number, settings.db_url)
    payloads = [cols for _, cols in events]
    if not payloads:
        return payloads
    frame = pd.DataFrame.from_records(payloads)
    drop = superseded(frame, spec, event_time(frame[spec.event_time.column], spec))
    if drop.any():
        bus = EventBus(settings.stream_url, spec.name)
        try:
            bus.dead_letter([{**encode({**payloads[n], EVENT_ID: events[n][0]}), "_entry": "",
                              "_rule": "duplicate_entity_event_time",
                              "_reason": f"superseded by a later event of the same "
                                         f"({spec.entity.key}, {spec.event_time.column}) in "
                                         f"segment {number}"} for n in np.flatnonzero(drop)])
        finally:
            bus.close()
    return [p for p, d in zip(payloads, drop, strict=True) if not d]


def _write_segment(payloads: list[dict[str, Any]], path: Path) -> None:
    """The events as one parquet file (atomically); a column whose values mix types is text."""
    names = list(dict.fromkeys(k for row in payloads for k in row))
    arrays = {}
    for name in names:
        values = [row.get(name) for row in payloads]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    pq.write_table(pa.table(arrays), tmp)
    os.replace(tmp, path)


def _notify(spec: ProblemSpec, settings: Settings) -> None:
    if not settings.airflow_url:
        return
    for batch_id in ledger.unnotified(spec.name, settings.db_url):
        try:
            curated_event(settings.airflow_url, spec.name, batch_id)
        except NotifyFailed as exc:
            log.warning("could not tell Airflow of batch %s (%s); retried at the next seal, "
                        "and the backlog sweep nudges it", batch_id, exc)
            return
        ledger.notified(spec.name, batch_id, settings.db_url)


def serve(spec: ProblemSpec, settings: Settings, consumer: str | None = None,
          max_seconds: float | None = None) -> Counts:
    """Run the service until SIGTERM/SIGINT (or ``max_seconds``): it finishes the read in hand,
    acknowledges it and stops; open events are sealed by the next run."""
    stop = {"now": False}

    def _stop(signum: int, _frame: Any) -> None:
        stop["now"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    service = Service(spec, settings, consumer)
    print(f"stream service for {spec.name}: consumer {service.consumer}, "
          f"group of {service.bus.key}", file=sys.stderr, flush=True)
    try:
        return service.run(lambda: stop["now"], max_seconds)
    finally:
        service.close()
