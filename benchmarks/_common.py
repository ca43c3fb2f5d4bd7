"""What every benchmark script shares: where the repo is, logging to stderr, when and on which
code a run happened, the machine's load, and the temp-dir parent (never inside the repo)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def code() -> str:
    """The commit, and whether the product (mlcore/ dags/ plugins/ Makefile) differs from it
    (read-only git calls)."""
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = sorted({line[3:].split("/")[0] for line in git(
        "status", "--porcelain", "--", "mlcore", "dags", "plugins", "Makefile").splitlines()})
    return f"{commit} ({'uncommitted changes in ' + ', '.join(dirty) if dirty else 'as committed'})"


def work_parent(workdir: Path | str | None) -> Path:
    """The folder temp dirs go in (``workdir`` or the system's); exits when inside the repo."""
    parent = Path(workdir or tempfile.gettempdir()).resolve()
    if parent.is_relative_to(ROOT):
        sys.exit("refusing to write benchmark files inside the repo")
    return parent
