"""A materialize on an object-storage home (``MLCORE_HOME=s3://<bucket>/<prefix>`` on moto's
standalone server) killed (SIGKILL, its own OS process) before or after uploading its offline
partition: no half object is ever visible under ``features/``, nothing is recorded, the training
join over the other batches still reads, and the re-run records the same partition once (and
removes the killed run's local staging folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from s3_server import S3Server, s3_home, s3_server
from sqlalchemy import select

from mlcore.config import Settings
from mlcore.data.io import read_curated
from mlcore.feast.online import online_features
from mlcore.feast.retrieval import historical_features
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import Materialization
from mlcore.store.session import session_scope

# Not `from tests.conftest import ROOT` (that re-runs conftest's set-up).
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from pathlib import Path
from mlcore.config import Settings
from mlcore.problems import get_problem
from mlcore.features import materialize_batch
home, url, local, batch = sys.argv[1:5]
s = Settings(home=home, database_url=url, local_dir=Path(local))
materialize_batch(get_problem("census_employment"), batch, s)
"""


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def s3_settings(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    return s3_home(server, monkeypatch, tmp_path, feast_local=True)


def _materialize_in_child(settings: Settings, batch_id: str, failpoint: str) -> int:
    env = {**os.environ, "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"), "PYTHONPATH": str(ROOT),
           "MLCORE_FAILPOINT": failpoint}
    env.pop("MLCORE_STALL", None)
    args = [settings.home_uri, settings.db_url, str(settings.local_dir), batch_id]
    return subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=ROOT,
                          timeout=300, capture_output=True).returncode


def _features(settings: Settings) -> list[str]:
    home = settings.store_home()
    return home.find(home.uri("features"))


def _dead_tmp() -> list[Path]:
    """``mlcore-features-<pid>-*`` folders of processes that no longer run."""
    out = []
    for p in Path(tempfile.gettempdir()).glob("mlcore-features-*-*"):
        try:
            os.kill(int(p.name.split("-")[2]), 0)
        except ProcessLookupError:
            out.append(p)
        except (PermissionError, ValueError):
            pass
    return out


def _recorded(settings: Settings) -> list[str]:
    with session_scope(settings.db_url) as s:
        return sorted(s.scalars(select(Materialization.batch_id)))


@pytest.mark.parametrize("failpoint", ["features.after_stage_write",
                                       "features.after_offline_upload"])
def test_a_killed_materialize_on_s3_records_nothing_and_the_rerun_records_once(
        s3_settings, spec, slices, failpoint):
    settings = s3_settings
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
    materialize_batch(spec, "2015", settings)
    part16 = f"{settings.partition_uri('features', spec.name, '2016')}/part-0.parquet"

    assert _materialize_in_child(settings, "2016", failpoint) == -9
    assert _recorded(settings) == ["2015"]
    uploaded = failpoint == "features.after_offline_upload"
    # killed mid-staging, its local staging folder stays (no cleanup ran) ...
    assert bool(_dead_tmp()) is not uploaded
    assert (part16 in _features(settings)) is uploaded  # whole, or not there at all
    assert len(_features(settings)) == 1 + uploaded
    b2015 = get_batch(spec.name, "2015", settings.db_url)
    assert len(historical_features(spec, [b2015], settings)) == 1500  # the others still read

    again = materialize_batch(spec, "2016", settings)
    assert again.rows == 1500 and _recorded(settings) == ["2015", "2016"]
    assert _dead_tmp() == []  # ... is removed by the next run
    assert sorted(_features(settings)) == sorted(
        [f"{settings.partition_uri('features', spec.name, '2015')}/part-0.parquet", part16])
    b2016 = get_batch(spec.name, "2016", settings.db_url)
    assert len(historical_features(spec, [b2016, b2015], settings)) == 3000  # verified, read
    curated = read_curated(b2016).set_index("id")
    keys = curated.index[:5].tolist()
    got = online_features(spec, keys, settings).set_index("id")
    pd.testing.assert_frame_equal(got[spec.feature_names].astype("float64"),
                                  curated.loc[keys, spec.feature_names].astype("float64"),
                                  check_names=False)
