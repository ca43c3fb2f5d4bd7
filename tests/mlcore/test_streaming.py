"""The online ingestion service (``mlcore.streaming``, issue 18) against the real Redis on
127.0.0.1:6379 (a claimed db per test, flushed after) and a real metadata store: the tests whose
outcome lives in the ledger (dedup, sealing) run on SQLite and PostgreSQL (``settings``).

What is checked: an event is dead-lettered exactly when the batch path would quarantine its row
(same rules); an event is taken in once however often it is sent or delivered; the newest event
by event time is what is online; sealing publishes micro-batches through the batch path
(labelled apart from unlabelled), re-sealing a claimed segment publishes it once, a segment the
batch path rejects is recorded with its reason and keeps its events; ``status`` and ``produce``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from mlcore import streaming
from mlcore.batches import BatchRejected
from mlcore.feast.online import online_features
from mlcore.ingestion import ingest_batch
from mlcore.store.models import Batch, QuarantinedRow
from mlcore.store.session import session_scope
from mlcore.store.stream_tables import StreamEvent, StreamSegment
from mlcore.stream import ledger
from mlcore.stream.bus import EventBus, dead_key, decode, events_key
from mlcore.streaming import Service, event_id_of, produce, seal, status

P = "census_employment"


def batch_id(n: int) -> str:
    return f"{P}-stream-{n:06d}"


@pytest.fixture
def redis_db(claim_redis_db):
    """A claimed, empty Redis db: its URL; flushed afterwards."""
    client, db = claim_redis_db()
    yield f"redis://127.0.0.1:6379/{db}"
    client.flushdb()
    client.close()


@pytest.fixture
def on_both(settings, redis_db):
    """Settings over the parametrized metadata store (SQLite, PostgreSQL) and the claimed db."""
    return settings.model_copy(update={"stream_url": redis_db})


@pytest.fixture
def on_sqlite(sqlite_settings, redis_db):
    """Settings over a SQLite metadata store and the claimed db."""
    return sqlite_settings.model_copy(update={"stream_url": redis_db})


@pytest.fixture(scope="module")
def rows(slices) -> dict[int, list[dict[str, Any]]]:
    """The census slices' rows as plain dicts (what a producer sends), by year."""
    return {y: pd.read_parquet(slices[y]).to_dict("records") for y in (2016, 2017)}


def stream_spec(spec, **stream):
    return spec.model_copy(update={"stream": spec.stream.model_copy(update=stream)})


def events(rows: list[dict[str, Any]], prefix: str, labelled: bool = True) -> list[dict]:
    out = []
    for n, row in enumerate(rows):
        event = {"event_id": f"{prefix}{n}", **row}
        if not labelled:
            event.pop("employed")
        out.append(event)
    return out


def send(spec, settings, evs: list[dict[str, Any]]) -> int:
    return produce(spec, settings, [json.dumps(e, default=str) for e in evs])


def serve_all(spec, settings, consumer: str = "test", max_seconds: float = 60.0):
    """Run a service until every entry was read and acknowledged; its counts."""
    svc = Service(spec, settings, consumer)

    def drained() -> bool:
        state = svc.bus.state()
        return state.lag == 0 and state.pending == 0

    try:
        return svc.run(drained, max_seconds)
    finally:
        svc.close()


def dead_letters(settings) -> list[dict[str, str]]:
    bus = EventBus(settings.stream_url, P)
    try:
        return [fields for _, fields in bus.redis.xrange(dead_key(P))]
    finally:
        bus.close()


def ledger_rows(settings) -> list[StreamEvent]:
    with session_scope(settings.db_url) as s:
        found = list(s.scalars(select(StreamEvent).where(StreamEvent.problem == P)
                               .order_by(StreamEvent.id)))
        s.expunge_all()
        return found


def segments(settings) -> list[StreamSegment]:
    with session_scope(settings.db_url) as s:
        found = list(s.scalars(select(StreamSegment).where(StreamSegment.problem == P)
                               .order_by(StreamSegment.segment)))
        s.expunge_all()
        return found


def manifest(settings, bid: str) -> Batch:
    with session_scope(settings.db_url) as s:
        row = s.scalar(select(Batch).where(Batch.problem == P, Batch.batch_id == bid))
        assert row is not None, bid
        s.expunge(row)
        return row


def quarantined(settings, bid: str) -> dict[int, set[str]]:
    with session_scope(settings.db_url) as s:
        got: dict[int, set[str]] = {}
        for q in s.scalars(select(QuarantinedRow).where(QuarantinedRow.problem == P,
                                                         QuarantinedRow.batch_id == bid)):
            got.setdefault(q.row_number, set()).add(q.rule)
        return got


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ------------------------------------------------------------------ validation parity
def test_dead_letters_are_the_rows_the_batch_path_quarantines(spec, on_sqlite, rows, tmp_path):
    settings = on_sqlite
    evs = events(rows[2016][:40], "v")
    evs[3]["AGEP"] = 150.0  # outside [0, 120]
    del evs[7]["id"]  # no entity key
    evs[11]["SCHL"] = "99"  # not in the vocabulary
    evs[15]["year"] = 2027  # event time in the future (2027-12-31)
    evs[19]["employed"] = 7  # not a binary label
    evs[23]["MAR"] = None  # a missing category
    broken = {3, 7, 11, 15, 19, 23}

    # offline: the same rows as one file through the batch path (a critical rule fires: the
    # batch is rejected, and its quarantined rows are recorded all the same)
    offline = [{k: v for k, v in e.items() if k != "event_id"} for e in evs]
    with pytest.raises(BatchRejected, match="critical rules fired: event_time_in_future"):
        ingest_batch(spec, str(write_rows(offline, tmp_path / "parity.parquet")), "parity",
                     settings)
    batch_rules = quarantined(settings, "parity")
    assert set(batch_rules) == broken

    # an undeclared field: the batch path rejects a file with that column as a whole
    extra = {**rows[2016][40], "nickname": "Al"}
    with pytest.raises(BatchRejected, match=r"undeclared columns \['nickname'\]"):
        ingest_batch(spec, str(write_rows([extra], tmp_path / "extra.parquet")), "extra",
                     settings)

    # online: the same events through the stream, plus the one with the undeclared field
    assert send(spec, settings, [*evs, {"event_id": "v-extra", **extra}]) == 41
    counts = serve_all(spec, settings)
    assert (counts.read, counts.taken, counts.dead_letters, counts.duplicates) == (41, 34, 7, 0)

    stream_ids = {i for i, _ in EventBus(settings.stream_url, P).redis.xrange(events_key(P))}
    letters = {json.loads(letter["event_id"]): letter for letter in dead_letters(settings)}
    assert set(letters) == {f"v{n}" for n in broken} | {"v-extra"}
    for n in broken:
        letter = letters[f"v{n}"]
        assert set(letter["_rule"].split(",")) == batch_rules[n], n
        assert letter["_reason"] and letter["_entry"] in stream_ids
        fields = decode({k: v for k, v in letter.items() if not k.startswith("_")})
        assert fields == json.loads(json.dumps(evs[n], default=str)), n
    with session_scope(settings.db_url) as s:
        why = {(q.row_number, q.rule): q.reason for q in s.scalars(
            select(QuarantinedRow).where(QuarantinedRow.batch_id == "parity"))}
    for n, rule in ((3, "AGEP_out_of_range"), (7, "entity_key_missing"),
                    (11, "SCHL_not_allowed"), (23, "MAR_not_allowed")):
        assert letters[f"v{n}"]["_reason"] == why[n, rule]  # the batch path's own words
    assert letters["v-extra"]["_rule"] == "undeclared_columns"
    assert "nickname" in letters["v-extra"]["_reason"]
    assert letters["v-extra"]["_entry"] in stream_ids

    taken = ledger_rows(settings)
    assert [r.event_id for r in taken] == [f"v{n}" for n in range(40) if n not in broken]


# ------------------------------------------------------------------ dedup
def test_an_event_is_taken_in_once_however_often_it_comes(spec, on_both, rows):
    settings = on_both
    evs = events(rows[2016][:20], "d")
    # the same event twice in one read
    assert send(spec, settings, [*evs, evs[0]]) == 21
    first = serve_all(spec, settings)
    assert (first.read, first.taken, first.duplicates, first.dead_letters) == (21, 20, 1, 0)

    # re-sent later: a later read
    send(spec, settings, evs[1:4])
    again = serve_all(spec, settings)
    assert (again.read, again.taken, again.duplicates) == (3, 0, 3)

    # delivered, then the service died before doing anything: its own pending, read again by the
    # service restarted under the same consumer name
    crashed = events(rows[2016][20:25], "c")
    send(spec, settings, crashed)
    bus = EventBus(settings.stream_url, P)
    assert len(bus.read("crashy", 100, block_ms=100)) == 5
    assert bus.state().pending == 5
    counts = serve_all(spec, settings, "crashy")  # its own pending entries first
    assert (counts.read, counts.taken) == (5, 5)
    assert bus.state().pending == 0

    # taken in and written online, then died before the acknowledgement (the process ends
    # where XACK would run): redelivered to the restarted consumer, stored once
    late = events(rows[2016][25:30], "a")
    send(spec, settings, late)
    dying = Service(spec, settings, "dying")
    dying.bus.ack = lambda ids: None  # the process is gone before XACK
    try:
        dying.take(dying.bus.read("dying", 100, block_ms=100))
    finally:
        dying.close()
    assert bus.state().pending == 5
    counts = serve_all(spec, settings, "dying")
    assert (counts.read, counts.taken, counts.duplicates) == (5, 0, 5)
    assert bus.state().pending == 0
    bus.close()

    taken = [r.event_id for r in ledger_rows(settings)]
    expected = [*(f"d{n}" for n in range(20)), *(f"c{n}" for n in range(5)),
                *(f"a{n}" for n in range(5))]
    assert taken == expected


def test_an_event_without_id_gets_a_deterministic_one(spec, on_sqlite, rows):
    settings = on_sqlite
    event = {k: v for k, v in rows[2016][0].items()}
    other = {k: v for k, v in rows[2016][1].items()}
    line = json.dumps(event)
    assert produce(spec, settings, [line, line, json.dumps(other)]) == 3
    bus = EventBus(settings.stream_url, P)
    sent = [decode(f)["event_id"] for _, f in bus.redis.xrange(events_key(P))]
    bus.close()
    same = event_id_of(json.loads(line))
    assert sent == [same, same, event_id_of(other)] and same != event_id_of(other)
    # the same content with its keys in another order is the same event
    assert event_id_of(dict(reversed(list(event.items())))) == same
    counts = serve_all(spec, settings)
    assert (counts.taken, counts.duplicates) == (2, 1)
    assert [r.event_id for r in ledger_rows(settings)] == [same, event_id_of(other)]


def test_entries_a_dead_consumer_left_are_taken_over(spec, on_sqlite, rows, monkeypatch):
    settings = on_sqlite
    send(spec, settings, events(rows[2016][:8], "o"))
    bus = EventBus(settings.stream_url, P)
    bus.ensure_group()
    assert len(bus.read("gone", 100, block_ms=100)) == 8  # delivered; that consumer died
    monkeypatch.setattr(streaming, "RECLAIM_IDLE_MS", 0)  # idle long enough at once
    counts = serve_all(spec, settings, "other")
    assert (counts.read, counts.taken) == (8, 8)
    assert bus.state().pending == 0
    bus.close()


# ------------------------------------------------------------------ online, newest wins
def test_the_newest_event_by_event_time_is_online(spec, on_sqlite, rows):
    settings = on_sqlite
    a, b = rows[2016][0], rows[2016][1]
    newer_a = {**a, "event_id": "a17", "year": 2017, "AGEP": 40.0}
    older_a = {**a, "event_id": "a16", "year": 2016, "AGEP": 39.0}
    newer_b = {**b, "event_id": "b17", "year": 2017, "AGEP": 60.0}
    older_b = {**b, "event_id": "b16", "year": 2016, "AGEP": 59.0}
    send(spec, settings, [newer_a])
    serve_all(spec, settings)
    assert online_features(spec, [a["id"]], settings)["AGEP"].tolist() == [40.0]
    send(spec, settings, [older_a])  # late, in a later read
    send(spec, settings, [newer_b, older_b])  # newer first, in one read
    counts = serve_all(spec, settings)
    assert counts.taken == 3 and counts.dead_letters == 0
    got = online_features(spec, [a["id"], b["id"]], settings)
    assert got["AGEP"].tolist() == [40.0, 60.0]
    # both events are kept for the offline side: each is its own (key, event time)
    assert len(ledger_rows(settings)) == 4


def test_a_later_event_of_one_key_and_time_supersedes_the_earlier_everywhere(spec, on_sqlite,
                                                                             rows):
    # the same (id, year) sent twice with different event IDs: in one read the earlier is
    # dead-lettered, the later kept; across reads both are taken in and the seal publishes the
    # later one (dead-lettering the earlier); online holds the later: offline == online
    settings = on_sqlite
    spec = stream_spec(spec, seal_every_events=10_000, seal_every_seconds=3600)
    a, b = rows[2016][0], rows[2016][1]
    send(spec, settings, [{**a, "event_id": "a1", "AGEP": 30.0},
                          {**a, "event_id": "a2", "AGEP": 31.0}])  # one read
    counts = serve_all(spec, settings)
    assert counts.taken == 1 and counts.dead_letters == 1
    [letter] = dead_letters(settings)
    assert json.loads(letter["event_id"]) == "a1"
    assert letter["_rule"] == "duplicate_entity_event_time"
    send(spec, settings, [{**b, "event_id": "b1", "AGEP": 50.0}])
    serve_all(spec, settings)
    send(spec, settings, [{**b, "event_id": "b2", "AGEP": 51.0}])  # a later read
    serve_all(spec, settings)
    assert online_features(spec, [a["id"], b["id"]], settings)["AGEP"].tolist() == [31.0, 51.0]
    assert seal(spec, settings) == [batch_id(1)]
    got = curated(settings, batch_id(1))
    assert got.set_index("id")["AGEP"].to_dict() == {a["id"]: 31.0, b["id"]: 51.0}
    assert manifest(settings, batch_id(1)).quarantine_count == 0
    letters = dead_letters(settings)
    assert [json.loads(x["event_id"]) for x in letters] == ["a1", "b1"]
    assert "superseded by a later event" in letters[1]["_reason"]


def test_a_few_rows_an_earlier_batch_holds_do_not_hold_back_a_small_segment(spec, on_sqlite,
                                                                             rows, tmp_path):
    # 1 of 15 events (6.7 % > max_bad_row_share 5 %) is a (key, time) batch "off" published:
    # it is quarantined, the other 14 publish (the per-event rules already ran on each)
    settings = on_sqlite
    spec = stream_spec(spec, seal_every_events=10_000, seal_every_seconds=3600)
    ingest_batch(spec, str(write_rows(rows[2016][100:110], tmp_path / "off.parquet")), "off",
                 settings)
    send(spec, settings, events([*rows[2016][:14], rows[2016][100]], "s"))
    serve_all(spec, settings)
    assert seal(spec, settings) == [batch_id(1)]
    row = manifest(settings, batch_id(1))
    assert (row.state, row.row_count, row.quarantine_count) == ("published", 15, 1)
    assert quarantined(settings, batch_id(1)) == {14: {"duplicate_in_published_batch"}}


# ------------------------------------------------------------------ sealing
def curated(settings, bid: str) -> pd.DataFrame:
    return pd.read_parquet(settings.partition("curated", P, bid)).sort_values("id")


def test_sealing_publishes_micro_batches_through_the_batch_path(spec, on_both, rows, tmp_path):
    settings = on_both
    spec = stream_spec(spec, seal_every_events=25, seal_every_seconds=3600)
    # published offline first: a stream event for one of its (id, year) is quarantined at seal
    ingest_batch(spec, str(write_rows(rows[2016][100:110], tmp_path / "off.parquet")), "off",
                 settings)
    labelled = events([*rows[2016][:49], rows[2016][100]], "l")
    unlabelled = events(rows[2017][:15], "u", labelled=False)
    evs = [*labelled[:30], *unlabelled, *labelled[30:]]
    send(spec, settings, evs)
    counts = serve_all(spec, settings)  # 65 open >= 25: the service seals by itself
    assert counts.taken == 65
    assert counts.sealed == [batch_id(1), batch_id(2), batch_id(3)]
    assert ledger.open_events(P, settings.db_url).events == 0

    segs = segments(settings)
    assert [(s.batch_id, s.state, s.events) for s in segs] == [
        (batch_id(1), "published", 25), (batch_id(2), "published", 25),
        (batch_id(3), "published", 15)]
    parts = {1: labelled[:25], 2: labelled[25:], 3: unlabelled}
    for n, part in parts.items():
        row = manifest(settings, batch_id(n))
        assert row.state == "published" and row.row_count == len(part)
        got = curated(settings, batch_id(n))
        dup = n == 2  # holds the event of the (id, year) batch "off" published
        assert quarantined(settings, batch_id(n)) == (
            {24: {"duplicate_in_published_batch"}} if dup else {})
        assert row.quarantine_count == int(dup)
        want = pd.DataFrame(part[:-1] if dup else part).sort_values("id")
        for col in ("id", *spec.inputs):
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), (n, col)
        if n == 3:
            assert "employed" not in got.columns  # an unlabelled batch: scored, not trained on
        else:
            assert got["employed"].tolist() == want["employed"].tolist()
        raw = list(settings.partition("raw", P, batch_id(n)).glob("*.parquet"))
        assert len(raw) == 1 and "event_id" not in pq.read_schema(raw[0]).names


def test_events_arriving_during_a_seal_wait_for_the_next_one(spec, on_sqlite, rows,
                                                             monkeypatch):
    # a seal takes what was open when it began: under steady input it made one tiny batch per
    # publish until the input stopped (helper B's benchmark: 187 segments for 159k events)
    import threading

    settings = on_sqlite
    spec = stream_spec(spec, seal_every_events=10_000, seal_every_seconds=3600)
    first = [(e.pop("event_id"), e) for e in events(rows[2016][:20], "a")]
    later = [(e.pop("event_id"), e) for e in events(rows[2016][20:30], "b")]
    ledger.take_in(P, first, spec.target.name, settings.db_url)
    monkeypatch.setenv("MLCORE_STALL", "stream.segment_written=1.5")
    done: list[list[str]] = []
    sealer = threading.Thread(target=lambda: done.append(seal(spec, settings)))
    sealer.start()
    time.sleep(0.5)  # the seal has claimed the first 20 and is publishing them
    ledger.take_in(P, later, spec.target.name, settings.db_url)
    sealer.join()
    assert done == [[batch_id(1)]]
    assert [(s.segment, s.events) for s in segments(settings)] == [(1, 20)]
    assert ledger.open_events(P, settings.db_url).events == 10


def test_the_oldest_open_event_s_age_seals_too(spec, on_sqlite, rows):
    settings = on_sqlite
    spec = stream_spec(spec, seal_every_seconds=0.5)  # 5 events, far below seal_every_events
    send(spec, settings, events(rows[2016][:5], "g"))
    svc = Service(spec, settings, "aging")
    try:
        counts = svc.run(lambda: bool(svc.counts.sealed), max_seconds=30)
    finally:
        svc.close()
    assert counts.sealed == [batch_id(1)]
    assert manifest(settings, batch_id(1)).row_count == 5


def test_airflow_unreachable_publishes_all_the_same(spec, on_sqlite, rows):
    """The batch is published; Airflow is told at a later seal (or the sweep nudges it)."""
    settings = on_sqlite.model_copy(update={"airflow_url": "http://127.0.0.1:1"})
    send(spec, settings, events(rows[2016][:5], "n"))
    serve_all(spec, settings)
    assert seal(spec, settings) == [batch_id(1)]
    assert manifest(settings, batch_id(1)).state == "published"
    assert ledger.unnotified(P, settings.db_url) == [batch_id(1)]
    assert segments(settings)[0].notified_at is None


def test_resealing_a_claimed_segment_publishes_it_once(spec, on_both, rows):
    settings = on_both
    send(spec, settings, events(rows[2016][:20], "r"))
    assert serve_all(spec, settings).taken == 20
    # a sealer claimed the events and died before publishing
    assert ledger.claim(P, settings.db_url, 1000) == 1
    assert ledger.unfinished(P, settings.db_url) == [1]
    assert seal(spec, settings) == [batch_id(1)]
    assert seal(spec, settings) == []
    assert [(s.segment, s.state, s.events) for s in segments(settings)] == [(1, "published", 20)]
    with session_scope(settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Batch).where(
            Batch.problem == P)) == 1
    assert manifest(settings, batch_id(1)).row_count == 20


def test_a_segment_the_batch_path_rejects_is_recorded_and_keeps_its_events(
        spec, on_both, rows, tmp_path):
    settings = on_both
    ingest_batch(spec, str(write_rows(rows[2016][:40], tmp_path / "off.parquet")), "off",
                 settings)
    send(spec, settings, events(rows[2016][:30], "x"))  # all already published offline
    assert serve_all(spec, settings).taken == 30
    assert seal(spec, settings) == []
    [seg] = segments(settings)
    rejected = manifest(settings, batch_id(1))
    assert (seg.state, rejected.state) == ("rejected", "rejected")
    assert seg.reason == rejected.reason
    assert "every one of 30 rows failed validation" in seg.reason
    assert "duplicate_in_published_batch=30" in seg.reason
    kept = ledger_rows(settings)
    assert len(kept) == 30 and {r.segment for r in kept} == {1}
    assert seal(spec, settings) == []  # not sealed again, not lost
    state = status(spec, settings)
    assert state["segments"] == {"rejected": 1}
    assert "1 sealed segments rejected by validation" in state["attention"]


# ------------------------------------------------------------------ status
def test_status_counts_and_attention(spec, on_sqlite, rows):
    settings = on_sqlite
    spec = stream_spec(spec, max_lag_events=3, max_dead_letters=0)
    evs = events(rows[2016][:5], "s")
    evs[4]["AGEP"] = -1.0
    send(spec, settings, evs)
    before = status(spec, settings)
    assert (before["lag"], before["pending"], before["dead_letters"]) == (5, 0, 0)
    assert (before["events_taken"], before["open_events"]) == (0, 0)
    assert [a.split(" ")[:2] for a in before["attention"]] == [["lag", "5"]]
    assert "stream.max_lag_events 3" in before["attention"][0]

    serve_all(spec, settings)
    served = status(spec, settings)
    assert (served["lag"], served["pending"], served["dead_letters"]) == (0, 0, 1)
    assert (served["events_taken"], served["open_events"]) == (4, 4)
    assert served["last_sealed"] is None and served["segments"] == {}
    assert len(served["attention"]) == 1
    assert "1 dead letters > stream.max_dead_letters 0" in served["attention"][0]

    assert seal(spec, settings) == [batch_id(1)]
    sealed = status(spec, settings)
    assert sealed["open_events"] == 0 and sealed["segments"] == {"published": 1}
    assert sealed["last_sealed"]["batch_id"] == batch_id(1)
    assert sealed["last_sealed"]["events"] == 4


# ------------------------------------------------------------------ produce
def test_produce_names_the_line_that_is_not_json(spec, on_sqlite, rows):
    settings = on_sqlite
    good = json.dumps(events(rows[2016][:1], "p")[0])
    after = json.dumps(events(rows[2016][1:2], "q")[0])
    with pytest.raises(ValueError, match=r"^line 3: not JSON"):
        produce(spec, settings, [good, "", "{not json", after])
    with pytest.raises(ValueError, match=r"^line 2: not a JSON object"):
        produce(spec, settings, [good, "[1, 2]", after])
    bus = EventBus(settings.stream_url, P)
    sent = [decode(f)["event_id"] for _, f in bus.redis.xrange(events_key(P))]
    bus.close()
    assert "q0" not in sent  # nothing after the bad line


def test_produce_paces_at_the_rate(spec, on_sqlite, rows):
    settings = on_sqlite
    lines = [json.dumps(e) for e in events(rows[2016][:30], "t")]
    start = time.monotonic()
    assert produce(spec, settings, lines, rate=60) == 30
    paced = time.monotonic() - start
    start = time.monotonic()
    assert produce(spec, settings, lines) == 30
    unpaced = time.monotonic() - start
    assert 0.45 <= paced < 5 and unpaced < paced
