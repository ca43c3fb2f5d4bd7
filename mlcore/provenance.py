"""Provenance shared by every record: which code wrote it; and test failpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path


@cache
def code_version() -> str:
    """The package version plus the git commit when running from a checkout (``.dirty`` when
    tracked files differ from that commit, so a record never claims code it did not run)."""
    try:
        base = pkg_version("batchloop")
    except PackageNotFoundError:
        base = "unknown"
    here = Path(__file__).parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=here).stdout.strip()
        dirty = sha and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=5,
                                       cwd=here).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{base}+{sha}{'.dirty' if dirty else ''}" if sha else base


def failpoint(name: str) -> None:
    """SIGKILL this process at ``name`` when ``MLCORE_FAILPOINT`` names it, or sleep there when
    ``MLCORE_STALL`` is ``<name>=<seconds>`` (crash tests only).

    Lets tests kill a real writer at the exact step they want (mid-write, between rename and
    commit) instead of racing a timer. Unset in production: one env lookup.
    """
    if os.environ.get("MLCORE_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    stall = os.environ.get("MLCORE_STALL")  # "<name>=<seconds>": a slow step, to act during it
    if stall and stall.partition("=")[0] == name:
        time.sleep(float(stall.partition("=")[2]))


@cache
def lock_hash() -> str | None:
    """SHA-256 of the dependency lock file (``uv.lock``) the code runs with, when it ships."""
    import hashlib

    lock = Path(__file__).resolve().parents[1] / "uv.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None
