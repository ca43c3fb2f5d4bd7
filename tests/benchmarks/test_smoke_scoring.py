"""The scoring benchmark keeps running as the code changes (quick mode: the figures mean little;
`make bench` measures)."""

from __future__ import annotations

from bench_run import run_bench


def test_scoring_benchmark_times_the_task_and_the_bare_predict(tmp_path):
    out = run_bench("bench_scoring.py", "--quick", "--workdir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    for batch, rows in (("bench-2018", "2,000"), ("bench-synthetic", "10,000")):
        for model in ("(loop's pick)", "| logistic_regression |"):
            rows_of = [line for line in out.stdout.splitlines()
                       if line.startswith(f"| {batch} | {rows} |") and model in line]
            assert len(rows_of) == 1, (batch, model)
            assert rows_of[0].count("| True |") == 1  # stored scores = the bare predict's
    assert out.stdout.count("**") == 8  # four medians
    assert not list(tmp_path.iterdir())  # its temporary home is removed
