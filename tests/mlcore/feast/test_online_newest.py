"""mlcore.feast.online_write: newest-by-event-time online writes on every online store Batchloop
supports (mlcore's SQLite store, PostgreSQL, Redis), read back through Feast's own
``get_online_features`` (and mlcore's ``online_features``)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pyarrow as pa
import pytest
import yaml
from one_feature_problem import one_feature_data
from pg_database import PG_ADMIN_URL, feast_pg_env, fresh_database

from mlcore.config import Settings
from mlcore.feast.online import online_features
from mlcore.feast.online_write import OnlineWriter, write_newest
from mlcore.feast.store import ensure_definitions
from mlcore.problems import ProblemSpec

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
PG = urlsplit(PG_ADMIN_URL.replace("postgresql+psycopg2", "postgresql"))
FEATURES = ["size", "colour", "doors", "fresh"]
T2 = datetime(2026, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC)  # a late event 1 ms older: same second
A = (1.5, "red", 3, True)
B = (-2.25, "blue", 5, False)
C = (1e300, "green", -7, True)


def _spec_data(name: str) -> dict:
    return one_feature_data(name, "int64", features=[
        {"name": "size", "kind": "numeric", "nullable": True},
        {"name": "colour", "kind": "categorical", "values": ["red", "blue", "green"]},
        {"name": "doors", "kind": "categorical", "values": [-7, 3, 5]},
        {"name": "fresh", "kind": "boolean"}])


@pytest.fixture(scope="module", params=["sqlite", "postgres", "redis"])
def online(request, tmp_path_factory):
    """A one-view store (float, str, int and bool features) on ``request.param``: the defaults
    (mlcore's SQLite store), or deploy/feature_store.<param>.yaml with the registry in a fresh
    PG database and the online rows in it or in a claimed Redis db; an ``OnlineWriter`` on it."""
    base = tmp_path_factory.mktemp(f"online_{request.param}")
    problems = base / "problems"
    problems.mkdir()
    name = f"newest_{request.param}"
    (problems / f"{name}.yaml").write_text(yaml.safe_dump(_spec_data(name)))
    spec = ProblemSpec.model_validate(_spec_data(name))
    config = None if request.param == "sqlite" else DEPLOY / f"feature_store.{request.param}.yaml"
    settings = Settings(home=base / "home", problems_dir=problems,
                        feature_repo=ROOT / "feature_repo", feast_config=config)
    client, db = (request.getfixturevalue("claim_redis_db")() if request.param == "redis"
                  else (None, -1))
    registry = (nullcontext("unused") if request.param == "sqlite"
                else fresh_database("batchloop_newest"))
    with registry as database, pytest.MonkeyPatch.context() as mp:
        env = {**feast_pg_env(database), "FEAST_REDIS_CONNECTION": f"127.0.0.1:6379,db={db}",
               "MLCORE_HOME": os.environ.get("MLCORE_HOME", "")}  # restored on exit
        for key, value in env.items():
            mp.setenv(key, str(value))
        store = ensure_definitions(spec, settings)
        writer = OnlineWriter(store, spec)
        try:
            yield SimpleNamespace(kind=request.param, spec=spec, settings=settings, store=store,
                                  writer=writer, redis=client,
                                  pg=f"postgresql://{PG.netloc}/{database}")
        finally:
            writer.close()
            if client is not None:
                client.flushdb()


def frame(rows: list[tuple], coded: bool = False) -> pa.Table:
    """An engineered frame: rows of (id, event time, size, colour, doors, fresh). ``coded``:
    colour dictionary-encoded in two chunks with their own dictionaries (as
    ``engineer_table`` reads text from a multi-file batch)."""
    cols = list(zip(*rows, strict=True))
    colour: pa.Array | pa.ChunkedArray = pa.array(cols[3], pa.string())
    if coded:
        half = len(colour) // 2
        colour = pa.chunked_array([colour[:half].dictionary_encode(),
                                   colour[half:].dictionary_encode()])
    return pa.table({
        "id": pa.array(cols[0], pa.int64()),
        "event_timestamp": pa.array(cols[1], pa.timestamp("ns", tz="UTC")),
        "size": pa.array(cols[2], pa.float64()), "colour": colour,
        "doors": pa.array(cols[4], pa.int64()), "fresh": pa.array(cols[5], pa.bool_()),
        "y": pa.array([1] * len(rows), pa.int64())})  # the target: not a feature, ignored


def read(online, keys: list[int]) -> dict[int, tuple]:
    """Per key, its features and event time (seconds) through Feast's get_online_features."""
    view = online.spec.feature_view
    got = online.store.get_online_features(
        features=[f"{view}:{n}" for n in FEATURES],
        entity_rows=[{"id": k} for k in keys]).to_dict(include_event_timestamps=True)
    return {k: (*(got[n][i] for n in FEATURES), got["size__ts"][i])
            for i, k in enumerate(keys)}


def seconds(t: datetime) -> int:
    return int(t.timestamp())


def test_a_late_older_event_never_overwrites_a_newer_value(online):
    online.writer.write(frame([(1, T2, *A)]))
    assert read(online, [1])[1] == (*A, seconds(T2))
    late = T2 - timedelta(milliseconds=1)  # older by less than a second
    assert online.writer.write(frame([(1, late, *B)])) == 1
    assert read(online, [1])[1] == (*A, seconds(T2))
    online.writer.write(frame([(1, T2 + timedelta(days=1), *C)]))
    assert read(online, [1])[1] == (*C, seconds(T2 + timedelta(days=1)))
    online.writer.write(frame([(1, T2, *A)]))  # the first event again, now late
    assert read(online, [1])[1] == (*C, seconds(T2 + timedelta(days=1)))


def test_the_newest_row_of_a_key_in_one_frame_wins(online):
    newer, older = T2 + timedelta(microseconds=1), T2
    got = online.writer.write(frame([(2, newer, *A), (2, older, *B), (3, older, *B),
                                     (3, newer, *A), (4, older, *B)]))
    assert got == 5  # rows offered
    values = read(online, [2, 3, 4])
    assert [values[k][:4] for k in (2, 3, 4)] == [A, A, B]


def test_an_equal_event_time_rewrites_the_value(online):
    online.writer.write(frame([(5, T2, *A)]))
    online.writer.write(frame([(5, T2, *B)]))
    assert read(online, [5])[5] == (*B, seconds(T2))
    online.writer.write(frame([(6, T2, *A), (6, T2, *B)]))  # in one frame: the later row
    assert read(online, [6])[6][:4] == B


def test_types_and_nulls_round_trip(online):
    online.writer.write(frame([(7, T2, 2.5, "green", 5, False),
                               (8, T2, None, None, None, None),
                               (9, T2, float("nan"), "red", -7, True)]))
    got = read(online, [7, 8, 9, 10])
    assert got[7] == (2.5, "green", 5, False, seconds(T2))
    assert [type(v) for v in got[7][:4]] == [float, str, int, bool]
    assert got[8][:4] == (None, None, None, None)
    assert got[9][:4] == (None, "red", -7, True)  # NaN is stored as missing
    assert got[10][:4] == (None, None, None, None)  # never written
    # a later frame fills the nulls; values stay typed through mlcore's reader too
    online.writer.write(frame([(8, T2 + timedelta(seconds=1), 0.0, "blue", 3, True)]))
    direct = online_features(online.spec, [7, 8], online.settings).set_index("id")
    assert direct.loc[8, FEATURES].tolist() == [0.0, "blue", 3, True]
    assert direct.loc[7, FEATURES].tolist() == [2.5, "green", 5, False]


def _packed(keys: list[int]) -> list[bytes]:
    """Feast's serialized entity keys (as its stores key their rows)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return [serialize_entity_key(EntityKey(join_keys=["id"], entity_values=[
        Value(int64_val=k)]), entity_key_serialization_version=3) for k in keys]


def _stored(online, keys: list[int]) -> list:
    """What the store holds for ``keys``, byte for byte (Redis hashes, PG or SQLite rows)."""
    packed = _packed(keys)
    table = f"batchloop_{online.spec.feature_view}"
    if online.kind == "redis":
        return [sorted(online.redis.hgetall(k + b"batchloop").items()) for k in packed]
    if online.kind == "postgres":
        import psycopg

        with psycopg.connect(online.pg) as conn:
            return conn.execute(f"SELECT * FROM {table} WHERE entity_key = ANY(%s) ORDER BY "
                                "entity_key, feature_name", (packed,)).fetchall()
    import sqlite3

    with sqlite3.connect(online.settings.home / "feast" / "online_store.db") as conn:
        return conn.execute(f"SELECT * FROM {table}_wide WHERE entity_key IN (?, ?) ORDER BY "
                            "entity_key", packed).fetchall()


def test_writing_a_frame_twice_changes_nothing(online):
    rows = frame([(11, T2, *A), (12, T2 - timedelta(days=3), *B), (12, T2, *C)])
    assert write_newest(online.store, online.spec, rows) == 3
    once = _stored(online, [11, 12])
    assert len(once) == (8 if online.kind == "postgres" else 2) and all(once)
    assert online.writer.write(rows) == 3
    assert _stored(online, [11, 12]) == once
    assert [v[:4] for v in read(online, [11, 12]).values()] == [A, C]


def test_a_closed_writer_reconnects(online):
    online.writer.close()
    online.writer.write(frame([(14, T2, *A)]))
    assert read(online, [14])[14][:4] == A


def test_an_empty_frame_writes_nothing(online):
    assert online.writer.write(frame([(13, T2, *A)]).slice(0, 0)) == 0
    assert read(online, [13])[13][:4] == (None, None, None, None)


def test_many_keys_in_one_frame(online):
    keys = list(range(1000, 2000))
    colours = ["red", "blue", "green"]
    rows = [(k, T2 + timedelta(seconds=k), float(k), colours[k % 3], 3, k % 2 == 0)
            for k in keys]
    online.writer.write(frame(rows, coded=True))
    online.writer.write(frame([(k, T2, -1.0, "blue", 5, True) for k in keys]))  # all older
    got = read(online, keys)
    assert [got[k][:4] for k in keys] == [r[2:] for r in rows]


def test_an_unsupported_online_store_is_refused(tmp_path):
    data = _spec_data("newest_feast_sqlite")
    problems = tmp_path / "problems"
    problems.mkdir()
    (problems / "newest_feast_sqlite.yaml").write_text(yaml.safe_dump(data))
    yml = (ROOT / "feature_repo" / "feature_store.yaml").read_text().replace(
        "type: mlcore.feast.sqlite_online.FastSqliteOnlineStore", "type: sqlite")
    (tmp_path / "feast_sqlite.yaml").write_text(yml)
    settings = Settings(home=tmp_path / "home", problems_dir=problems,
                        feature_repo=ROOT / "feature_repo",
                        feast_config=tmp_path / "feast_sqlite.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCORE_HOME", os.environ.get("MLCORE_HOME", ""))
        store = ensure_definitions(ProblemSpec.model_validate(data), settings)
        with pytest.raises(NotImplementedError, match="'sqlite'"):
            OnlineWriter(store, ProblemSpec.model_validate(data))


def test_postgres_fills_value_text_and_value_num_as_feast_does(online):
    if online.kind != "postgres":
        pytest.skip("PostgreSQL's table layout only")
    import psycopg

    table = f"batchloop_{online.spec.feature_view}"
    with psycopg.connect(online.pg, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS value_num float8")
        with OnlineWriter(online.store, online.spec) as writer:  # sees the new column
            writer.write(frame([(21, T2, 2.5, "red", -7, True)]))
        got = conn.execute(f"SELECT feature_name, value_text, value_num, event_ts FROM {table} "
                           "WHERE entity_key = %s", _packed([21])).fetchall()
    assert {r[3] for r in got} == {T2}
    rows = {r[0]: r[1:3] for r in got}
    assert rows["size"] == ("2.5", 2.5) and rows["doors"] == ("-7", -7.0)
    assert rows["colour"] == ("red", None) and rows["fresh"] == ("True", 1.0)


def test_at_one_event_time_the_later_created_time_wins_where_it_is_stored(online):
    """With ``batch_published_at`` in the frame (``corrections: supersede``), SQLite and
    PostgreSQL keep the row of the later created time at an equal event time; Redis (Feast's
    layout has no created time) keeps the later write."""
    def published(rows: list[tuple], at: datetime) -> pa.Table:
        table = frame(rows)
        return table.append_column("batch_published_at", pa.array(
            [at] * len(rows), pa.timestamp("ns", tz="UTC")))

    online.writer.write(published([(16, T2, *A)], T2 + timedelta(days=2)))
    online.writer.write(published([(16, T2, *B)], T2 + timedelta(days=1)))  # an older batch
    assert read(online, [16])[16][:4] == (B if online.kind == "redis" else A)
    online.writer.write(published([(16, T2, *C)], T2 + timedelta(days=3)))  # a correction
    assert read(online, [16])[16][:4] == C


AWKWARD = ["tab\there", "line\nbreak\r\nend", "back\\slash \\N \\.", "\\", "\\N", "ünï 😀", ""]


def test_awkward_text_round_trips(online):
    """Tabs, newlines, carriage returns, backslashes, a literal ``\\N`` and the COPY end marker
    survive (PostgreSQL stages the frame as COPY text); PostgreSQL's value_text keeps them."""
    keys = list(range(30, 30 + len(AWKWARD)))
    online.writer.write(frame([(k, T2, 1.0, s, 3, True) for k, s in zip(keys, AWKWARD,
                                                                           strict=True)]))
    got = read(online, keys)
    assert [got[k][1] for k in keys] == AWKWARD
    if online.kind == "postgres":
        import psycopg

        with psycopg.connect(online.pg) as conn:
            rows = conn.execute(f"SELECT entity_key, value_text FROM batchloop_"
                                f"{online.spec.feature_view} WHERE feature_name = 'colour' AND "
                                "entity_key = ANY(%s)", (_packed(keys),)).fetchall()
        text = dict(rows)
        assert [text[k] for k in _packed(keys)] == AWKWARD


def test_a_frame_larger_than_one_copy_chunk(online, monkeypatch):
    """PostgreSQL COPYs ``COPY_ENTITIES`` entities per chunk: a frame of many chunks (and a
    last, partial one) lands whole, newer-wins still holding for each row."""
    import mlcore.feast.online_write as online_write

    monkeypatch.setattr(online_write, "COPY_ENTITIES", 7)
    keys = list(range(3000, 3100))
    online.writer.write(frame([(k, T2, float(k), "red", 5, False) for k in keys[::2]]))
    rows = [(k, T2 - timedelta(seconds=1) if k % 2 == 0 else T2 + timedelta(seconds=k),
             -float(k), "green", -7, True) for k in keys]  # the even keys: older, skipped
    online.writer.write(frame(rows))
    got = read(online, keys)
    assert [got[k][:4] for k in keys] == [
        (float(k), "red", 5, False) if k % 2 == 0 else (-float(k), "green", -7, True)
        for k in keys]


def test_postgres_leaves_an_equal_row_alone(online):
    """An idempotent re-run writes no new row versions (xmin kept); an equal-time row with
    another value is still written."""
    if online.kind != "postgres":
        pytest.skip("PostgreSQL's row versions only")
    import psycopg

    def versions() -> list:
        with psycopg.connect(online.pg) as conn:
            return conn.execute(f"SELECT feature_name, xmin::text FROM batchloop_"
                                f"{online.spec.feature_view} WHERE entity_key = %s ORDER BY 1",
                                _packed([40])).fetchall()

    online.writer.write(frame([(40, T2, *A)]))
    first = versions()
    online.writer.write(frame([(40, T2, *A)]))
    assert versions() == first
    online.writer.write(frame([(40, T2, 1.5, "blue", 3, True)]))  # only colour differs
    changed = {f for (f, x), (_, y) in zip(first, versions(), strict=True) if x != y}
    assert changed == {"colour"} and read(online, [40])[40][:4] == (1.5, "blue", 3, True)


def test_concurrent_writers_keep_the_newest(online):
    """Two writers (own connections, own threads) upserting the same keys, newer and older,
    three times each: every key ends with the newer row, and neither writer fails."""
    from concurrent.futures import ThreadPoolExecutor

    keys = list(range(5000, 6500))
    newer = frame([(k, T2 + timedelta(seconds=1), float(k), "green", 5, True) for k in keys])
    older = frame([(k, T2, -1.0, "red", 3, False) for k in keys[::-1]])  # other row order
    writers = [OnlineWriter(online.store, online.spec) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(lambda w=w, f=f: [w.write(f) for _ in range(3)])
                    for w, f in zip(writers, (newer, older), strict=True)]
            for fut in done:
                fut.result()
    finally:
        for w in writers:
            w.close()
    got = read(online, keys)
    assert [got[k][:4] for k in keys] == [(float(k), "green", 5, True) for k in keys]


def test_postgres_recreates_its_staging_table(online):
    """A session without the staging table (as a pooler's other server session would be) gets
    it back at the next write."""
    if online.kind != "postgres":
        pytest.skip("PostgreSQL's staging table only")
    online.writer.write(frame([(50, T2, *A)]))
    online.writer._sink._conn.execute("DISCARD TEMP")  # drops the session's temporary tables
    online.writer.write(frame([(50, T2 + timedelta(seconds=1), *B)]))
    assert read(online, [50])[50][:4] == B
