"""The orchestration and freshness benchmarks keep running as the code changes.

Their scheduler parts need a private ``airflow standalone`` (60-80 s to start on this machine,
plus the runs), too slow for the suite: ``benchmarks/bench_orchestration.py --quick`` and
``benchmarks/bench_freshness.py --quick`` run them (``make bench-quick``). Here: the DAG parse
times, both plain sides (the retrain DAG's mlcore calls in a fresh process; the in-process
ingest + materialize) on a small seeded home, and the executor's preload list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live  # starts a live Airflow (make test-live)

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_parse_time_is_measured_per_dag_file(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "bench_orchestration.py"), "--parse-only",
                          "--quick", "--parse-files", "retrain_model.py", "--workdir",
                          str(tmp_path), "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    problems = len(list((ROOT / "problems").glob("*.yaml")))  # one DAG per spec in the file
    assert f"| retrain_model.py | {problems} |" in out.stdout
    parse = json.loads((tmp_path / "r.json").read_text())["parse"]["retrain_model.py"][0]
    assert parse["dags"] == problems and not parse["errors"] and parse["parse"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # its temp dir is removed


def test_plain_sides_run_the_same_mlcore_calls(tmp_path):
    from _common import new_settings, seed_home, slice_files
    from bench_freshness import run_compute
    from bench_orchestration import run_plain

    home = tmp_path / "home"
    seed = seed_home(new_settings(home), slice_files(300, tmp_path, (2015, 2016, 2017)),
                     train=True)
    assert seed["champion"] == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins"), "OMP_NUM_THREADS": "1"}
    plain = run_plain(home, env)
    steps = plain["steps"]
    assert list(steps)[:5] == ["imports", "start_retrain", "build_dataset", "train_contender",
                               "evaluate_contender"]
    assert "release_retrain" in steps and plain["wall"] > sum(steps.values()) > 0
    (tmp_path / "new").mkdir()
    src = slice_files(200, tmp_path / "new", (2018,))[2018]
    got = run_compute(home, src, "smoke-2018", env)
    assert got["rows"] == got["online_rows"] == 200 and got["total"] > 0


def test_the_shipped_executor_preloads_every_task_library():
    from airflow.executors.local_executor import LocalExecutor

    from batchloop_airflow.executor import PRELOAD, PreloadingLocalExecutor, preload

    assert issubclass(PreloadingLocalExecutor, LocalExecutor) and PreloadingLocalExecutor.is_local
    took = preload()  # in this process: most are imported already by the test above
    assert sorted(took) == sorted(PRELOAD), set(PRELOAD) - set(took)
    assert ("AIRFLOW__CORE__EXECUTOR ?= batchloop_airflow.executor.PreloadingLocalExecutor"
            in (ROOT / "Makefile").read_text())
