"""Ingestion on SQLite and PostgreSQL: manifest, typed curated file, idempotency, conflict,
quarantine, rejection, and what is (not) written on each failure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from mlcore.batches import BatchConflict, BatchNotFound, BatchRejected, InvalidBatchId
from mlcore.data.io import read_curated
from mlcore.ingestion import ingest_batch
from mlcore.store.catalog import get_batch, published_batches
from mlcore.store.models import Batch, QuarantinedRow
from mlcore.store.session import session_scope


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def curated_file(settings, spec, batch_id: str) -> Path:
    return settings.partition("curated", spec.name, batch_id) / "part-0.parquet"


def batch_rows(settings, spec) -> list[Batch]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(Batch).where(Batch.problem == spec.name)))


def raw_frame(slices, year: int = 2015, n: int = 1500) -> pd.DataFrame:
    """A raw slice with categorical columns as plain ints (editable in place)."""
    df = pd.read_parquet(slices[year]).head(n)
    cats = df.select_dtypes("category").columns
    return df.astype({c: "int64" for c in cats})


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_ingest_publishes_manifest_curated_and_raw_copy(settings, spec, slices, tmp_path, fmt):
    source = slices[2016]
    if fmt == "csv":
        source = tmp_path / "employment_2016.csv"
        pd.read_parquet(slices[2016]).to_csv(source, index=False)

    m = ingest_batch(spec, str(source), "2016", settings)

    assert (m.created, m.state, m.batch_id, m.problem) == (True, "published", "2016", spec.name)
    assert (m.row_count, m.published_rows, m.quarantine_count) == (1500, 1500, 0)
    assert m.sha256 == sha(source)
    assert m.source_uri == source.resolve().as_uri()
    curated = curated_file(settings, spec, "2016")
    assert curated.is_file() and Path(m.curated_uri) == curated.parent
    raw_copy = settings.partition("raw", spec.name, "2016") / source.name
    assert raw_copy.read_bytes() == source.read_bytes()
    [row] = batch_rows(settings, spec)
    assert (row.state, row.sha256, row.row_count) == ("published", m.sha256, 1500)
    assert row.published_at is not None and row.schema["AGEP"] == "float64"


def test_curated_batch_honours_the_data_contract(settings, spec, slices):
    ingest_batch(spec, str(slices[2015]), "2015", settings)
    curated = pd.read_parquet(curated_file(settings, spec, "2015"))
    source = pd.read_parquet(slices[2015])

    expected = ["id", "event_timestamp", *spec.feature_names, "employed"]
    assert list(curated.columns) == expected
    assert curated["id"].dtype == "int64" and curated["id"].is_unique
    assert isinstance(curated["event_timestamp"].dtype, pd.DatetimeTZDtype)
    assert str(curated["event_timestamp"].dt.tz) == "UTC"
    assert (curated["event_timestamp"] == pd.Timestamp("2015-12-31", tz="UTC")).all()
    assert curated["AGEP"].dtype == "float64" and curated["AGEP"].between(0, 120).all()
    for feat in spec.features:
        if feat.kind == "categorical":
            assert curated[feat.name].dtype == "int64", feat.name
            assert curated[feat.name].isin(feat.values).all(), feat.name
    assert curated["employed"].isin([0, 1]).all()
    assert curated.notna().all().all()
    assert curated["id"].tolist() == source["id"].tolist()
    assert curated["SCHL"].tolist() == source["SCHL"].astype(int).tolist()


def test_reingesting_the_same_file_is_a_no_op(settings, spec, slices):
    first = ingest_batch(spec, str(slices[2015]), "2015", settings)
    curated = curated_file(settings, spec, "2015")
    before = (sha(curated), curated.stat().st_mtime_ns)
    [row_before] = batch_rows(settings, spec)

    again = ingest_batch(spec, str(slices[2015]), "2015", settings)

    assert again.created is False
    assert again.to_dict() == {**first.to_dict(), "created": False}
    assert (sha(curated), curated.stat().st_mtime_ns) == before
    [row_after] = batch_rows(settings, spec)
    assert (row_after.id, row_after.published_at) == (row_before.id, row_before.published_at)


def test_different_content_under_a_published_id_conflicts_and_changes_nothing(
        settings, spec, slices):
    ingest_batch(spec, str(slices[2015]), "2015", settings)
    curated = curated_file(settings, spec, "2015")
    before = sha(curated)

    with pytest.raises(BatchConflict, match="'2015'"):
        ingest_batch(spec, str(slices[2016]), "2015", settings)

    assert sha(curated) == before
    [row] = batch_rows(settings, spec)
    assert (row.sha256, row.state) == (sha(slices[2015]), "published")


def test_bad_rows_are_quarantined_and_the_rest_published(settings, spec, slices, tmp_path):
    df = raw_frame(slices, 2016, n=100)  # 4 bad rows: 4 %, inside the spec's 5 % tolerance
    df.loc[3, "AGEP"] = 200.0
    df.loc[7, ["SEX", "employed"]] = [9, 5]
    df.loc[11, "id"] = df.loc[10, "id"]
    source = tmp_path / "dirty.parquet"
    df.to_parquet(source, index=False)

    m = ingest_batch(spec, str(source), "dirty", settings)

    assert (m.row_count, m.quarantine_count, m.published_rows) == (100, 4, 96)
    with session_scope(settings.db_url) as s:
        rows = s.scalars(select(QuarantinedRow).where(QuarantinedRow.batch_id == "dirty"))
        got = sorted((r.row_number, r.rule) for r in rows)
    assert got == [(3, "AGEP_out_of_range"), (7, "SEX_not_allowed"), (7, "target_invalid"),
                   (10, "duplicate_entity_event_time"), (11, "duplicate_entity_event_time")]
    curated = pd.read_parquet(curated_file(settings, spec, "dirty"))
    assert len(curated) == 96
    assert not set(df.loc[[3, 7, 10], "id"]) & set(curated["id"])


def test_reingesting_a_dirty_batch_does_not_duplicate_its_quarantine(settings, spec, slices,
                                                                     tmp_path):
    df = raw_frame(slices, 2016, n=20)
    df.loc[2, "AGEP"] = 500.0
    source = tmp_path / "dirty.parquet"
    df.to_parquet(source, index=False)
    ingest_batch(spec, str(source), "dirty", settings)
    ingest_batch(spec, str(source), "dirty", settings)
    with session_scope(settings.db_url) as s:
        assert s.query(QuarantinedRow).count() == 1


def test_a_missing_required_column_rejects_and_publishes_nothing(settings, spec, slices,
                                                                 tmp_path):
    source = tmp_path / "no_sex.parquet"
    pd.read_parquet(slices[2015]).drop(columns=["SEX"]).to_parquet(source, index=False)

    with pytest.raises(BatchRejected, match="SEX") as exc:
        ingest_batch(spec, str(source), "nosex", settings)

    assert "'nosex'" in str(exc.value)
    [row] = batch_rows(settings, spec)
    assert (row.batch_id, row.state, row.curated_uri) == ("nosex", "rejected", None)
    assert not settings.partition("curated", spec.name, "nosex").exists()
    assert published_batches(spec.name, settings.db_url) == []
    with pytest.raises(BatchNotFound, match="nosex"):
        get_batch(spec.name, "nosex", settings.db_url)


def test_a_rejected_batch_can_be_fixed_and_published_under_the_same_id(settings, spec, slices,
                                                                       tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.read_parquet(slices[2015]).drop(columns=["year"]).to_parquet(bad, index=False)
    with pytest.raises(BatchRejected):
        ingest_batch(spec, str(bad), "2015", settings)

    m = ingest_batch(spec, str(slices[2015]), "2015", settings)

    assert m.created and m.state == "published"
    assert [(r.batch_id, r.state) for r in batch_rows(settings, spec)] == [("2015", "published")]


def test_a_missing_source_raises_file_not_found_and_records_nothing(settings, spec, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        ingest_batch(spec, str(tmp_path / "nope.parquet"), "2015", settings)
    assert batch_rows(settings, spec) == []
    assert list(settings.home.iterdir()) == []


def test_a_file_uri_source_is_accepted(settings, spec, slices):
    m = ingest_batch(spec, slices[2015].resolve().as_uri(), "2015", settings)
    assert m.created and m.source_uri == slices[2015].resolve().as_uri()


def test_an_unsupported_format_is_rejected_and_recorded(settings, spec, tmp_path):
    source = tmp_path / "batch.json"
    source.write_text("[]")
    with pytest.raises(BatchRejected, match="batch '2015': unsupported file type 'batch.json'"):
        ingest_batch(spec, str(source), "2015", settings)
    assert [(r.batch_id, r.state) for r in batch_rows(settings, spec)] == [("2015", "rejected")]
    assert not settings.partition("curated", spec.name, "2015").exists()


@pytest.mark.parametrize("batch_id", ["../escape", "a/b", ""])
def test_an_invalid_batch_id_fails_before_anything_is_written(settings, spec, slices, batch_id):
    with pytest.raises(InvalidBatchId):
        ingest_batch(spec, str(slices[2015]), batch_id, settings)
    assert list(settings.home.iterdir()) == []
    assert batch_rows(settings, spec) == []


def test_published_batches_come_oldest_event_time_first(settings, spec, slices):
    for year in (2017, 2015, 2016):
        ingest_batch(spec, str(slices[year]), f"y{year}", settings)
    assert [b.batch_id for b in published_batches(spec.name, settings.db_url)] == [
        "y2015", "y2016", "y2017"]
    batch = get_batch(spec.name, "y2016", settings.db_url)
    assert read_curated(batch, ["id"])["id"].tolist() == pd.read_parquet(slices[2016])[
        "id"].tolist()
