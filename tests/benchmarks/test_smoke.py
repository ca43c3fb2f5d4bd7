"""The benchmark scripts keep running as the code changes (quick mode: the figures mean nothing;
`make bench` measures)."""

from __future__ import annotations

from bench_run import run_bench


def test_promotion_benchmark_runs_the_whole_arrival_path(tmp_path):
    out = run_bench("bench_promotion.py", "--quick", "--workdir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "arrival -> decision" in out.stdout + out.stderr
    assert "**ratio**" in out.stdout
    assert not list(tmp_path.iterdir())  # its temporary home is removed


def test_drift_benchmark_runs_and_agrees_with_numpy():
    out = run_bench("bench_drift.py", "--quick")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 differ" in out.stdout  # numpy/scipy and the drift step agree on every column
    assert "detect_drift" in out.stdout


def test_ingest_benchmark_runs_both_measurements(tmp_path):
    out = run_bench("bench_ingest.py", "--quick", "--workdir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio, clean (0 quarantined)" in out.stdout
    assert "peak memory, child process | 100,000" in out.stdout
