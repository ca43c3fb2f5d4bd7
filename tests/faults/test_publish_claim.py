"""One publish per batch ID, decided by the metadata store: concurrent ingests of one batch from
several homes (hosts that share no disk) on one database.

Each ingest is its own OS process with its own ``MLCORE_HOME``; all start at the same instant
(they import first, then wait for a go file). The store decides who publishes (an exclusive
claim held in the database, then a compare-and-set on the manifest); the others report a no-op
(same content) or a conflict (other content), as two runs on one host do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from mlcore.ingestion import ClaimLost, _finish, _stage
from mlcore.store.session import get_engine, upgrade

# Not `from tests.conftest import ROOT`: that imports conftest a second time, which re-runs its
# environment set-up (a new, empty AIRFLOW_HOME and metadata DB for every later subprocess).
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, os, sys, time
from pathlib import Path
from mlcore.config import Settings
from mlcore.problems import get_problem
from mlcore.ingestion import ingest_batch
home, url, source, batch, go = sys.argv[1:6]
spec = get_problem("census_employment")
s = Settings(home=home, database_url=url)
while not Path(go).exists():
    time.sleep(0.01)
try:
    m = ingest_batch(spec, source, batch, s)
    print(json.dumps({"created": m.created, "state": m.state}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _race(tmp_path: Path, url: str, sources: list[Path], batch: str) -> list[dict]:
    go = tmp_path / "go"
    env = {**os.environ, "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"), "PYTHONPATH": str(ROOT)}
    env.pop("MLCORE_FAILPOINT", None)
    # A slow step between staging and publishing: every writer is mid-publish at once.
    env["MLCORE_STALL"] = "ingest.after_stage_write=0.5"
    procs = []
    for i, source in enumerate(sources):
        home = tmp_path / f"home{i}"
        home.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CHILD, str(home), url, str(source), batch, str(go)],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    time.sleep(8)  # every child imported and waiting (a late one still races the rest)
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        lines = stdout.strip().splitlines()
        assert lines, stderr[-3000:]
        out.append(json.loads(lines[-1]))
    return out


def _published_homes(tmp_path: Path, n: int, batch: str) -> list[int]:
    """The homes holding a curated or raw copy of the batch, or a staging leftover."""
    held = []
    for i in range(n):
        for area in ("curated", "raw"):
            part = tmp_path / f"home{i}" / area / "problem=census_employment"
            if part.exists() and any(part.iterdir()):
                held.append(i)
                break
    return held


def _rows(url: str, batch: str) -> list[tuple]:
    with get_engine(url).connect() as c:
        return [tuple(r) for r in c.execute(text(
            "select batch_id, state from batches where batch_id = :b"), {"b": batch})]


def test_six_homes_one_batch_publish_once(db_url, slices, tmp_path):
    results = _race(tmp_path, db_url, [slices[2015]] * 6, "b")
    assert sorted(r.get("created", r.get("error")) for r in results) == [False] * 5 + [True], \
        results
    assert {r["state"] for r in results} == {"published"}
    assert _rows(db_url, "b") == [("b", "published")]
    assert len(_published_homes(tmp_path, 6, "b")) == 1  # one curated copy, no leftovers


def test_other_content_under_the_same_id_conflicts(db_url, slices, tmp_path):
    results = _race(tmp_path, db_url, [slices[2015], slices[2016]] * 3, "b")
    created = [r for r in results if r.get("created")]
    assert len(created) == 1, results
    winner = results.index(created[0]) % 2  # which file won
    for i, r in enumerate(results):
        if r is created[0]:
            continue
        if i % 2 == winner:
            assert r == {"created": False, "state": "published"}, results
        else:
            assert r["error"] == "BatchConflict" and "'b'" in r["message"], results
    assert _rows(db_url, "b") == [("b", "published")]
    assert len(_published_homes(tmp_path, 6, "b")) == 1


def test_a_lost_claim_never_publishes(spec, tmp_path, postgres_url):
    """Compare-and-set: a writer whose claim another took over (its lock was lost) cannot mark
    the manifest published, and the row stays the new holder's."""
    url = postgres_url
    upgrade(url)
    first = _stage(spec, "lost", {"source_uri": "file:///a", "sha256": "a" * 64}, url)
    second = _stage(spec, "lost", {"source_uri": "file:///b", "sha256": "b" * 64}, url)
    assert first != second
    with pytest.raises(ClaimLost, match="'lost'"):
        _finish(spec, "lost", first, {"state": "published"}, [], url)
    assert _rows(url, "lost") == [("lost", "staged")]
    assert _finish(spec, "lost", second, {"state": "published"}, [], url).state == "published"
