"""A materialize killed between writing its staging dir and renaming it must not break later
offline reads: Feast's file source reads the whole ``features/problem=<p>`` folder with dask,
which does not skip dot-named folders (a leftover ``.staging-batch=…`` there made every read fail
with ``KeyError: '.staging-batch'``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mlcore.feast.retrieval import historical_features
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.store.catalog import get_batch

# Not `from tests.conftest import ROOT`: that imports conftest a second time, which re-runs its
# environment set-up (a new, empty AIRFLOW_HOME and metadata DB for every later subprocess).
ROOT = Path(__file__).resolve().parents[2]

def _materialize_in_child(settings, batch_id: str, failpoint: str) -> int:
    code = ("from mlcore.config import Settings; from mlcore.problems import get_problem; "
            "from mlcore.features import materialize_batch; "
            f"s = Settings(home={str(settings.home)!r}, database_url={settings.db_url!r}); "
            f"materialize_batch(get_problem('census_employment'), {batch_id!r}, s)")
    env = {**os.environ, "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"),
           "MLCORE_FAILPOINT": failpoint}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=300,
                          capture_output=True).returncode


def _hidden(settings, spec) -> list[str]:
    folder = settings.partition("features", spec.name)
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_killed_materialize_leaves_nothing_in_the_folder_feast_reads(sqlite_settings, spec,
                                                                       slices):
    settings = sqlite_settings
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
    materialize_batch(spec, "2015", settings)
    assert _materialize_in_child(settings, "2016", "features.after_stage_write") == -9
    assert _hidden(settings, spec) == []
    batch = get_batch(spec.name, "2015", settings.db_url)
    assert len(historical_features(spec, [batch], settings)) == 1500  # the folder reads
    assert materialize_batch(spec, "2016", settings).rows == 1500  # and a re-run publishes


def test_a_leftover_of_the_old_staging_layout_is_removed_by_the_next_write(sqlite_settings,
                                                                          spec, slices):
    settings = sqlite_settings
    ingest_batch(spec, str(slices[2015]), "2015", settings)
    done = materialize_batch(spec, "2015", settings)
    legacy = settings.partition("features", spec.name) / ".staging-batch=2015-0badc0de"
    shutil.copytree(done.offline_uri, legacy)  # what a crash under the old layout left
    assert materialize_batch(spec, "2015", settings).rows == 1500
    assert _hidden(settings, spec) == []
    batch = get_batch(spec.name, "2015", settings.db_url)
    assert len(historical_features(spec, [batch], settings)) == 1500
