"""Producing events: JSON lines to a problem's stream, each with an ``event_id``."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from mlcore.config import Settings
from mlcore.problems import ProblemSpec
from mlcore.stream.bus import EventBus

EVENT_ID = "event_id"


def event_id_of(event: dict[str, Any]) -> str:
    """The event's ``event_id``, or (none given) a SHA-256 of its canonical JSON, so that
    sending the same line twice is one event."""
    given = event.get(EVENT_ID)
    if given not in (None, ""):
        return str(given)
    return hashlib.sha256(json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()[:32]


def produce(spec: ProblemSpec, settings: Settings, lines: Iterable[str],
            rate: float | None = None) -> int:
    """Send JSON lines (one event each) to the problem's stream; ``rate``: events per second at
    most. Every event gets an ``event_id`` (``event_id_of``). Returns how many were sent.

    Raises:
        ValueError: a line is not a JSON object (naming its line number); nothing after it is sent.
    """
    bus = EventBus(settings.stream_url, spec.name)
    start, sent, chunk = time.monotonic(), 0, []
    try:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"line {number}: not JSON ({exc})") from None
            if not isinstance(event, dict):
                raise ValueError(f"line {number}: not a JSON object")
            chunk.append({**event, EVENT_ID: event_id_of(event)})
            if len(chunk) >= (max(1, int(rate / 20)) if rate else 1000):
                sent += bus.add(chunk)
                chunk = []
                if rate and (ahead := sent / rate - (time.monotonic() - start)) > 0:
                    time.sleep(ahead)
        sent += bus.add(chunk)
    finally:
        bus.close()
    return sent


