"""bench_materialize.py on the server online stores keeps running as the code changes (quick
mode: the figures mean little; needs the local PostgreSQL and redis-server, as the online-store
tests do)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_materialize_benchmark_measures_postgres_and_redis(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_materialize.py"),
                          "--quick", "--stores", "postgres", "redis", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name, baseline in (("PostgreSQL", "COPY"), ("Redis", "pipelined HSET")):
        for row in (f"ours ({name}): online part", f"ours ({name}): whole step",
                    f"baseline ({name}): {baseline}", f"bare Feast ({name}): materialize"):
            assert out.stdout.count(f"| {row} |") == 2, row
        assert out.stdout.count(f"{name} online part / baseline ({baseline}): **") == 2
    assert "| ours: online part |" not in out.stdout  # SQLite not asked for
    assert not list(tmp_path.iterdir())  # its temp homes and the redis-server's dir are removed
