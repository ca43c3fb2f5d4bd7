"""Materialize with ``MLCORE_HOME=s3://bucket/prefix`` against a real S3 API server (moto's
standalone server, its own process): ``mlcore init`` on the bucket, the offline partition written
to its final key and recorded, the online store (embedded SQLite under ``MLCORE_LOCAL_DIR``)
holding the same values as a folder-home materialize of the same batch, idempotent re-runs, and
Feast's offline reader (the training-set join) reading the partition from the bucket; and the
compose profile (PostgreSQL Feast registry/online store) with no local folder at all."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pg_database import feast_pg_env, fresh_database
from s3_server import S3Server, folder_home, s3_home, s3_server
from sqlalchemy import select

from mlcore import cli_commands
from mlcore.cli import main
from mlcore.config import NotOnObjectStorage, Settings, get_settings
from mlcore.data.integrity import DataDamaged, curated_files
from mlcore.data.io import read_curated
from mlcore.feast.online import online_features
from mlcore.feast.retrieval import historical_features
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.objstore import StorageError
from mlcore.store.catalog import get_batch
from mlcore.store.models import Materialization
from mlcore.store.session import session_scope

ROOT = Path(__file__).resolve().parents[2]
KEYS = [0, 7, 123, 1499]


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def s3_settings(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """An S3 home (a fresh prefix), a SQLite store and Feast's embedded state outside it."""
    return s3_home(server, monkeypatch, tmp_path, feast_local=True)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return folder_home(tmp_path)


def objects(settings: Settings) -> dict[str, str]:
    """Every object under the home: URI -> ETag (changes when an object is rewritten)."""
    home = settings.store_home()
    fs = home.filesystem
    return {f"s3://{k}": v["ETag"] for k, v in fs.find(home.path(home.uri()), detail=True).items()}


def record(settings: Settings, batch_id: str) -> Materialization:
    with session_scope(settings.db_url) as s:
        return s.scalars(select(Materialization).where(
            Materialization.batch_id == batch_id)).one()


def test_init_on_an_s3_home_checks_the_bucket_and_applies_the_definitions(s3_settings, capsys):
    cli_commands.init(argparse.Namespace(), s3_settings)
    out = capsys.readouterr().out
    assert f"initialized {s3_settings.home_uri}" in out and "census_employment_fv" in out
    assert (s3_settings.local_dir / "feast" / "registry.db").is_file()
    assert objects(s3_settings) == {}  # the probe is gone, nothing else written
    cli_commands.init(argparse.Namespace(), s3_settings)  # again: a no-op


def test_init_names_an_unreachable_bucket(s3_settings, server):
    missing = s3_settings.model_copy(update={"home_uri": f"s3://no-such-{uuid.uuid4().hex[:8]}/x"})
    with pytest.raises(StorageError, match=f"MLCORE_HOME {missing.home_uri} is not reachable"):
        cli_commands.init(argparse.Namespace(), missing)


def test_mlcore_init_reads_an_s3_home_from_the_environment(s3_settings, server, monkeypatch,
                                                         capsys):
    monkeypatch.setenv("MLCORE_DATABASE_URL", s3_settings.db_url)
    monkeypatch.setenv("MLCORE_LOCAL_DIR", str(s3_settings.local_dir))
    monkeypatch.setenv("MLCORE_PROBLEMS_DIR", str(ROOT / "problems"))
    missing = f"s3://no-such-{uuid.uuid4().hex[:8]}/x"
    for home, ok in ((s3_settings.home_uri, True), (missing, False)):
        monkeypatch.setenv("MLCORE_HOME", home)
        get_settings.cache_clear()
        try:
            got = main(["init"])
        finally:
            get_settings.cache_clear()
        out, err = capsys.readouterr()
        assert (got == 0) is ok, (out, err)
        assert (f"initialized {home}" in out) if ok else (
            f"error: MLCORE_HOME {home} is not reachable for writing" in err), (out, err)
    assert (s3_settings.local_dir / "feast" / "registry.db").is_file()


def test_the_embedded_feast_store_needs_a_local_dir_on_s3(s3_settings, spec, slices):
    no_local = s3_settings.model_copy(update={"local_dir": None})
    with pytest.raises(NotOnObjectStorage, match="MLCORE_LOCAL_DIR"):
        cli_commands.init(argparse.Namespace(), no_local)


def test_materialize_on_s3_matches_a_folder_home(s3_settings, local_settings, spec, slices):
    for settings in (s3_settings, local_settings):
        ingest_batch(spec, str(slices[2015]), "2015", settings)
    s3 = materialize_batch(spec, "2015", s3_settings)
    local = materialize_batch(spec, "2015", local_settings)
    part = s3_settings.partition_uri("features", spec.name, "2015")
    assert s3.offline_uri == part and s3.rows == local.rows == 1500
    assert (s3.window_start, s3.window_end) == (local.window_start, local.window_end)
    listed = objects(s3_settings)
    assert [u for u in listed if "/features/" in u] == [f"{part}/part-0.parquet"]
    assert not [u for u in listed if "/.staging" in u]
    # the same bytes as the folder home's partition, and the same record
    m_s3, m_local = record(s3_settings, "2015"), record(local_settings, "2015")
    assert m_s3.offline_uri == part and m_s3.files == m_local.files
    with s3_settings.store_home().open(f"{part}/part-0.parquet") as fh:
        frame = pd.read_parquet(fh)
    pd.testing.assert_frame_equal(frame, pd.read_parquet(Path(local.offline_uri)))
    # online: the same values through the same reader
    got = online_features(spec, KEYS, s3_settings)
    want = online_features(spec, KEYS, local_settings)
    pd.testing.assert_frame_equal(got, want)
    assert got["AGEP"].notna().all()
    assert (s3_settings.local_dir / "feast" / "online_store.db").is_file()

    # a re-run: nothing rewritten in substance, the same record and online values
    again = materialize_batch(spec, "2015", s3_settings)
    assert again == s3
    after = objects(s3_settings)
    assert after[f"{part}/part-0.parquet"] == listed[f"{part}/part-0.parquet"]  # same bytes
    assert set(after) == set(listed)
    assert record(s3_settings, "2015").files == m_s3.files
    pd.testing.assert_frame_equal(online_features(spec, KEYS, s3_settings), want)


def test_the_training_join_reads_the_s3_partitions(s3_settings, local_settings, spec, slices):
    for settings in (s3_settings, local_settings):
        for year in (2015, 2016):
            ingest_batch(spec, str(slices[year]), str(year), settings)
            materialize_batch(spec, str(year), settings)
    joined = {}
    for name, settings in (("s3", s3_settings), ("local", local_settings)):
        batches = [get_batch(spec.name, y, settings.db_url) for y in ("2016", "2015")]
        joined[name] = historical_features(spec, batches, settings)
    assert len(joined["s3"]) == 3000
    pd.testing.assert_frame_equal(joined["s3"], joined["local"])
    # Feast's reader takes the bucket itself (not a fetched copy): without 2016's object, the
    # join (verification skipped) finds no features for 2016's rows
    home = s3_settings.store_home()
    home.rm(f"{s3_settings.partition_uri('features', spec.name, '2016')}/part-0.parquet")
    batches = [get_batch(spec.name, "2016", s3_settings.db_url)]
    with pytest.raises(Exception, match="2016"):
        historical_features(spec, batches, s3_settings, verified=True)
    with pytest.raises(DataDamaged, match="missing"):
        historical_features(spec, batches, s3_settings)


def test_a_damaged_s3_curated_object_is_refused_before_materialize(s3_settings, spec, slices):
    m = ingest_batch(spec, str(slices[2015]), "2015", s3_settings)
    home = s3_settings.store_home()
    [uri] = [u for u in home.find(m.curated_uri) if u.endswith(".parquet")]
    data = bytearray(home.open(uri).read())
    data[len(data) // 2] ^= 0xFF
    with home.open(uri, "wb") as fh:
        fh.write(bytes(data))
    batch = get_batch(spec.name, "2015", s3_settings.db_url)
    with pytest.raises(DataDamaged, match="batch .2015. of .census_employment.: curated"):
        curated_files(batch)
    with pytest.raises(DataDamaged):
        materialize_batch(spec, "2015", s3_settings)
    assert not [u for u in objects(s3_settings) if "/features/" in u]


def test_the_compose_profile_s3_home_with_postgres_feast_needs_no_local_dir(
        s3_settings, spec, slices, monkeypatch, capsys):
    """MinIO + ``deploy/feature_store.postgres.yaml`` (registry and online rows in PostgreSQL):
    init, materialize and the training join run on the bucket with no local folder at all."""
    settings = s3_settings.model_copy(update={
        "local_dir": None, "feast_config": ROOT / "deploy" / "feature_store.postgres.yaml"})
    with fresh_database("batchloop_s3feast") as database:
        for key, value in feast_pg_env(database).items():
            monkeypatch.setenv(key, value)
        cli_commands.init(argparse.Namespace(), settings)
        assert f"initialized {settings.home_uri}" in capsys.readouterr().out
        ingest_batch(spec, str(slices[2015]), "2015", settings)
        assert materialize_batch(spec, "2015", settings).rows == 1500
        batch = get_batch(spec.name, "2015", settings.db_url)
        curated = read_curated(batch).set_index("id")
        got = online_features(spec, KEYS, settings).set_index("id")
        pd.testing.assert_frame_equal(got[spec.feature_names].astype("float64"),
                                      curated.loc[KEYS, spec.feature_names].astype("float64"),
                                      check_names=False)
        assert len(historical_features(spec, [batch], settings)) == 1500
    assert not s3_settings.local_dir.exists()
