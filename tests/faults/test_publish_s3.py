"""The object-storage home passes the local home's publish fault tests: an ingest process killed
(SIGKILL) at each step between its staging write and the commit leaves nothing published (a
reader follows committed locations only, and none was committed), a re-run publishes once and
sweeps what the killed one left; concurrent ingests of one batch publish once.

The home is ``s3://<bucket>/<prefix>`` on moto's standalone S3 server (its own process on
loopback); the metadata store is a SQLite file or a PostgreSQL schema; every ingest is its own OS
process (as on a worker), killed by the failpoints of ``mlcore.provenance``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3Server, s3_home, s3_server
from sqlalchemy import select

from mlcore.config import Settings
from mlcore.data.io import read_curated
from mlcore.ingestion import ingest_batch
from mlcore.store.catalog import get_batch, published_batches
from mlcore.store.models import Batch, QuarantinedRow
from mlcore.store.session import session_scope, upgrade

# Not `from tests.conftest import ROOT` (that re-runs conftest's set-up).
ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "census_employment"

CHILD = """
import json, sys, time
from pathlib import Path
from mlcore.config import Settings
from mlcore.problems import get_problem
from mlcore.ingestion import ingest_batch
home, url, source, batch, go = sys.argv[1:6]
s = Settings(home=home, database_url=url)
while go and not Path(go).exists():
    time.sleep(0.01)
try:
    m = ingest_batch(get_problem("census_employment"), source, batch, s)
    print(json.dumps({"created": m.created, "state": m.state}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def s3_settings(server: S3Server, db_url: str, monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> Settings:
    """A fresh prefix of the server's bucket as the home, over the parametrized store."""
    return s3_home(server, monkeypatch, tmp_path, database_url=db_url)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"), "PYTHONPATH": str(ROOT),
           **extra}
    for var in ("MLCORE_FAILPOINT", "MLCORE_STALL"):
        if var not in extra:
            env.pop(var, None)
    return env


def _ingest_in_child(settings: Settings, source: Path, batch: str, **env: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, settings.home_uri, settings.db_url,
                           str(source), batch, ""], env=_env(**env), cwd=ROOT, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode != 0 or "error" not in done.stdout, done.stdout + done.stderr[-3000:]
    return done.returncode


def _state(settings: Settings) -> tuple[set[tuple[str, str, str | None]], int]:
    with session_scope(settings.db_url) as s:
        rows = {(b.batch_id, b.state, b.curated_uri) for b in s.scalars(select(Batch))}
        return rows, len(list(s.scalars(select(QuarantinedRow))))


def _objects(settings: Settings) -> list[str]:
    home = settings.store_home()
    return home.find(home.uri())


def _curated_hash(settings: Settings, batch: str) -> str:
    frame = read_curated(get_batch(PROBLEM, batch, settings.db_url))
    return hashlib.sha256(frame.to_csv().encode()).hexdigest()


@pytest.fixture(scope="module")
def clean_hash(spec, slices, tmp_path_factory) -> str:
    """The curated content of a clean run of the 2015 slice in a folder home."""
    home = tmp_path_factory.mktemp("clean")
    ref = Settings(home=home, problems_dir=ROOT / "problems", feature_repo=ROOT / "feature_repo")
    upgrade(ref.db_url)
    ingest_batch(spec, str(slices[2015]), "b", ref)
    return _curated_hash(ref, "b")


@pytest.mark.parametrize("failpoint", ["ingest.mid_write", "ingest.after_stage_write",
                                       "ingest.after_rename"])
def test_sigkill_leaves_nothing_published_and_a_rerun_publishes_once(s3_settings, spec, slices,
                                                                     clean_hash, failpoint):
    home = s3_settings.store_home()
    curated = s3_settings.partition_uri("curated", PROBLEM, "b")
    raw = s3_settings.partition_uri("raw", PROBLEM, "b")
    assert _ingest_in_child(s3_settings, slices[2015], "b", MLCORE_FAILPOINT=failpoint) == -9
    assert _state(s3_settings) == ({("b", "staged", None)}, 0)  # nothing committed
    assert published_batches(PROBLEM, s3_settings.db_url) == []  # so no reader finds it
    left = _objects(s3_settings)
    assert all(o.startswith(home.uri(".attempts") + "/") for o in left), left
    if failpoint != "ingest.mid_write":  # the files were complete, only the commit missing
        assert len(home.attempts(curated)) == 1 and len(home.attempts(raw)) == 1
    assert _ingest_in_child(s3_settings, slices[2015], "b") == 0
    (row,), quarantined = _state(s3_settings)
    assert row[:2] == ("b", "published") and quarantined == 0
    committed = row[2]
    assert home.attempts(curated) == [committed]  # the killed run's attempts are swept
    tag = committed.rsplit("/", 1)[1]
    assert home.attempts(raw) == [f"{raw.replace('/raw/', '/.attempts/raw/', 1)}/{tag}"]
    assert len(_objects(s3_settings)) == 2  # one curated file, one raw copy
    assert _curated_hash(s3_settings, "b") == clean_hash
    assert ingest_batch(spec, str(slices[2015]), "b", s3_settings).created is False  # once


def _race(settings: Settings, sources: list[Path], batch: str, tmp: Path) -> list[dict]:
    """One ingest process per source, all released at once, slowed between the staging write
    and the commit so that every one is mid-publish together."""
    go = tmp / f"go-{uuid.uuid4().hex[:6]}"
    env = _env(MLCORE_STALL="ingest.after_stage_write=0.5")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, settings.home_uri, settings.db_url,
                               str(source), batch, str(go)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for source in sources]
    time.sleep(8)  # every child imported and waiting (a late one still races the rest)
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0 and stdout.strip(), stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_six_writers_one_batch_publish_once(s3_settings, slices, tmp_path):
    results = _race(s3_settings, [slices[2015]] * 6, "b", tmp_path)
    assert sorted(r.get("created", r.get("error")) for r in results) == [False] * 5 + [True], \
        results
    (row,), _ = _state(s3_settings)
    assert row[:2] == ("b", "published")
    home = s3_settings.store_home()
    assert home.attempts(s3_settings.partition_uri("curated", PROBLEM, "b")) == [row[2]]
    assert len(_objects(s3_settings)) == 2  # one copy, no loser's attempt left


def test_other_content_under_the_same_id_conflicts(s3_settings, slices, tmp_path):
    results = _race(s3_settings, [slices[2015], slices[2016]] * 3, "b", tmp_path)
    created = [r for r in results if r.get("created")]
    assert len(created) == 1, results
    winner = results.index(created[0]) % 2
    for i, r in enumerate(results):
        if r is not created[0]:
            assert (r == {"created": False, "state": "published"} if i % 2 == winner
                    else r["error"] == "BatchConflict" and "'b'" in r["message"]), results
    (row,), _ = _state(s3_settings)
    assert row[:2] == ("b", "published") and len(_objects(s3_settings)) == 2


def test_a_writer_whose_claim_is_taken_over_commits_nothing_and_removes_its_attempts(
        s3_settings, spec, slices):
    """Compare-and-set on S3: the writer's attempts are complete when another writer takes its
    claim over (its store lock was lost); its commit fails, its objects go, nothing is
    published, the manifest stays the new holder's."""
    from mlcore.ingestion import _stage

    child = subprocess.Popen([sys.executable, "-c", CHILD, s3_settings.home_uri,
                              s3_settings.db_url, str(slices[2015]), "b", ""],
                             env=_env(MLCORE_STALL="ingest.after_rename=6"), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    home = s3_settings.store_home()
    raw = s3_settings.partition_uri("raw", PROBLEM, "b")
    deadline = time.monotonic() + 120
    while not home.find(raw.replace("/raw/", "/.attempts/raw/", 1)):  # the raw copy is up
        assert time.monotonic() < deadline and child.poll() is None, child.communicate()
        time.sleep(0.2)
    time.sleep(1)  # its record taken, it now stalls just before its commit
    _stage(spec, "b", {"source_uri": "file:///other", "sha256": "c" * 64}, s3_settings.db_url)
    stdout, stderr = child.communicate(timeout=120)
    assert json.loads(stdout.strip().splitlines()[-1])["error"] == "ClaimLost", stderr[-3000:]
    assert _state(s3_settings) == ({("b", "staged", None)}, 0)
    assert _objects(s3_settings) == []  # the loser removed both of its attempts
