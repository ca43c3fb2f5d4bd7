"""An I/O error while a batch is staged (disk full on a real small tmpfs, or injected) leaves no
staging dir, a ``failed`` manifest with the cause, an error naming the batch and the path (errno
kept), and a later ingest publishes once."""

from __future__ import annotations

import errno
import shutil
import subprocess
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from mlcore.config import Settings
from mlcore.ingestion import BatchStorageError, ingest_batch
from mlcore.store.models import Batch
from mlcore.store.session import session_scope


def manifests(settings, spec) -> dict[str, tuple[str, str | None]]:
    with session_scope(settings.db_url) as s:
        return {b.batch_id: (b.state, b.reason)
                for b in s.scalars(select(Batch).where(Batch.problem == spec.name))}


def leftovers(settings) -> list[Path]:
    return [p for p in settings.home.rglob(".staging-*")]


def assert_failed_cleanly(exc: BatchStorageError, settings, spec, batch_id: str) -> None:
    assert exc.errno == errno.ENOSPC
    assert f"batch {batch_id!r}" in str(exc) and str(settings.home) in str(exc)
    assert leftovers(settings) == []
    assert not settings.partition("curated", spec.name, batch_id).exists()
    assert not settings.partition("raw", spec.name, batch_id).exists()
    state, reason = manifests(settings, spec)[batch_id]
    assert state == "failed" and reason == str(exc).split("] ", 1)[1]
    assert "No space left on device" in reason or "ENOSPC" in reason or "errno 28" in reason


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target, where", [
    ("pyarrow.parquet.ParquetWriter.write_table", "writing the curated rows to"),
    ("shutil.copy2", "copying the raw file to"),
    ("os.replace", "renaming the raw staging dir to"),
])
def test_an_injected_enospc_fails_cleanly_and_a_rerun_publishes(settings, spec, slices,
                                                                  monkeypatch, target, where):
    with monkeypatch.context() as patch:
        patch.setattr(target, _full)
        with pytest.raises(BatchStorageError) as info:
            ingest_batch(spec, str(slices[2015]), "b", settings)
    assert where in str(info.value)
    assert_failed_cleanly(info.value, settings, spec, "b")

    m = ingest_batch(spec, str(slices[2015]), "b", settings)  # same batch, space is back
    assert (m.created, m.state, m.published_rows) == (True, "published", 1500)
    assert manifests(settings, spec) == {"b": ("published", None)}
    assert ingest_batch(spec, str(slices[2015]), "b", settings).created is False  # once


def test_a_non_io_error_is_also_cleaned_up_and_names_the_batch(settings, spec, slices,
                                                               monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    with monkeypatch.context() as patch:
        patch.setattr("shutil.copy2", boom)
        with pytest.raises(RuntimeError, match="bug") as info:
            ingest_batch(spec, str(slices[2015]), "b", settings)
    assert any("batch 'b'" in note for note in info.value.__notes__)
    assert leftovers(settings) == []
    assert manifests(settings, spec)["b"][0] == "failed"
    assert ingest_batch(spec, str(slices[2015]), "b", settings).state == "published"


@pytest.fixture
def small_disk(tmp_path, db_url):
    """Settings whose MLCORE_HOME is a real 2 MiB tmpfs (the metadata store stays outside)."""
    home = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield Settings(home=home, database_url=db_url, problems_dir=Path("problems").resolve(),
                       feature_repo=Path("feature_repo").resolve())
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def _fill(home: Path, leave: int) -> Path:
    """Fill the disk but ``leave`` bytes (a filler file written until ENOSPC, then trimmed)."""
    filler = home / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = filler.stat().st_size
    with open(filler, "r+b") as f:
        f.truncate(max(size - leave, 0))
    return filler


def test_a_really_full_disk_fails_cleanly_and_publishes_after_space_is_back(small_disk, spec,
                                                                             slices, tmp_path):
    settings = small_disk
    (settings.home / "locks").mkdir()
    source = slices[2015]
    assert pq.ParquetFile(source).metadata.num_rows == 1500
    filler = _fill(settings.home, leave=8192)  # less than the curated file or the raw copy
    with pytest.raises(BatchStorageError) as info:
        ingest_batch(spec, str(source), "b", settings)
    assert_failed_cleanly(info.value, settings, spec, "b")
    assert shutil.disk_usage(settings.home).free <= 16384  # it really was full

    filler.unlink()  # space is back: the same batch, then another, publish
    assert ingest_batch(spec, str(source), "b", settings).state == "published"
    assert ingest_batch(spec, str(slices[2016]), "c", settings).state == "published"
    assert {k: v[0] for k, v in manifests(settings, spec).items()} == {
        "b": "published", "c": "published"}
    assert leftovers(settings) == []
