"""The stream's health for operators and alerts: where the consumer group stands, what the
ledger holds, and what needs attention against the spec's ``stream`` thresholds."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mlcore.config import Settings
from mlcore.problems import ProblemSpec
from mlcore.stream import ledger
from mlcore.stream.bus import EventBus


def status(spec: ProblemSpec, settings: Settings) -> dict[str, Any]:
    """Lag, pending, dead letters, open events, the last sealed batch and what needs attention
    (``stream.max_lag_events``, ``stream.max_dead_letters``, rejected segments)."""
    bus = EventBus(settings.stream_url, spec.name)
    try:
        state = bus.state()
    finally:
        bus.close()
    opened = ledger.open_events(spec.name, settings.db_url)
    out: dict[str, Any] = {"problem": spec.name, "stream": bus.key, **asdict(state),
                           "open_events": opened.events, "oldest_open": opened.oldest,
                           **ledger.summary(spec.name, settings.db_url)}
    attention = []
    if state.lag > spec.stream.max_lag_events:
        attention.append(f"lag {state.lag} events > stream.max_lag_events "
                         f"{spec.stream.max_lag_events}: is `mlcore stream serve` running?")
    if state.dead_letters > spec.stream.max_dead_letters:
        attention.append(f"{state.dead_letters} dead letters > stream.max_dead_letters "
                         f"{spec.stream.max_dead_letters}: read {bus.dead}")
    if rejected := out["segments"].get("rejected"):
        attention.append(f"{rejected} sealed segments rejected by validation")
    out["attention"] = attention
    return out
