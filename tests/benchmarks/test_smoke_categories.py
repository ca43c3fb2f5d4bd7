"""The string-categories benchmark keeps running as the code changes (quick mode: the ratios mean
little; ``benchmarks/bench_categories.py`` without ``--quick`` measures)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_categories.py"
STAGES = ("ingest_batch", "materialize_batch")


def test_categories_benchmark_times_both_variants_and_profiles_the_string_path(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--profile", "always",
                          "--top", "5", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert text.startswith("### String categories (`bench_categories.py`): issue 13")
    assert "Rows: 50,000" in text and "15 categorical features" in text
    for stage in STAGES:
        # One table row per stage: A's and B's medians, the ratio, the 1.2x target.
        row = re.search(rf"^\| `{stage}` \| 50,000 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|.*"
                        r"\| <= 1\.2x \| (yes|NO) \|$", text, re.M)
        assert row, stage
        assert float(row[1]) > 0 and float(row[2]) > 0
        for variant in ("A: integer codes", "B: string categories"):
            assert f"{variant}, `{stage}`:" in text, (variant, stage)  # its profile
    assert re.search(r"ingest_batch \*\*[\d.]+x\*\*, materialize_batch \*\*[\d.]+x\*\*", text)
    assert text.count("cumtime") == 4
    # Both variants ran the whole way, per the progress log.
    assert "round 1 A: integer codes" in out.stderr and "round 1 B: string categories" in out.stderr
    assert not list(tmp_path.iterdir())  # its temporary homes and files are removed
