"""mlcore's Feast SQLite online store (``mlcore.feast.sqlite_online``): what it stores is what
Feast's own conversions would give, byte for byte; reads through Feast match the offline store;
the newer row wins whatever the order;
re-runs are idempotent; ``feast apply`` / ``teardown`` work."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.types import Bool, Bytes, Float32, Float64, Int32, Int64, String, UnixTimestamp

from mlcore.feast.online import online_feature_rows, online_features
from mlcore.feast.sqlite_encoding import column_values, entity_key_bytes
from mlcore.feast.sqlite_online import FastSqliteOnlineStore, db_path, table_name
from mlcore.feast.store import feature_store
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2018, 12, 31, tzinfo=UTC)
TYPES = {"f32": Float32, "f64": Float64, "i64": Int64, "i32": Int32, "flag": Bool,
         "name": String, "blob": Bytes, "when": UnixTimestamp}


def values() -> dict[str, list]:
    """Edge values of each type, one per entity (None/NaN: missing)."""
    return {"f32": [0.0, -0.0, 35.0, 0.1, np.nan, 3.4e38, 1e-45, -7.25],
            "f64": [0.0, 0.1, np.nan, -1e300, 5e-324, 2.5, 1 / 3, -0.0],
            "i64": [0, -1, 300, 2**63 - 1, -(2**63), 127, 128, 5],
            "i32": [0, -1, 2**31 - 1, -(2**31), 1, 2, 3, 4],
            "flag": [True, False, True, False, True, None, False, True],
            "name": ["", "a", "ünï", "x" * 300, None, "b", "c", "d"],
            "blob": [b"", b"\x00", b"\xff" * 9, None, b"a", b"b", b"c", b"d"],
            "when": [datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(8)]}


@pytest.fixture
def repo(tmp_path):
    """A RepoConfig on the fast store and a view with one feature of every supported type."""
    config = RepoConfig(project="t", provider="local", registry=str(tmp_path / "registry.db"),
                        online_store={"type": "mlcore.feast.sqlite_online.FastSqliteOnlineStore",
                                      "path": str(tmp_path / "online.db")},
                        entity_key_serialization_version=3, repo_path=tmp_path)
    person = Entity(name="person", join_keys=["id"], value_type=ValueType.INT64)
    view = FeatureView(name="fv", entities=[person], schema=[
        Field(name="id", dtype=Int64), *(Field(name=n, dtype=t) for n, t in TYPES.items())],
        source=FileSource(path=str(tmp_path / "none.parquet"), timestamp_field="ts"))
    store = FastSqliteOnlineStore()
    store.update(config, [], [view], [], [person], partial=False)
    yield config, view, store
    store.disconnect()


def frame(ids: list[int], ts: datetime, **overrides: list) -> pd.DataFrame:
    data = {n: v[:len(ids)] for n, v in values().items()}
    df = pd.DataFrame({"id": ids, "event_timestamp": ts, **data, **overrides})
    return df.astype({"f32": "float32", "i64": "int64", "i32": "int32"})


def read(repo, ids: list[int]) -> list:
    config, view, store = repo
    keys = [EntityKeyProto(join_keys=["id"], entity_values=python_values_to_proto_values(
        [i], ValueType.INT64)) for i in ids]
    return store.online_read(config, view, keys)


def test_entity_keys_are_feasts_bytes():
    for vtype, keys in [(ValueType.INT64, [0, -1, 2**63 - 1, -(2**63), 70_000]),
                        (ValueType.INT32, [0, -5, 2**31 - 1]),
                        (ValueType.STRING, ["", "a", "ünï"])]:
        for n in (len(keys), 64 * len(keys)):  # the small-list path and the vectorized one
            many = (keys * 64)[:n]
            want = [serialize_entity_key(EntityKeyProto(join_keys=["id"], entity_values=[v]), 3)
                    for v in python_values_to_proto_values(many, vtype)]
            got = entity_key_bytes(np.asarray(many) if vtype != ValueType.STRING else many,
                                   "id", vtype, 3)
            assert got == want, vtype


def test_read_back_values_are_byte_equal_to_feasts_protos(repo):
    config, view, store = repo
    df = frame(list(range(8)), T0)
    assert store.write_frame(config, view, df) == 8
    rows = read(repo, list(range(8)))
    for name, feast_type in TYPES.items():
        want = [p.SerializeToString() for p in python_values_to_proto_values(
            df[name].tolist(), feast_type.to_value_type())]
        got = [row[name].SerializeToString() for _, row in rows]
        assert got == want, name
    assert {ts for ts, _ in rows} == {T0}


@pytest.mark.parametrize("name, dtype", [("f32", "float32"), ("f32", "float64"),
                                         ("f64", "float64"), ("i64", "int64")])
def test_vectorized_columns_hold_what_feast_would_store(name, dtype):
    """The fast conversions (float / int64 columns) against Feast's per-value one."""
    col = pd.Series(values()[name], dtype=dtype)
    vtype = TYPES[name].to_value_type()
    field = {"f32": "float_val", "f64": "double_val", "i64": "int64_val"}[name]
    protos = python_values_to_proto_values(col.tolist(), vtype)
    want = [getattr(p, field) if p.WhichOneof("val") else None for p in protos]
    got = column_values(col, vtype)
    assert [np.float32(v).tobytes() if name == "f32" and v is not None else v for v in got] == \
        [np.float32(v).tobytes() if name == "f32" and v is not None else v for v in want]


def test_feasts_own_write_path_stores_the_same_rows(repo, tmp_path):
    """``online_write_batch`` (Feast's materialize / push) and the bulk path agree."""
    config, view, store = repo
    df = frame(list(range(8)), T0)
    store.write_frame(config, view, df)
    bulk = read(repo, list(range(8)))
    data = [(EntityKeyProto(join_keys=["id"], entity_values=python_values_to_proto_values(
        [i], ValueType.INT64)), {n: protos[i] for n, protos in (
            (n, python_values_to_proto_values(df[n].tolist(), t.to_value_type()))
            for n, t in TYPES.items())}, T0, None) for i in range(8)]
    with sqlite3.connect(db_path(config)) as conn:
        conn.execute(f'DELETE FROM "{table_name(config, view)}"')
    progress: list[int] = []
    store.online_write_batch(config, view, data, progress.append)
    assert progress == [8]
    assert [(ts, {n: v.SerializeToString() for n, v in row.items()}) for ts, row in
            read(repo, list(range(8)))] == \
        [(ts, {n: v.SerializeToString() for n, v in row.items()}) for ts, row in bulk]


def test_the_newer_row_wins_whatever_the_write_order(repo):
    config, view, store = repo
    old, new = frame([1, 2], T0, i64=[10, 10]), frame([1, 3], T0 + timedelta(days=1), i64=[20, 20])
    store.write_frame(config, view, new)
    store.write_frame(config, view, old)  # late: entity 1 keeps 20, entity 2 is new
    got = {i: row["i64"].int64_val for i, (_, row) in zip([1, 2, 3], read(repo, [1, 2, 3]),
                                                          strict=True)}
    assert got == {1: 20, 2: 10, 3: 20}
    store.write_frame(config, view, frame([1], T0 + timedelta(days=1), i64=[21]))  # same time
    assert read(repo, [1])[0][1]["i64"].int64_val == 21  # a re-run of the same event replaces
    dup = pd.concat([frame([4], T0 + timedelta(days=2), i64=[40]), frame([4], T0, i64=[30])])
    store.write_frame(config, view, dup)  # within one frame too: the newest row per entity
    assert read(repo, [4])[0][1]["i64"].int64_val == 40
    assert read(repo, [99]) == [(None, None)]
    with sqlite3.connect(db_path(config)) as conn:  # a store nothing was materialized into yet
        conn.execute(f'DROP TABLE "{table_name(config, view)}"')
    assert read(repo, [1]) == [(None, None)]
    assert store.read_rows(config, view, [1, 2], ["i64"]) == [None, None]


def table_dump(settings, spec) -> list[tuple]:
    store = feature_store(settings)
    view = store.get_feature_view(spec.feature_view)
    with sqlite3.connect(db_path(store.config)) as conn:
        return conn.execute(f'SELECT * FROM "{table_name(store.config, view)}" '
                            "ORDER BY entity_key").fetchall()


@pytest.fixture
def home(sqlite_settings, spec, slices, tmp_path):
    """2015 and 2016 ingested; 2016 holds the 2015 people a year older (newer event time)."""
    raw = pd.read_parquet(slices[2015])
    ingest_batch(spec, str(slices[2015]), "2015", sqlite_settings)
    path = tmp_path / "2016.parquet"
    raw.assign(year=2016, AGEP=raw["AGEP"] + 1).to_parquet(path, index=False)
    ingest_batch(spec, str(path), "2016", sqlite_settings)
    return sqlite_settings, raw.set_index("id")


def via_feast(settings, spec, ids: list[int]) -> pd.DataFrame:
    got = feature_store(settings).get_online_features(
        features=[f"{spec.feature_view}:{n}" for n in spec.feature_names],
        entity_rows=[{"id": i} for i in ids]).to_dict()
    return pd.DataFrame(got).set_index("id")[spec.feature_names].astype("float64")


def test_reads_through_feast_equal_the_offline_frame_and_the_direct_read(spec, home):
    settings, raw = home
    result = materialize_batch(spec, "2015", settings)
    view = feature_store(settings).get_feature_view(spec.feature_view)
    assert [(a.isoformat(), b.isoformat()) for a, b in view.materialization_intervals] == \
        [(result.window_start, result.window_end)]  # recorded as Feast's materialize does
    offline = pd.read_parquet(result.offline_uri).set_index("id")[spec.feature_names]
    ids = offline.index.tolist()
    pd.testing.assert_frame_equal(via_feast(settings, spec, ids), offline.astype("float64"))
    direct = online_features(spec, [*ids, 10**9], settings)
    assert direct["id"].tolist() == [*ids, 10**9] and direct.iloc[-1, 1:].isna().all()
    pd.testing.assert_frame_equal(direct.set_index("id").head(len(ids)),
                                  offline.astype("float64"))
    assert online_features(spec, [], settings).columns.tolist() == ["id", *spec.feature_names]
    feast = online_features(spec, ids[:50], settings, via_feast=True)
    assert feast["id"].tolist() == ids[:50]
    pd.testing.assert_frame_equal(feast[spec.feature_names].astype("float64"),
                                  direct[spec.feature_names].head(50))


def test_feasts_own_sqlite_store_still_works_through_the_normal_path(spec, home, tmp_path):
    """``type: sqlite`` (Feast's store): ``materialize_batch`` goes through Feast's
    ``materialize``, reads through ``get_online_features``; same values as mlcore's store."""
    settings, raw = home
    stock = tmp_path / "stock.yaml"
    stock.write_text((ROOT / "feature_repo" / "feature_store.yaml").read_text()
                     .replace("mlcore.feast.sqlite_online.FastSqliteOnlineStore", "sqlite")
                     .replace("/feast/registry.db", "/feast/stock_registry.db")
                     .replace("/feast/online_store.db", "/feast/stock_online.db"))
    stock_settings = settings.model_copy(update={"feast_config": stock})
    ids = [*raw.index[:30].tolist(), 10**9]
    for s in (settings, stock_settings):
        materialize_batch(spec, "2015", s)
    with sqlite3.connect(settings.home / "feast" / "stock_online.db") as conn:
        assert conn.execute("SELECT count(*) FROM batchloop_census_employment_fv").fetchone() \
            == (1500 * len(spec.feature_names),)  # Feast's own layout, a row per value
    ours, theirs = (online_feature_rows(spec, ids, s) for s in (settings, stock_settings))
    assert ours[-1] is None and theirs[-1] is None
    assert [tuple(map(float, r)) for r in ours[:-1]] == \
        [tuple(map(float, r)) for r in theirs[:-1]] == \
        [tuple(map(float, r)) for r in raw.loc[ids[:-1], spec.feature_names].itertuples(
            index=False)]


@pytest.mark.parametrize("order", [("2015", "2016"), ("2016", "2015")])
def test_a_late_or_rerun_older_batch_does_not_regress_the_online_store(spec, home, order):
    settings, raw = home
    for batch in (*order, "2015"):  # and the older one re-run at the end
        materialize_batch(spec, batch, settings)
    got = online_features(spec, raw.index[:20].tolist(), settings)
    assert got["AGEP"].tolist() == (raw["AGEP"].head(20) + 1).astype(float).tolist()


def test_rerunning_a_batch_leaves_the_table_unchanged(spec, home):
    settings, _ = home
    materialize_batch(spec, "2015", settings)
    first = table_dump(settings, spec)
    materialize_batch(spec, "2015", settings)
    assert len(first) == 1500 and table_dump(settings, spec) == first


def test_readers_do_not_wait_for_a_writer(spec, home):
    """WAL: a write transaction held open does not block an online read (old values seen)."""
    settings, raw = home
    materialize_batch(spec, "2015", settings)
    store = feature_store(settings)
    writer = sqlite3.connect(db_path(store.config), timeout=0.1)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(f'UPDATE "{table_name(store.config, store.get_feature_view(spec.feature_view))}"'
                   ' SET "AGEP" = -1')
    try:
        assert online_features(spec, [int(raw.index[0])], settings)["AGEP"].tolist() == \
            [float(raw["AGEP"].iloc[0])]
    finally:
        writer.rollback()
        writer.close()


def test_teardown_then_reapply_in_process(spec, home):
    settings, raw = home
    materialize_batch(spec, "2015", settings)
    assert online_features(spec, [int(raw.index[0])], settings)["AGEP"].notna().all()
    feature_store(settings).teardown()
    assert not list((settings.home / "feast").glob("online_store.db*"))
    # Feast 0.67's SQL registry keeps feature_view_version_history rows through a teardown, so
    # re-applying into the same registry fails (UNIQUE constraint; Feast's own SQLite store
    # too): start the registry afresh, as a new home would.
    (settings.home / "feast" / "registry.db").unlink()
    materialize_batch(spec, "2016", settings)  # re-registers the definitions, rewrites the rows
    assert online_features(spec, [int(raw.index[0])], settings)["AGEP"].tolist() == \
        [float(raw["AGEP"].iloc[0] + 1)]


def test_feast_cli_apply(sqlite_settings):
    """The feast CLI (a fresh process) resolves
    ``type: mlcore.feast.sqlite_online.FastSqliteOnlineStore``
    and ``feast apply`` creates only this store's table (teardown: the in-process test above)."""
    home = sqlite_settings.home.resolve()
    (home / "feast").mkdir()  # the registry's folder (mlcore makes it before opening the store)
    env = {**os.environ, "MLCORE_HOME": str(home), "FEAST_NO_PROGRESS": "1"}
    feast = [str(Path(sys.executable).parent / "feast"), "-c", str(ROOT / "feature_repo")]
    out = subprocess.run([*feast, "apply"], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    with sqlite3.connect(home / "feast" / "online_store.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert sorted(tables) == sorted(f"batchloop_{p}_fv_wide" for p in
                            ("census_employment", "credit_card_segment", "used_car_price"))
