"""``make up``: Airflow standalone (UI, scheduler, dag-processor, triggerer) on 127.0.0.1:8080,
and beside it the online ingestion service of every problem (``mlcore stream serve --problem P``,
``MLCORE_AIRFLOW_URL`` pointing at this api-server, ``MLCORE_STREAM_URL`` as set or its default).
``BATCHLOOP_UP_STREAM=0`` leaves the stream services out.

Quiet by default: standalone's output (thousands of lines) goes to ``$AIRFLOW_HOME/standalone.log``;
the URL is printed at once and again when the UI answers. ``BATCHLOOP_UP_VERBOSE=1`` streams
it to the terminal instead. ``[api] base_url`` defaults to the address the UI answers at, so the
links in alerts (``log_url``, ``runbook``) open from this machine.

Ctrl-C stops it cleanly: standalone runs in its own session and gets one SIGINT (its documented
shutdown path, ~5 s when idle); if tasks are still running after the grace period, the whole
process group is terminated, then killed. A group-wide SIGINT (what a terminal sends) would
leave standalone waiting on orphaned executor workers. Each stream service (its own session too,
output in ``$AIRFLOW_HOME/stream-<problem>.log``) gets SIGTERM at the same time: it acknowledges
the read in hand and exits; a kill after the grace period loses nothing (RUNBOOK.md).
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


def problem_names() -> list[str]:
    """The problem specs in ``MLCORE_PROBLEMS_DIR`` (the CLI's own lookup)."""
    from mlcore.config import get_settings
    from mlcore.problems import load_problems

    return sorted(load_problems(get_settings().problems_dir))


def start_streams(url: str, home: Path, verbose: bool) -> dict[str, subprocess.Popen[bytes]]:
    """``mlcore stream serve --problem P`` for every problem, telling the api-server at ``url``."""
    if os.environ.get("BATCHLOOP_UP_STREAM", "1").strip().lower() in ("0", "false", "no"):
        return {}
    try:
        problems = problem_names()
    except Exception as exc:  # a broken spec must not take Airflow down with it
        print(f"stream services not started: {type(exc).__name__}: {exc}", flush=True)
        return {}
    env = {**os.environ, "MLCORE_AIRFLOW_URL": url}
    procs = {}
    for problem in problems:
        out = None if verbose else (home / f"stream-{problem}.log").open("ab")
        procs[problem] = subprocess.Popen(
            ["mlcore", "stream", "serve", "--problem", problem], env=env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT if out else None)
        if out is not None:
            out.close()  # the child has its own copy
    if procs:
        where = "" if verbose else f" (logs: {home}/stream-<problem>.log)"
        print(f"stream services: {', '.join(procs)}{where}", flush=True)
    return procs


def stop_streams(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every stream service, SIGKILL to one still running after the grace period."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for problem, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"stream service {problem} still running; killing it", flush=True)
            proc.kill()
            proc.wait()


def watch(proc: subprocess.Popen[bytes], streams: dict[str, subprocess.Popen[bytes]]) -> int:
    """Wait for standalone to exit, saying once if a stream service exits before it."""
    told: set[str] = set()
    while proc.poll() is None:
        for problem, child in streams.items():
            if problem not in told and child.poll() is not None:
                told.add(problem)
                print(f"stream service {problem} exited ({child.returncode}); see its log",
                      flush=True)
        time.sleep(1)
    return proc.returncode


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
    home = Path(os.environ.get("AIRFLOW_HOME", ".airflow"))
    log_path = home / "standalone.log"
    out = None if verbose else log_path.open("ab")
    proc = subprocess.Popen(["airflow", "standalone"], start_new_session=True, stdout=out,
                            stderr=subprocess.STDOUT if out else None)
    where = "" if verbose else f"; logs: {log_path}"
    print(f"Airflow standalone (pid {proc.pid}) starting on {url}{where} — Ctrl-C stops",
          flush=True)
    streams: dict[str, subprocess.Popen[bytes]] = {}
    try:
        streams = start_streams(url, home, verbose)
        if wait_until_up(proc, url):
            print(f"Airflow is up: {url}  (Batchloop view: {url}/batchloop/)", flush=True)
        elif proc.poll() is not None:
            print(f"Airflow standalone exited ({proc.returncode}){where}", flush=True)
        return watch(proc, streams)
    except KeyboardInterrupt:
        print("\nstopping Airflow …", flush=True)
        for child in streams.values():  # at once, beside standalone; waited for below
            if child.poll() is None:
                child.terminate()
        return stop(proc)
    finally:
        stop_streams(streams)  # also when standalone exited on its own
        if out is not None:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
