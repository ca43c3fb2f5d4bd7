"""Redis Streams as Batchloop's event bus: one stream per problem, one consumer group, a
dead-letter stream beside it.

Keys: ``batchloop:<problem>:events`` (group ``online-ingest``) and ``batchloop:<problem>:dead``.
An event is a flat map of text fields; every value is JSON-encoded (so ``3``, ``"3"``, ``true``
and ``null`` stay what the producer sent). At-least-once: an entry stays pending in the group
until ``ack``; a consumer that restarts reads its own pending entries first, and
``reclaim`` takes over entries another consumer left idle (it died).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

GROUP = "online-ingest"
# what a caller retries on: the server is down or did not answer in time
UNAVAILABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

Entry = tuple[str, dict[str, str]]  # (stream entry ID, fields)


def events_key(problem: str) -> str:
    """The problem's event stream."""
    return f"batchloop:{problem}:events"


def dead_key(problem: str) -> str:
    """The problem's dead-letter stream."""
    return f"batchloop:{problem}:dead"


def encode(event: dict[str, Any]) -> dict[str, str]:
    """An event as stream fields: each value JSON-encoded."""
    return {str(k): json.dumps(v, default=str) for k, v in event.items()}


def decode(fields: dict[str, str]) -> dict[str, Any]:
    """Stream fields back to typed values; a field that is not JSON stays the text it is."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def decode_all(entries: list[Entry]) -> list[dict[str, Any]]:
    """``decode`` of many entries with one JSON parse (the values are JSON texts already, so
    their concatenation is one JSON array); per entry when some value is not JSON."""
    try:
        values = json.loads("[" + ",".join("[" + ",".join(f.values()) + "]"
                                           for _, f in entries) + "]")
    except ValueError:
        return [decode(f) for _, f in entries]
    return [dict(zip(f.keys(), v, strict=True)) for (_, f), v in zip(entries, values, strict=True)]


@dataclass(frozen=True)
class GroupState:
    """The consumer group's position: entries not yet delivered (``lag``), delivered but not
    acknowledged (``pending``), the stream's length and the dead letters."""

    length: int
    lag: int
    pending: int
    dead_letters: int
    last_delivered: str


class EventBus:
    """One problem's streams on one Redis server."""

    def __init__(self, url: str, problem: str) -> None:
        self.redis: Any = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30,
                                          health_check_interval=10)
        self.problem = problem
        self.key, self.dead = events_key(problem), dead_key(problem)

    def ensure_group(self) -> None:
        """Create the stream and its consumer group (from the first entry) if missing."""
        try:
            self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def add(self, events: Iterable[dict[str, Any]], pipeline_size: int = 1000) -> int:
        """Append events (pipelined); returns how many."""
        n = 0
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.key, encode(event))
            n += 1
            if n % pipeline_size == 0:
                pipe.execute()
        pipe.execute()
        return n

    def own_pending(self, consumer: str, count: int) -> list[Entry]:
        """Entries delivered to ``consumer`` and never acknowledged (it crashed)."""
        return self._entries(self.redis.xreadgroup(GROUP, consumer, {self.key: "0"}, count=count))

    def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for ``consumer``, waiting up to ``block_ms`` for the first."""
        return self._entries(self.redis.xreadgroup(GROUP, consumer, {self.key: ">"},
                                                   count=count, block=block_ms))

    def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle in other consumers for ``min_idle_ms`` (XAUTOCLAIM)."""
        reply = self.redis.xautoclaim(self.key, GROUP, consumer, min_idle_ms, "0-0", count=count)
        return [(i, f) for i, f in reply[1] if f is not None]

    def ack(self, ids: list[str]) -> None:
        """Acknowledge entries: done with them."""
        if ids:
            self.redis.xack(self.key, GROUP, *ids)

    def dead_letter(self, letters: list[dict[str, str]]) -> None:
        """Append dead letters (the event's fields plus ``_rule``, ``_reason``, ``_entry``)."""
        if letters:
            pipe = self.redis.pipeline(transaction=False)
            for letter in letters:
                pipe.xadd(self.dead, letter)
            pipe.execute()

    def trim_acknowledged(self) -> None:
        """Drop entries every consumer has acknowledged (below the oldest pending one, or up to
        the last delivered when nothing is pending): the stream stays bounded."""
        state = self.state()
        summary = self.redis.xpending(self.key, GROUP)
        floor = summary["min"] if summary and summary.get("pending") else state.last_delivered
        if floor and floor != "0-0":
            self.redis.xtrim(self.key, minid=floor, approximate=False)

    def state(self) -> GroupState:
        """Where the group stands (XINFO GROUPS; lag counted when Redis could not say)."""
        length, dead = self.redis.xlen(self.key), self.redis.xlen(self.dead)
        groups = [g for g in self.redis.xinfo_groups(self.key) if g["name"] == GROUP] \
            if self.redis.exists(self.key) else []
        if not groups:
            return GroupState(length, length, 0, dead, "0-0")
        g = groups[0]
        lag = g.get("lag")
        if lag is None:  # Redis cannot tell after deletions: count what is past the position
            lag = len(self.redis.xrange(self.key, f"({g['last-delivered-id']}", "+"))
        return GroupState(length, int(lag), int(g["pending"]), dead, g["last-delivered-id"])

    def close(self) -> None:
        """Close the connection pool."""
        self.redis.close()

    @staticmethod
    def _entries(reply: Any) -> list[Entry]:
        if not reply:
            return []
        return [(i, f) for i, f in reply[0][1] if f]
