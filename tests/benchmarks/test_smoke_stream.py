"""The stream benchmark keeps running as the code changes (quick mode: the figures mean nothing;
`make bench` measures). Live: it starts a redis-server and the stream service of its own."""

from __future__ import annotations

import pytest
from bench_run import run_bench

pytestmark = pytest.mark.live


def test_stream_benchmark_measures_both_stores_and_cleans_up(tmp_path):
    out = run_bench("bench_stream.py", "--quick", "--workdir", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for store in ("sqlite", "redis"):
        assert f"{store}: readable p99" in out.stdout, out.stdout[-2000:]
    assert "| sqlite | 1,000 |" in out.stdout and "| redis | 1,000 |" in out.stdout
    assert not list(tmp_path.iterdir())  # its redis-server dir and homes are removed
