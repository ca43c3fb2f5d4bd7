"""``make up``: Airflow standalone (UI, scheduler, dag-processor, triggerer) on 127.0.0.1:8080.

Quiet by default: standalone's output (thousands of lines) goes to ``$AIRFLOW_HOME/standalone.log``;
the URL is printed at once and again when the UI answers. ``BATCHLOOP_UP_VERBOSE=1`` streams
it to the terminal instead. ``[api] base_url`` defaults to the address the UI answers at, so the
links in alerts (``log_url``, ``runbook``) open from this machine.

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
import time
import urllib.request
from pathlib import Path

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


def wait_until_up(proc: subprocess.Popen[bytes], url: str, seconds: float = 600) -> bool:
    """Poll the api-server's health endpoint until it answers (False if standalone exited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(1)
    return False


def main() -> int:
    # Also when started in the background (SIGINT inherited as ignored) or stopped with SIGTERM.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    host = os.environ.get("AIRFLOW__API__HOST", "127.0.0.1")
    url = f"http://{host}:{os.environ.get('AIRFLOW__API__PORT', '8080')}"
    os.environ.setdefault("AIRFLOW__API__BASE_URL", url)
    verbose = os.environ.get("BATCHLOOP_UP_VERBOSE", "").strip().lower() in ("1", "true", "yes")
    log_path = Path(os.environ.get("AIRFLOW_HOME", ".airflow")) / "standalone.log"
    out = None if verbose else log_path.open("ab")
    proc = subprocess.Popen(["airflow", "standalone"], start_new_session=True, stdout=out,
                            stderr=subprocess.STDOUT if out else None)
    where = "" if verbose else f"; logs: {log_path}"
    print(f"Airflow standalone (pid {proc.pid}) starting on {url}{where} — Ctrl-C stops",
          flush=True)
    try:
        if wait_until_up(proc, url):
            print(f"Airflow is up: {url}  (Batchloop view: {url}/batchloop/)", flush=True)
        elif proc.poll() is not None:
            print(f"Airflow standalone exited ({proc.returncode}){where}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        print("\nstopping Airflow …", flush=True)
        return stop(proc)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
