"""Ingest with ``MLCORE_HOME=s3://bucket/prefix`` against a real S3 API server (moto's standalone
server, its own process on loopback): manifest, validation, quarantine, publish = the attempt's
location committed with the manifest, idempotent re-run, conflicts, verify-on-read; the same
outcome as the folder home. Other stages refuse an object-storage home by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError
from s3_server import S3Server, folder_home, s3_home, s3_server
from sqlalchemy import select

from mlcore.batches import BatchConflict, BatchRejected, sha256_file
from mlcore.config import NotOnObjectStorage, Settings, StoreNotConfigured
from mlcore.data.integrity import DataDamaged
from mlcore.data.io import read_curated
from mlcore.ingestion import ingest_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import Batch, QuarantinedRow
from mlcore.store.session import session_scope

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "census_employment"


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def s3_settings(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """An S3 home (a fresh prefix of the server's bucket) and a SQLite store outside it."""
    return s3_home(server, monkeypatch, tmp_path)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return folder_home(tmp_path, "local")


def objects(settings: Settings) -> dict[str, str]:
    """Every object under the home: URI -> ETag (changes when an object is rewritten)."""
    home = settings.store_home()
    fs = home.filesystem
    return {f"s3://{k}": v["ETag"] for k, v in fs.find(home.path(home.uri()), detail=True).items()}


def state(settings: Settings) -> tuple[set[tuple[str, str]], int]:
    with session_scope(settings.db_url) as s:
        rows = {(b.batch_id, b.state) for b in s.scalars(select(Batch))}
        return rows, len(list(s.scalars(select(QuarantinedRow))))


def test_publish_commits_the_attempt_and_matches_a_folder_home(s3_settings, local_settings,
                                                               spec, slices):
    m = ingest_batch(spec, str(slices[2015]), "b", s3_settings)
    home = s3_settings.store_home()
    attempts = home.uri(".attempts", "curated", f"problem={PROBLEM}", "batch=b")
    assert m.created and m.state == "published" and m.published_rows == 1500
    assert m.curated_uri.startswith(attempts + "/")  # the committed location: an attempt's
    tag = m.curated_uri.rsplit("/", 1)[1]
    raw_copy = home.uri(".attempts", "raw", f"problem={PROBLEM}", "batch=b", tag,
                        slices[2015].name)
    assert sorted(objects(s3_settings)) == [f"{m.curated_uri}/part-0.parquet", raw_copy]
    assert home.sha256(raw_copy) == sha256_file(slices[2015])  # nothing under curated/, raw/
    s3_batch = get_batch(spec.name, "b", s3_settings.db_url)
    local = ingest_batch(spec, str(slices[2015]), "b", local_settings)
    local_batch = get_batch(spec.name, "b", local_settings.db_url)
    assert s3_batch.files == local_batch.files  # the same bytes, rows and SHA-256
    assert (m.sha256, m.schema_hash, m.published_rows) == (local.sha256, local.schema_hash,
                                                           local.published_rows)
    pd.testing.assert_frame_equal(read_curated(s3_batch), read_curated(local_batch))
    assert not (ROOT / "s3:").exists() and not Path("s3:").exists()


def test_a_rerun_is_a_noop_and_other_content_conflicts(s3_settings, spec, slices):
    first = ingest_batch(spec, str(slices[2015]), "b", s3_settings)
    before = objects(s3_settings)
    again = ingest_batch(spec, str(slices[2015]), "b", s3_settings)
    assert (first.created, again.created) == (True, False)
    assert again.curated_uri == first.curated_uri and objects(s3_settings) == before
    with pytest.raises(BatchConflict, match="batch 'b' of 'census_employment' is already "
                                            "published"):
        ingest_batch(spec, str(slices[2016]), "b", s3_settings)
    with pytest.raises(BatchConflict, match="same SHA-256 as published batch 'b'"):
        ingest_batch(spec, str(slices[2015]), "c", s3_settings)
    assert objects(s3_settings) == before  # no attempt written, none left
    assert state(s3_settings) == ({("b", "published")}, 0)


def test_rejection_leaves_no_object_and_bad_rows_are_quarantined(s3_settings, spec, slices,
                                                                 tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.read_parquet(slices[2015]).drop(columns=["SCHL"]).to_parquet(bad, index=False)
    with pytest.raises(BatchRejected, match=r"batch 'b': .*missing required columns \['SCHL'\]"):
        ingest_batch(spec, str(bad), "b", s3_settings)
    assert state(s3_settings) == ({("b", "rejected")}, 0) and objects(s3_settings) == {}
    some = tmp_path / "some_bad.parquet"
    frame = pd.read_parquet(slices[2015])
    frame["SEX"] = frame["SEX"].astype(object)
    frame.loc[[0, 1, 2], "SEX"] = "9"
    frame.to_parquet(some, index=False)
    m = ingest_batch(spec, str(some), "b", s3_settings)  # the rejected ID, fixed input
    assert (m.state, m.published_rows, m.quarantine_count) == ("published", 1497, 3)
    assert state(s3_settings) == ({("b", "published")}, 3)
    assert len(read_curated(get_batch(spec.name, "b", s3_settings.db_url))) == 1497


def test_cross_batch_duplicates_are_read_from_the_committed_location(s3_settings, spec,
                                                                     slices, tmp_path):
    ingest_batch(spec, str(slices[2018]), "2018", s3_settings)
    old, new = pd.read_parquet(slices[2018]), pd.read_parquet(slices[2017])
    pd.concat([new, old.head(30)], ignore_index=True).to_parquet(tmp_path / "mixed.parquet",
                                                                 index=False)
    m = ingest_batch(spec, str(tmp_path / "mixed.parquet"), "mixed", s3_settings)
    assert (m.state, m.quarantine_count, m.published_rows) == ("published", 30, len(new))
    with session_scope(s3_settings.db_url) as s:
        rules = {r.rule for r in s.scalars(select(QuarantinedRow))}
    assert rules == {"duplicate_in_published_batch"}


def test_a_damaged_object_is_refused_on_read(s3_settings, spec, slices):
    m = ingest_batch(spec, str(slices[2015]), "b", s3_settings)
    home = s3_settings.store_home()
    part = f"{m.curated_uri}/part-0.parquet"
    with home.open(part, "rb") as fh:
        data = bytearray(fh.read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    with home.open(part, "wb") as fh:
        fh.write(bytes(data))
    batch = get_batch(spec.name, "b", s3_settings.db_url)
    with pytest.raises(DataDamaged, match=rf"{part} content differs from its record"):
        read_curated(batch)
    home.rm(part)
    with pytest.raises(DataDamaged, match=rf"{part} is missing"):
        read_curated(batch)


def test_settings_of_an_s3_home(s3_settings, tmp_path, monkeypatch):
    assert not s3_settings.home_is_local and s3_settings.home_uri.startswith("s3://")
    with pytest.raises(NotOnObjectStorage, match=rf"not supported yet on object storage: "
                                                 rf"{__name__} \(MLCORE_HOME is s3://"):
        s3_settings.partition("features", PROBLEM)
    with pytest.raises(StoreNotConfigured, match="cannot live in a bucket"):
        Settings(home=s3_settings.home_uri).db_url  # noqa: B018
    for bad in ("gs://bucket/p", "s3://key:secret@bucket/p", "s3:///p"):
        with pytest.raises(ValidationError):
            Settings(home=bad)
    monkeypatch.setenv("MLCORE_HOME", "s3://bucket/from-env/")
    assert Settings().home_uri == "s3://bucket/from-env"
    local = Settings(home=tmp_path)  # a folder: exactly the Path it always was
    assert local.home == tmp_path and local.home_is_local
    assert local.partition_uri("curated", "p", "1") == str(local.partition("curated", "p", "1"))


def test_other_stages_refuse_an_s3_home_by_name(s3_settings, spec, slices):
    """A stage still on local paths fails at once, naming itself, after an S3 ingest."""
    from mlcore.repair import check

    ingest_batch(spec, str(slices[2015]), "b", s3_settings)
    with pytest.raises(NotOnObjectStorage, match="not supported yet on object storage: "
                                                 "mlcore.repair"):
        check(spec, s3_settings)
    assert not (ROOT / "s3:").exists()


def test_the_ingest_dag_publishes_on_an_s3_home(airflow_db, s3_settings, monkeypatch,
                                                run_or_error, spec, slices):
    """Through Airflow (``dag.test``, the real task runner): MLCORE_HOME=s3://... in the task's
    environment, the store named by MLCORE_DATABASE_URL."""
    from mlcore.config import get_settings

    monkeypatch.setenv("MLCORE_HOME", s3_settings.home_uri)
    monkeypatch.setenv("MLCORE_DATABASE_URL", s3_settings.db_url)
    get_settings.cache_clear()
    try:
        result, error = run_or_error(f"{PROBLEM}__ingest_batch",
                                     {"batch_id": "b", "source": str(slices[2015])})
    finally:
        get_settings.cache_clear()
    assert error is None, error
    batch = get_batch(PROBLEM, "b", s3_settings.db_url)
    assert batch.curated_uri.startswith(s3_settings.partition_uri("curated", PROBLEM, "b")
                                        .replace("/curated/", "/.attempts/curated/", 1))
    assert len(read_curated(batch)) == 1500
