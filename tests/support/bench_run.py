"""Run a benchmark script the way its smoke test does: ``benchmarks/<script> <args>`` in a child
Python from the repository root, output captured as text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<script> <args>``; stdout and stderr kept (text)."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)
