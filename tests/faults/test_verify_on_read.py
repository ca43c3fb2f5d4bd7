"""Verify on read: a curated or features file that differs from what was recorded when it was
written is refused by every stage that reads it, naming the batch, the file and what differs;
``backfill --policy missing`` decides "done" from the files, not the database alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from first_champion import first_champion
from sqlalchemy import func, select

from mlcore.backfill import load_state, plan
from mlcore.data.integrity import DataDamaged, curated_files, offline_files
from mlcore.data.io import read_curated
from mlcore.datasets import build_dataset
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.monitoring import detect_drift
from mlcore.repair import check, raw_copy, repair_batch
from mlcore.scoring import score_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import Prediction
from mlcore.store.session import session_scope


@pytest.fixture(scope="module")
def world(settings_factory, spec, slices):
    settings = settings_factory("verify")
    first_champion(spec, slices, settings)
    return settings


@pytest.fixture
def damage(world, tmp_path):
    """Replace a file by something else for one test; put the original back afterwards."""
    saved: list[tuple[Path, Path]] = []

    def _damage(path: Path, how: str) -> Path:
        backup = tmp_path / f"{len(saved)}.bak"
        shutil.copy2(path, backup)
        saved.append((path, backup))
        if how == "first-1000-rows":
            pq.write_table(pq.read_table(path).slice(0, 1000), path)
        elif how == "truncate":
            path.write_bytes(path.read_bytes()[:4096])
        elif how == "flip-one-byte":  # same size, same footer: only the hash can tell
            data = bytearray(path.read_bytes())
            data[len(data) // 3] ^= 0xFF
            path.write_bytes(bytes(data))
        elif how == "delete":
            path.unlink()
        return path

    yield _damage
    for path, backup in saved:
        shutil.copy2(backup, path)


def _curated(world, spec, batch_id: str) -> Path:
    return curated_files(get_batch(spec.name, batch_id, world.db_url))[0]


def _features(world, spec, batch_id: str) -> Path:
    return offline_files(spec.name, world.db_url, [batch_id])[0]


@pytest.mark.parametrize("how", ["first-1000-rows", "truncate", "flip-one-byte", "delete"])
def test_a_damaged_curated_file_is_refused_by_every_reader(world, spec, damage, how):
    path = damage(_curated(world, spec, "2016"), how)
    for stage in (lambda: materialize_batch(spec, "2016", world),
                  lambda: score_batch(spec, "2016", world),
                  lambda: detect_drift(spec, "2016", world),
                  lambda: read_curated(get_batch(spec.name, "2016", world.db_url))):
        with pytest.raises(DataDamaged) as err:
            stage()
        assert "'2016'" in str(err.value) and str(path) in str(err.value)
        assert "mlcore repair --batch 2016" in str(err.value)


def test_the_recorded_rows_are_what_was_published(world, spec):
    batch = get_batch(spec.name, "2016", world.db_url)
    assert sum(f["rows"] for f in (batch.files or {}).values()) == \
        batch.row_count - batch.quarantine_count


@pytest.mark.parametrize("how", ["truncate", "flip-one-byte", "delete"])
def test_a_damaged_features_partition_names_its_file_when_another_batch_is_scored(
        world, spec, damage, how):
    path = damage(_features(world, spec, "2015"), how)
    with pytest.raises(DataDamaged) as err:
        score_batch(spec, "2017", world)
    assert "'2015'" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(DataDamaged):
        build_dataset(spec, world)


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_backfill_missing_reruns_a_damaged_partition(world, spec, damage, how):
    damage(_features(world, spec, "2016"), how)
    items = {i.batch_id: (i.action, i.reason)
             for i in plan(spec, "materialize", ["2015", "2016"], world)}
    assert items == {"2015": ("skip", "already done"), "2016": ("run", "not done yet")}
    assert "2016" not in load_state(spec.name, "materialize", ["2015", "2016"], world).done


def test_intact_files_verify_and_the_loop_runs(world, spec):
    assert score_batch(spec, "2016", world).rows > 0
    assert len(offline_files(spec.name, world.db_url)) == 3


def _predictions(world, spec, batch_id: str) -> int:
    with session_scope(world.db_url) as s:
        return s.scalar(select(func.count()).select_from(Prediction).where(
            Prediction.problem == spec.name, Prediction.batch_id == batch_id))


def test_repair_refuses_when_the_raw_copy_is_damaged_too(world, spec, damage):
    damage(_curated(world, spec, "2017"), "first-1000-rows")
    batch = get_batch(spec.name, "2017", world.db_url)
    damage(raw_copy(world, batch), "flip-one-byte")
    assert {(f.batch_id, f.what) for f in check(spec, world)} == {("2017", "curated"),
                                                                 ("2017", "raw")}
    with pytest.raises(DataDamaged, match="cannot repair: raw copy .* differs"):
        repair_batch(spec, "2017", world)


def test_repair_republishes_from_the_raw_copy_and_rederives(world, spec):
    """Last in the module: it damages for good, then repairs."""
    published = score_batch(spec, "2016", world).rows
    path = _curated(world, spec, "2016")
    pq.write_table(pq.read_table(path).slice(0, 1000), path)
    assert [(f.batch_id, f.what) for f in check(spec, world)] == [("2016", "curated")]
    result = repair_batch(spec, "2016", world)
    assert result.repaired[:3] == ["curated", "features", "scores v1"]
    assert result.rows == published
    assert check(spec, world) == []
    assert _predictions(world, spec, "2016") == published
    assert repair_batch(spec, "2016", world).repaired == []  # intact: a no-op


def test_repair_reads_the_raw_csv_as_ingest_did(settings_factory, spec, slices, tmp_path):
    """Integer keys above 2**53 in a CSV with an empty key cell: the repaired curated keys are
    the published ones (a re-read via float64 would change every one of them)."""
    settings = settings_factory("repair_csv")
    rows = pd.read_parquet(slices[2015]).head(300)
    keys = [str(2**60 + 7 * i + 1) for i in range(len(rows))]
    keys[0] = ""  # pandas would read the column as float64
    source = tmp_path / "big_keys.csv"
    rows.assign(**{spec.entity.key: keys}).to_csv(source, index=False)
    ingest_batch(spec, str(source), "csv1", settings)
    path = _curated(settings, spec, "csv1")
    published = pq.read_table(path).column(spec.entity.key).to_pylist()
    assert published == [int(k) for k in keys[1:]]
    pq.write_table(pq.read_table(path).slice(0, 10), path)
    assert repair_batch(spec, "csv1", settings).repaired == ["curated"]
    assert pq.read_table(_curated(settings, spec, "csv1")).column(
        spec.entity.key).to_pylist() == published
