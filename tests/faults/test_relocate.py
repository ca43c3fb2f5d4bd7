"""Relocatable state: the store records paths relative to ``MLCORE_HOME``, so a copy of the home
and its database works at another path (after ``mlcore init`` there re-points Feast), reading the
copy's files, never the original's."""

from __future__ import annotations

import shutil

from first_champion import first_champion
from sqlalchemy import text

from mlcore.cli import main
from mlcore.config import get_settings
from mlcore.data.integrity import curated_files, offline_files
from mlcore.data.io import read_curated
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.registry import alias_holder, get_version, load_model
from mlcore.scoring import score_batch
from mlcore.store.catalog import get_batch
from mlcore.store.session import session_scope


def test_a_copied_home_works_at_another_path(tmp_path, monkeypatch, spec, slices):
    first, moved = tmp_path / "first", tmp_path / "moved"
    monkeypatch.setenv("MLCORE_HOME", str(first))
    monkeypatch.delenv("MLCORE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["init"]) == 0
        settings = get_settings()
        first_champion(spec, slices, settings, years=(2015, 2016))
        with session_scope(settings.db_url) as s:
            stored = s.execute(text("select curated_uri from batches")).scalars().all()
            artifacts = s.execute(text("select artifact_uri from model_versions")).scalars().all()
        assert stored and all(not u.startswith("/") for u in stored + artifacts)

        shutil.copytree(first, moved)
        shutil.rmtree(first)  # the original is gone: only the copy can be read
        monkeypatch.setenv("MLCORE_HOME", str(moved))
        get_settings.cache_clear()
        assert main(["init"]) == 0
        settings = get_settings()
        batch = get_batch(spec.name, "2016", settings.db_url)
        assert batch.curated_uri is not None and batch.curated_uri.startswith(str(moved))
        assert len(read_curated(batch)) == batch.row_count - batch.quarantine_count
        assert all(str(f).startswith(str(moved)) for f in curated_files(batch))
        assert all(str(f).startswith(str(moved)) for f in offline_files(spec.name,
                                                                        settings.db_url))
        champion = get_version(spec.name, alias_holder(spec.name, settings.db_url),
                               settings.db_url)
        assert load_model(champion, settings) is not None  # verified, not "tampered"
        ingest_batch(spec, str(slices[2017]), "2017", settings)
        materialize_batch(spec, "2017", settings)
        assert score_batch(spec, "2017", settings).rows > 0
    finally:
        get_settings.cache_clear()
