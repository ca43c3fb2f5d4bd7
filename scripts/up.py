"""``make up``: Airflow standalone (UI, scheduler, dag-processor, triggerer) on 127.0.0.1:8080.

Ctrl-C stops it cleanly: standalone runs in its own session and gets one SIGINT (its documented
shutdown path, ~5 s when idle); if tasks are still running after the grace period, the whole
process group is terminated, then killed. A group-wide SIGINT (what a terminal sends) would
leave standalone waiting on orphaned executor workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

GRACE_SECONDS = int(os.environ.get("BATCHLOOP_UP_GRACE", "30"))


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT, then SIGTERM and SIGKILL to the group if it does not exit in time."""
    proc.send_signal(signal.SIGINT)
    for sig, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, 10)):
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            print(f"\nstill running after {wait} s; sending {sig.name} to the group", flush=True)
            os.killpg(proc.pid, sig)
    return proc.wait()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Also when started in the background (SIGINT inherited as ignored) or stopped with SIGTERM.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    proc = subprocess.Popen(["airflow", "standalone"], start_new_session=True)
    print(f"Airflow standalone (pid {proc.pid}) starting on http://127.0.0.1:8080 — Ctrl-C stops",
          flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print("\nstopping Airflow …", flush=True)
        return stop(proc)


if __name__ == "__main__":
    sys.exit(main())
