"""Features through a real Feast store (SQLite registry and online store, parquet offline store):
offline partitions, online values, point-in-time joins, idempotent materialization; and the
production Feast configs (``MLCORE_FEAST_CONFIG``) on the real PostgreSQL and Redis."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from sqlalchemy import select

from mlcore.batches import BatchNotFound
from mlcore.data.io import read_curated
from mlcore.feast.online import online_features
from mlcore.feast.retrieval import FeatureRetrievalError, historical_features
from mlcore.feast.store import feature_store, online_store_lock
from mlcore.features import engineer, materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import Materialization
from mlcore.store.session import session_scope

KEYS = {2015: [0, 7, 123, 1499], 2016: [68785, 69000, 70284]}


@pytest.fixture(scope="module")
def fx(settings_factory, spec, slices):
    """2015 and 2016 ingested and materialized into one store (tests only read it)."""
    settings = settings_factory("features")
    results = {}
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
        results[year] = materialize_batch(spec, str(year), settings)
    curated = {y: read_curated(get_batch(spec.name, str(y), settings.db_url)) for y in results}
    return SimpleNamespace(settings=settings, results=results, curated=curated)


def materializations(settings) -> list[Materialization]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(Materialization).order_by(Materialization.batch_id)))


def probe(tmp_path: Path, ids: list[int], when: list[pd.Timestamp]) -> SimpleNamespace:
    """A Batch-like entity file asking for ``ids`` as of ``when`` (no target)."""
    path = tmp_path / "probe.parquet"
    pd.DataFrame({"id": ids, "event_timestamp": when}).to_parquet(path, index=False)
    return SimpleNamespace(batch_id="probe", problem="p", files=None, curated_uri=str(path))


def utc(value) -> pd.Timestamp:
    """SQLite hands DateTime(timezone=True) back naive; the store only writes UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def online(settings, spec, ids: list[int]) -> pd.DataFrame:
    store = feature_store(settings)
    got = store.get_online_features(
        features=[f"{spec.feature_view}:{name}" for name in spec.feature_names],
        entity_rows=[{"id": k} for k in ids]).to_dict()
    return pd.DataFrame(got)


def test_engineer_casts_features_to_feast_dtypes(spec, fx):
    out = engineer(fx.curated[2015], spec)
    assert list(out.columns) == ["id", "event_timestamp", *spec.feature_names]
    assert out["AGEP"].dtype == "float64"
    assert all(out[c].dtype == "int64" for c in spec.categorical)


def test_materialize_writes_the_offline_partition_and_records_it(spec, fx):
    result = fx.results[2015]
    part = Path(result.offline_uri) / "part-0.parquet"
    assert Path(result.offline_uri) == fx.settings.partition("features", spec.name, "2015")
    offline = pd.read_parquet(part)
    assert result.rows == len(offline) == 1500
    assert offline["id"].tolist() == fx.curated[2015]["id"].tolist()
    assert list(offline.columns) == ["id", "event_timestamp", *spec.feature_names]
    [m2015, m2016] = materializations(fx.settings)
    assert (m2015.batch_id, m2015.rows, m2015.feature_view) == ("2015", 1500, spec.feature_view)
    assert m2016.batch_id == "2016"
    event = pd.Timestamp("2015-12-31", tz="UTC")
    assert utc(m2015.window_start) < event < utc(m2015.window_end)


@pytest.mark.parametrize("year", [2015, 2016])
def test_online_store_serves_the_curated_values(spec, fx, year):
    got = online(fx.settings, spec, KEYS[year]).set_index("id")
    want = fx.curated[year].set_index("id").loc[KEYS[year], spec.feature_names]
    assert got.index.tolist() == KEYS[year]
    pd.testing.assert_frame_equal(got[spec.feature_names].astype("float64"),
                                  want.astype("float64"), check_names=False)


def test_online_store_has_nothing_for_an_unknown_key(spec, fx):
    got = online(fx.settings, spec, [10_000_000])
    assert got["AGEP"].isna().all() or got["AGEP"].tolist() == [None]


def test_historical_features_keep_input_order_and_match_curated(spec, fx):
    batches = [get_batch(spec.name, "2016", fx.settings.db_url),
               get_batch(spec.name, "2015", fx.settings.db_url)]
    out = historical_features(spec, batches, fx.settings)

    expected = pd.concat([fx.curated[2016], fx.curated[2015]], ignore_index=True)
    assert out["id"].tolist() == expected["id"].tolist()
    assert out["batch_id"].tolist() == ["2016"] * 1500 + ["2015"] * 1500
    assert out["employed"].tolist() == expected["employed"].tolist()
    pd.testing.assert_frame_equal(out[spec.feature_names].astype("float64"),
                                  expected[spec.feature_names].astype("float64"))


def test_historical_features_keep_a_shuffled_entity_order(spec, fx, tmp_path):
    rows = fx.curated[2015].sample(200, random_state=3)
    out = historical_features(spec, [probe(tmp_path, rows["id"].tolist(),
                                           rows["event_timestamp"].tolist())],
                              fx.settings, with_target=False)
    assert out["id"].tolist() == rows["id"].tolist()
    assert out["AGEP"].tolist() == rows["AGEP"].tolist()


@pytest.mark.parametrize("offset", [pd.Timedelta(days=-1), pd.Timedelta(seconds=-1)])
def test_a_row_asked_before_its_features_existed_gets_no_future_value(spec, fx, tmp_path,
                                                                       offset):
    when = pd.Timestamp("2015-12-31", tz="UTC") + offset
    batch = probe(tmp_path, [0, 7], [when, when])
    with pytest.raises(FeatureRetrievalError, match="probe"):
        historical_features(spec, [batch], fx.settings, with_target=False)


def test_feast_itself_returns_no_value_before_the_event_time(spec, fx):
    store = feature_store(fx.settings)
    entity_df = pd.DataFrame({"id": [0, 7], "event_timestamp": pd.to_datetime(
        ["2015-12-30", "2015-12-31"], utc=True)})
    out = store.get_historical_features(entity_df=entity_df,
                                        features=[f"{spec.feature_view}:AGEP"]).to_df()
    early = out[out["event_timestamp"] < pd.Timestamp("2015-12-31", tz="UTC")]
    assert early.empty or early["AGEP"].isna().all()
    on_time = out[out["id"] == 7]
    assert on_time["AGEP"].tolist() == fx.curated[2015].set_index("id").loc[[7], "AGEP"].tolist()


@pytest.mark.parametrize("days, found", [(1, True), (399, True), (401, False)])
def test_features_stay_valid_for_the_spec_ttl(spec, fx, tmp_path, days, found):
    when = pd.Timestamp("2015-12-31", tz="UTC") + pd.Timedelta(days=days)
    batch = probe(tmp_path, [0], [when])
    if found:
        out = historical_features(spec, [batch], fx.settings, with_target=False)
        assert out["AGEP"].tolist() == [fx.curated[2015].loc[0, "AGEP"]]
    else:
        with pytest.raises(FeatureRetrievalError):
            historical_features(spec, [batch], fx.settings, with_target=False)


def test_materializing_twice_is_idempotent(spec, fx):
    part = fx.settings.partition("features", spec.name, "2015")
    offline_before = pd.read_parquet(part)
    files_before = sorted(p.name for p in part.parent.iterdir())

    again = materialize_batch(spec, "2015", fx.settings)

    assert again == fx.results[2015]
    assert len(materializations(fx.settings)) == 2
    pd.testing.assert_frame_equal(pd.read_parquet(part), offline_before)
    assert sorted(p.name for p in part.parent.iterdir()) == files_before
    assert online(fx.settings, spec, KEYS[2015])["AGEP"].tolist() == \
        fx.curated[2015].set_index("id").loc[KEYS[2015], "AGEP"].tolist()


def test_materializing_an_unpublished_batch_fails(spec, fx):
    with pytest.raises(BatchNotFound, match="'2099'"):
        materialize_batch(spec, "2099", fx.settings)


def test_a_batch_never_materialized_has_no_features(spec, fx, slices):
    """Regression: with 2+ offline partitions this used to fail inside dask (NotImplementedError)
    instead of naming the batch; training sets and scoring now check first."""
    from mlcore.datasets import build_dataset
    from mlcore.feast.retrieval import require_materialized

    ingest_batch(spec, str(slices[2017]), "2017", fx.settings)
    with pytest.raises(FeatureRetrievalError, match="batches 2017 .* not materialized"):
        require_materialized(spec.name, ["2017"], fx.settings.db_url)
    with pytest.raises(FeatureRetrievalError, match="2017"):
        build_dataset(spec, fx.settings, until="2017")


# Entities that recur across batches: the point-in-time join must pick the version as of each
# row's time, and the online store must hold the newest one.

@pytest.fixture
def recurring(sqlite_settings, spec, slices, tmp_path):
    """Ten people surveyed twice: AGEP 30 at the end of 2015, 31 at the end of 2016."""
    raw = pd.read_parquet(slices[2015]).head(10)
    for batch_id, year, age in (("a2015", 2015, 30.0), ("b2016", 2016, 31.0)):
        path = tmp_path / f"{batch_id}.parquet"
        raw.assign(year=year, AGEP=age).to_parquet(path, index=False)
        ingest_batch(spec, str(path), batch_id, sqlite_settings)
        materialize_batch(spec, batch_id, sqlite_settings)
    return sqlite_settings


def test_point_in_time_join_picks_the_value_as_of_each_row(spec, recurring, tmp_path):
    when = pd.to_datetime(["2015-12-31", "2016-06-30", "2016-12-31", "2017-06-30"], utc=True)
    batch = probe(tmp_path, [3, 3, 3, 3], list(when))
    out = historical_features(spec, [batch], recurring, with_target=False)
    assert out["AGEP"].tolist() == [30.0, 30.0, 31.0, 31.0]
    assert online(recurring, spec, [3])["AGEP"].tolist() == [31.0]


def test_rematerializing_an_older_batch_keeps_the_newest_online_value(spec, recurring):
    materialize_batch(spec, "a2015", recurring)
    assert online(recurring, spec, [3])["AGEP"].tolist() == [31.0]


# MLCORE_FEAST_CONFIG: the Feast config is selectable; the production variants in deploy/ run
# against the real PostgreSQL and Redis of this machine.

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_feast_config_setting_reads_the_environment(monkeypatch, tmp_path):
    from mlcore.config import Settings

    monkeypatch.delenv("MLCORE_FEAST_CONFIG", raising=False)
    default = Settings(home=tmp_path, feature_repo=tmp_path / "repo")
    assert default.feast_config is None
    assert default.feast_config_file == tmp_path / "repo" / "feature_store.yaml"
    monkeypatch.setenv("MLCORE_FEAST_CONFIG", str(DEPLOY / "feature_store.redis.yaml"))
    assert Settings(home=tmp_path).feast_config_file == DEPLOY / "feature_store.redis.yaml"
    monkeypatch.setenv("MLCORE_FEAST_CONFIG", " ")  # compose's ${MLCORE_FEAST_CONFIG:-}
    assert Settings(home=tmp_path).feast_config is None


def test_a_missing_feast_config_is_named(sqlite_settings, tmp_path):
    absent = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        feature_store(sqlite_settings.model_copy(update={"feast_config": absent}))


def test_an_alternative_config_replaces_the_embedded_one(spec, sqlite_settings, slices, tmp_path):
    embedded = (sqlite_settings.feature_repo / "feature_store.yaml").read_text()
    alt = tmp_path / "alt.yaml"
    alt.write_text(embedded.replace("/feast/registry.db", "/feast/alt_registry.db")
                   .replace("/feast/online_store.db", "/feast/alt_online.db"))
    settings = sqlite_settings.model_copy(update={"feast_config": alt})
    ingest_batch(spec, str(slices[2015]), "2015", settings)
    materialize_batch(spec, "2015", settings)
    assert sorted(p.name for p in (settings.home / "feast").glob("*.db")) == \
        ["alt_online.db", "alt_registry.db"]
    got = online_features(spec, KEYS[2015], settings).set_index("id")
    want = read_curated(get_batch(spec.name, "2015", settings.db_url)).set_index("id")
    pd.testing.assert_frame_equal(got.astype("float64"),
                                  want.loc[KEYS[2015], spec.feature_names].astype("float64"),
                                  check_names=False)


@pytest.fixture(scope="module", params=["postgres", "redis"])
def server_store(request, settings_factory, spec, slices):
    """2015 materialized through deploy/feature_store.<store>.yaml: registry in a fresh PG
    database, online store in it or in a claimed Redis db (dropped / flushed afterwards)."""
    from pg_database import feast_pg_env, fresh_database, pg_url

    claim = request.getfixturevalue("claim_redis_db")
    client, db = claim() if request.param == "redis" else (None, -1)
    try:
        with fresh_database("batchloop_feast") as name, pytest.MonkeyPatch.context() as mp:
            env = {**feast_pg_env(name), "FEAST_REDIS_CONNECTION": f"127.0.0.1:6379,db={db}"}
            for key, value in env.items():
                mp.setenv(key, str(value))
            mp.setenv("MLCORE_HOME", os.environ.get("MLCORE_HOME", ""))  # restored on exit
            settings = settings_factory(f"feast_{request.param}").model_copy(
                update={"feast_config": DEPLOY / f"feature_store.{request.param}.yaml"})
            ingest_batch(spec, str(slices[2015]), "2015", settings)
            materialize_batch(spec, "2015", settings)
            yield SimpleNamespace(settings=settings, kind=request.param, redis=client,
                                  pg=pg_url(name))
    finally:
        if client is not None:
            client.flushdb()


def test_server_stores_serve_the_curated_values(spec, server_store):
    from sqlalchemy import create_engine, text

    settings = server_store.settings
    curated = read_curated(get_batch(spec.name, "2015", settings.db_url))
    got = online_features(spec, [*curated["id"], 10_000_000], settings)
    assert got["id"].tolist() == [*curated["id"], 10_000_000]
    pd.testing.assert_frame_equal(got[spec.feature_names].head(1500).astype("float64"),
                                  curated[spec.feature_names].astype("float64"))
    assert got.iloc[-1][spec.feature_names].isna().all()
    # nothing went to the embedded SQLite files: the registry is in PG, the rows in PG/Redis
    assert not list((settings.home / "feast").glob("*.db"))
    engine = create_engine(server_store.pg)
    with engine.connect() as conn:
        views = conn.execute(text("select feature_view_name from feature_views")).scalars().all()
        if server_store.kind == "postgres":
            rows = conn.execute(text(f"select count(distinct entity_key) from "
                                     f"batchloop_{spec.feature_view}")).scalar()
    engine.dispose()
    assert spec.feature_view in views and len(views) == 3  # one per spec in problems/
    assert (rows if server_store.kind == "postgres" else server_store.redis.dbsize() - 1) == 1500


def _lock_blocks(settings, store) -> bool:
    entered = threading.Event()

    def other() -> None:
        with online_store_lock(settings, store):
            entered.set()

    with online_store_lock(settings, store):
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        blocked = not entered.wait(0.5)
    thread.join(10)
    return blocked and entered.is_set()


def test_only_the_sqlite_online_store_is_locked(fx, server_store):
    assert _lock_blocks(fx.settings, feature_store(fx.settings))
    assert not _lock_blocks(server_store.settings, feature_store(server_store.settings))
    assert not (server_store.settings.home / "feast" / "online_store.lock").exists()
