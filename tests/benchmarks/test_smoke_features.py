"""The feature benchmarks keep running as the code changes (quick mode: the figures mean little;
`make bench` measures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick",
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_materialize_benchmark_compares_all_three_writers(tmp_path):
    out = run("bench_materialize.py", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for dataset in ("real 2018 batch: 2,000 entities", "synthetic: 5,000 entities"):
        assert dataset in out.stdout
    for row in ("ours: online part", "ours: whole step", "baseline: executemany",
                "bare Feast: materialize"):
        assert out.stdout.count(f"| {row} |") == 2, row
    assert out.stdout.count("Online part / baseline: **") == 2
    assert not list(tmp_path.iterdir())  # its temporary homes are removed


def test_online_read_benchmark_measures_every_variant(tmp_path):
    out = run("bench_online_read.py", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for variant in ("baseline", "direct", "via Feast", "rows"):
        for keys in (1, 100):
            assert out.stdout.count(f"| {keys} | {variant} |") == 2, (keys, variant)
    assert not list(tmp_path.iterdir())
