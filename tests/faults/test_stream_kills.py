"""The stream service's guarantees under real kills (issue 18).

One run (module fixture): a private redis-server with append-only persistence fsynced per
write, a fresh MLCORE_HOME, and the census spec with a stream section that seals every second
or 400 events. A producer thread sends ~3,600 events made from real 2015 census rows (explicit
``event_id``s; several survey years per person, late older events, re-sent duplicates, invalid
events with AGEP 150) while the test SIGKILLs the service at random moments (0.2-2 s after it
is up) 20+ times, SIGKILLs it at five named steps (``MLCORE_FAILPOINT``), and SIGKILLs the
redis-server once and restarts it on the same data dir and port. The producer re-sends a chunk
whose send failed. Then the service runs until lag and pending are 0, stops, and
``mlcore stream seal`` seals the rest.

Verified: every valid event in the ledger exactly once and sealed; every invalid one in the
dead-letter stream (by event ID: a kill between dead-lettering and the acknowledgement
dead-letters an event again, so letters may repeat); the raw store (the published batches'
curated rows) holds each (entity, event time) of a valid event exactly once, with the values
sent; no segment left
claimed or rejected; the online store holds, per entity, the newest valid event; and (skew) the
features recomputed offline from the sealed batches (``materialize_batch`` into a second, fresh
online store) equal what the stream service serves online.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from stream_harness import (
    FEATURES,
    PROBLEM,
    EventPlan,
    Producer,
    RedisServer,
    Run,
    ServiceRunner,
    census_plan,
    make_home,
    mlcore,
    spec_of,
)

from mlcore.config import Settings
from mlcore.data.io import read_curated
from mlcore.data.parsing import event_time
from mlcore.feast.online import online_features
from mlcore.features import materialize_batch
from mlcore.store.catalog import published_batches
from mlcore.store.session import session_scope
from mlcore.store.stream_tables import StreamEvent, StreamSegment
from mlcore.stream.bus import EventBus
from mlcore.streaming import status

pytestmark = pytest.mark.live

ROWS = 2000  # census rows -> ~3,600 events sent
RANDOM_KILLS = 22
FAILPOINTS = ["stream.after_dead_letters", "stream.after_take_in", "stream.after_online",
              "stream.segment_written", "stream.segment_published"]
PRODUCE_SECONDS = 70.0
STREAM = {"seal_every_seconds": 1, "seal_every_events": 400, "read_count": 100}


@dataclass
class KilledRun:
    """What the run did, for the assertions."""

    settings: Settings
    plan: EventPlan
    producer: Producer
    runs: list[Run]
    redis_killed_at: int | None = None  # the run during which redis-server was SIGKILLed
    final_exit: int | None = None
    sealed_output: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def random_kills(self) -> list[Run]:
        return [r for r in self.runs if r.killed_by_test and r.failpoint is None]


def _cycle(runner: ServiceRunner, redis_server: RedisServer, rng: random.Random,
           failpoint: str | None, kill_redis: bool) -> Run:
    """Start the service; let a failpoint kill it, or SIGKILL it 0.2-2 s after it is up (and,
    once, SIGKILL the redis-server meanwhile and restart it on the same dir and port)."""
    run = runner.start(failpoint)
    up = runner.wait_up(run)
    if failpoint is not None:
        run.proc.join(30)  # events flow and seals are due every second: the step comes soon
        runner.kill(run)  # still alive: the step was never reached (asserted)
        return run
    time.sleep(rng.uniform(0.2, 2.0))
    if kill_redis:
        redis_server.kill()
        time.sleep(rng.uniform(0.5, 1.5))  # the service and the producer hit a dead server
        redis_server.start()
        time.sleep(rng.uniform(0.2, 1.0))
    if up or run.exitcode is None:
        runner.kill(run)
    return run


def _drain(runner: ServiceRunner, run: Run, settings: Settings, producer: Producer,
           timeout: float = 180.0) -> None:
    """Wait until the producer is done and the service has read and acknowledged everything."""
    spec, end = spec_of(settings), time.monotonic() + timeout
    producer.join(timeout)
    while time.monotonic() < end:
        state = status(spec, settings)
        if state["lag"] == 0 and state["pending"] == 0:
            return
        if run.exitcode is not None:
            raise AssertionError(f"the final service run exited ({run.exitcode}):\n"
                                 f"{run.log.read_text()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"lag/pending not 0 after {timeout} s: {status(spec, settings)}")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Any:
    base = tmp_path_factory.mktemp("stream_kills")
    redis_server = RedisServer(base / "redis")
    redis_server.start()
    settings = make_home(base / "run", redis_server.url, STREAM)
    plan = census_plan(ROWS)
    runner = ServiceRunner(settings, base / "logs")
    rng = random.Random(1818)
    producer = Producer(redis_server.url, plan.send, PRODUCE_SECONDS)
    result = KilledRun(settings, plan, producer, runner.runs)
    started = time.monotonic()
    try:
        producer.start()
        failpoints = {3 * n + 1: fp for n, fp in enumerate(FAILPOINTS)}  # early: events flow
        redis_cycle = 11
        cycle = 0
        while len(result.random_kills) < RANDOM_KILLS or cycle <= max(failpoints):
            run = _cycle(runner, redis_server, rng, failpoints.get(cycle), cycle == redis_cycle)
            if not run.up() and cycle != redis_cycle + 1:  # died before it was up: broken
                raise AssertionError(f"service run {run.number} exited ({run.exitcode}) before "
                                     f"it was up:\n{run.log.read_text()[-3000:]}")
            assert cycle < 3 * RANDOM_KILLS, "too many cycles"
            if cycle == redis_cycle:
                result.redis_killed_at = run.number
            cycle += 1
        final = runner.start()
        assert runner.wait_up(final), final.log.read_text()
        _drain(runner, final, settings, producer)
        result.final_exit = runner.stop(final)
        result.sealed_output = mlcore(settings, "stream", "seal", "--problem", PROBLEM,
                                      log=base / "logs" / "seal.log")
        result.seconds = time.monotonic() - started
        yield result
    finally:
        runner.close()
        redis_server.stop()


def _ledger(settings: Settings) -> tuple[Counter[str], list[Any], dict[int, str]]:
    with session_scope(settings.db_url) as s:
        events = s.execute(select(StreamEvent.event_id, StreamEvent.segment).where(
            StreamEvent.problem == PROBLEM)).all()
        segments = dict(s.execute(select(StreamSegment.segment, StreamSegment.state).where(
            StreamSegment.problem == PROBLEM)).all())
    return Counter(e for e, _ in events), [g for _, g in events], segments


def _dead_letter_ids(settings: Settings) -> list[str]:
    bus = EventBus(settings.stream_url, PROBLEM)
    try:
        return [json.loads(f["event_id"]) for _, f in bus.redis.xrange(bus.dead)]
    finally:
        bus.close()


def _raw_rows(settings: Settings) -> pd.DataFrame:
    """Every curated row of every published batch: key, event time, features."""
    spec = spec_of(settings)
    frames = [read_curated(b, columns=[spec.entity.key, "event_timestamp", *FEATURES])
              for b in published_batches(PROBLEM, settings.db_url)]
    raw = pd.concat(frames, ignore_index=True)
    raw["event_timestamp"] = pd.to_datetime(raw["event_timestamp"], utc=True)
    return raw


def _expected_rows(settings: Settings, plan: EventPlan) -> pd.DataFrame:
    """The valid events as curated rows should hold them."""
    spec = spec_of(settings)
    frame = pd.DataFrame(list(plan.valid.values()))
    frame["event_timestamp"] = pd.to_datetime(event_time(frame["year"], spec), utc=True)
    return frame[[spec.entity.key, "event_timestamp", *FEATURES]]


def _mismatches(got: pd.DataFrame, want: pd.DataFrame, key: str) -> list[str]:
    """Cells that differ (numbers: 1e-9 relative; a missing value only matches a missing)."""
    out = []
    got, want = got.set_index(key), want.set_index(key)
    for name in FEATURES:
        a = pd.to_numeric(got[name].astype(object), errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(want[name].astype(object), errors="coerce").to_numpy(dtype=float)
        same = np.isclose(a, b, rtol=1e-9, atol=0) | (np.isnan(a) & np.isnan(b))
        out += [f"{k} {name}: {x} != {y}" for k, x, y, ok in
                zip(got.index, a, b, same, strict=True) if not ok]
    return out


def test_kills_lose_nothing_and_duplicate_nothing(killed_run):
    run, plan, settings = killed_run, killed_run.plan, killed_run.settings
    # the faults happened as planned
    assert run.producer.error is None, run.producer.error
    assert sorted(run.producer.acked) == sorted(e["event_id"] for e in plan.send)
    assert len(run.random_kills) >= 20
    fired = {r.failpoint: r.exitcode for r in run.runs if r.failpoint}
    assert fired == dict.fromkeys(FAILPOINTS, -9), fired
    assert not [r.number for r in run.runs if r.failpoint and r.killed_by_test]
    assert run.redis_killed_at is not None
    unexpected = [(r.number, r.exitcode, r.log.read_text()[-2000:]) for r in run.runs[:-1]
                  if not r.killed_by_test and not r.failpoint and
                  r.number not in (run.redis_killed_at, run.redis_killed_at + 1)]
    assert not unexpected, unexpected  # a service that died of itself (not of the Redis outage)
    assert run.final_exit == 0
    assert len(plan.valid) > 3000 and len(plan.invalid) >= 50 and plan.duplicates > 300
    assert plan.late_older > 400

    # ledger: every valid event exactly once, sealed; no invalid one
    counts, segments_of_events, segments = _ledger(settings)
    assert set(counts) == set(plan.valid), (set(plan.valid) - set(counts),
                                            set(counts) - set(plan.valid))
    assert max(counts.values()) == 1 and sum(counts.values()) == len(plan.valid)
    assert None not in segments_of_events
    assert set(segments.values()) == {"published"}, Counter(segments.values())
    assert len(segments) >= 10, len(segments)  # sealed many times during the run

    # dead letters: every invalid event, nothing else (repeats allowed, see the docstring)
    letters = _dead_letter_ids(settings)
    assert set(letters) == set(plan.invalid)

    # raw store: each (entity, event time) of a valid event exactly once, with its values
    raw, expected = _raw_rows(settings), _expected_rows(settings, plan)
    pairs = ["id", "event_timestamp"]
    assert len(expected) == len(plan.valid) and not expected.duplicated(pairs).any()
    assert raw[raw.duplicated(pairs, keep=False)].to_dict("records") == []  # 0 duplicates
    assert len(raw) == len(expected)
    both = expected.merge(raw, on=pairs, how="outer", suffixes=("", "_raw"), indicator=True)
    assert (both["_merge"] == "both").all(), both["_merge"].value_counts()  # 0 lost, 0 foreign
    stored = both[pairs + [f"{f}_raw" for f in FEATURES]].rename(
        columns=lambda c: c.removesuffix("_raw"))
    stored["id"] = stored["id"].astype(str) + "@" + stored["event_timestamp"].astype(str)
    want = both[pairs + FEATURES].assign(id=stored["id"])
    assert _mismatches(stored.drop(columns="event_timestamp"),
                       want.drop(columns="event_timestamp"), "id") == []
    assert len(published_batches(PROBLEM, settings.db_url)) == len(segments)

    # online: per entity, the newest valid event (entities with only invalid events: none)
    spec = spec_of(settings)
    keys = sorted(plan.newest) + sorted({e["id"] for e in plan.invalid.values()} - set(plan.newest))
    online = online_features(spec, keys, settings)
    want = pd.DataFrame([{"id": k, **{f: plan.newest[k][f] for f in FEATURES}}
                         if k in plan.newest else {"id": k} for k in keys],
                        columns=["id", *FEATURES])
    assert _mismatches(online, want, spec.entity.key) == []
    assert online.loc[online["id"].isin(plan.newest), "AGEP"].notna().sum() == len(plan.newest)
    print(f"\nstream kills: {len(run.random_kills)} random SIGKILLs + {len(FAILPOINTS)} at "
          f"failpoints + redis-server once (run {run.redis_killed_at}); {len(run.runs)} service "
          f"starts; {len(plan.send)} events sent ({len(plan.valid)} valid, {plan.duplicates} "
          f"re-sent duplicates, {len(plan.invalid)} invalid, {plan.late_older} late older), "
          f"producer re-sends {run.producer.failures}; {len(segments)} batches sealed; "
          f"{len(letters)} dead letters for {len(plan.invalid)} invalid events; "
          f"{run.seconds:.0f} s")


def test_offline_recomputation_matches_what_was_served_online(killed_run, tmp_path):
    """Skew: the sealed batches materialized the offline way into a second, fresh home equal
    the stream service's online store on every feature of every entity."""
    settings, plan = killed_run.settings, killed_run.plan
    home2 = tmp_path / "offline_home"
    shutil.copytree(settings.home, home2, ignore=shutil.ignore_patterns("feast", "stream"))
    offline = Settings(home=home2, problems_dir=settings.problems_dir,
                       stream_url=settings.stream_url, database_url=None, airflow_url=None)
    spec = spec_of(offline)
    batches = [b.batch_id for b in published_batches(PROBLEM, offline.db_url)]
    assert len(batches) >= 10
    random.Random(7).shuffle(batches)  # any order: the newest event time wins
    rows = sum(materialize_batch(spec, b, offline).rows for b in batches)
    assert rows == len(plan.valid)
    keys = sorted(plan.newest)
    served = online_features(spec, keys, settings)
    recomputed = online_features(spec, keys, offline)
    assert recomputed["AGEP"].notna().sum() == len(keys)
    assert _mismatches(served, recomputed, spec.entity.key) == []
