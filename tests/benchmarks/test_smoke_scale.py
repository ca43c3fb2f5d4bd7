"""The scale benchmark keeps running as the code changes (quick mode: the figures mean nothing;
``benchmarks/bench_scale.py`` without ``--quick`` measures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_scale.py"
STAGES = ("ingest", "features", "retrieval", "drift", "scoring")


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_scale_benchmark_measures_every_stage_at_every_size(tmp_path):
    out = _run("--quick", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert sorted(int(n) for n in results) == [2000, 8000]
    for n, stages in results.items():
        for stage in STAGES:
            r = stages[stage]
            assert r["ok"], (n, stage, r)
            assert r["seconds"] > 0 and r["peak_rss_mib"] >= r["base_rss_mib"] > 0
        # Every stage really processed the size's rows (retrieval: train + holdout).
        assert stages["ingest"]["value"]["rows"] == int(n)
        assert stages["features"]["value"]["rows"] == int(n)
        assert stages["retrieval"]["value"]["rows"] == int(n)
        assert stages["scoring"]["value"]["rows"] == int(n)
    assert "train" in results["2000"]  # the champion is trained once, on the smallest size
    checks = results["8000"]["verify"]["value"]  # bounded retrieval, drift sample == plain ones
    assert sorted(checks) == ["drift sample", "with_target=False", "with_target=True"]
    assert all(v.startswith("identical") for v in checks.values()), checks
    for stage in STAGES:
        assert f"| {stage} | linear: " in out.stdout or f"| {stage} | DEFECT: " in out.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # its temp dir is removed
    again = _run("--render", str(tmp_path / "r.json"))
    assert again.returncode == 0 and again.stdout.strip() == out.stdout.strip()


def test_a_stage_over_the_memory_cap_is_killed_and_reported_as_a_defect(tmp_path):
    out = _run("--quick", "--workdir", str(tmp_path), "--stages", "ingest",
               "--kill-rss-gib", "0.05", "--check", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 1, out.stderr[-3000:]
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    for stages in results.values():
        assert not stages["ingest"]["ok"]
        assert stages["ingest"]["error"].startswith("killed: RSS")
    assert "| ingest | DEFECT: " in out.stdout
