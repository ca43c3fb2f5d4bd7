"""A real, private Airflow for the live tests and the benchmarks: ``airflow standalone``
(scheduler, dag-processor, api-server, triggerer) on its own AIRFLOW_HOME and free ports, with
the repo's plugins importable and the venv's ``airflow`` first on PATH; never ``make up``'s.

``standalone_env`` builds its environment, ``Stack`` runs it (start, wait until ready, REST,
the metadata DB, stop), ``launch``/``stop_process`` any other Airflow process (the e2e tests'
api-server). Stopping: one SIGINT (its shutdown path), then SIGTERM/SIGKILL to the whole
process group. Imported by basename: pytest's ``pythonpath`` has ``tests/support``, the
benchmarks put it on ``sys.path`` (``benchmarks/_common.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def standalone_env(home: Path, port: int, settings: Mapping[str, str | None] = {},
                   base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (the process environment by default) plus what a private instance needs: its
    own home with a SQLite metadata DB in it, the API on ``port`` (and as base_url), free
    log-server ports, every user an admin, parallelism 2, the repo's plugins on PYTHONPATH,
    the venv's bin first on PATH. ``settings`` override these; a ``None`` value removes one."""
    env = {**(os.environ if base is None else base),
           "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__CORE__PARALLELISM": "2",
           "PYTHONPATH": str(ROOT / "plugins"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key, value in settings.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def migrate(env: Mapping[str, str]) -> None:
    """``airflow db migrate`` of the metadata DB ``env`` names."""
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)


def launch(args: list[str], env: Mapping[str, str], log: Path,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``airflow <args>`` in a new process group, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN / "airflow"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(proc: subprocess.Popen[bytes], whole_group: bool = False) -> None:
    """SIGINT (to the process, or its whole group), 30 s; then SIGTERM, then SIGKILL to the
    group; then SIGKILL to what is left of the group (executor workers)."""
    if proc.poll() is None:
        if whole_group:
            _killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    _killpg(proc.pid, signal.SIGKILL)


def api(base: str, path: str, body: dict[str, Any] | None = None, method: str = "GET") -> Any:
    """One call of Airflow's REST API (``/api/v2`` + ``path``), JSON in and out."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/v2{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def tail(log: Path, chars: int = 4000) -> str:
    """The end of a log file ("" while there is none)."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path,
             every: float = 1.0, proc: subprocess.Popen[bytes] | None = None) -> Any:
    """``check()``'s first truthy result, polled every ``every`` s (a connection or lookup
    error counts as not yet).

    Raises:
        RuntimeError: ``proc`` exited meanwhile (the log's tail attached).
        TimeoutError: not within ``timeout`` s (the log's tail attached).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"airflow exited ({proc.returncode})\n{tail(log)}")
        try:
            if result := check():
                return result
        except (OSError, ValueError, KeyError, IndexError, urllib.error.URLError):
            pass
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail(log)}")


def ts(value: str | None) -> float | None:
    """An Airflow SQLite timestamp (UTC, ``2026-11-22 02:40:01.123456``) as epoch seconds."""
    if not value:
        return None
    text = value.replace("T", " ").split("+")[0]
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class AirflowRest:
    """The REST calls and waits a live stack's tests use, over ``self.base`` (the api-server)
    and ``self.wait`` (each stack's own: which logs it tails, which processes must live)."""

    base: str

    def wait(self, what: str, check: Callable[[], Any], timeout: float,
             every: float = 0.5) -> Any:
        raise NotImplementedError

    def api(self, path: str, body: dict[str, Any] | None = None, method: str = "GET") -> Any:
        return api(self.base, path, body, method)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api(f"/dags/{dag_id}", {"is_paused": paused}, "PATCH")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.api(f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}, "POST")
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api(f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        return str(self.wait(f"{dag_id} {run_id} to finish", lambda: (
            s if (s := self.run_state(dag_id, run_id)) in ("success", "failed") else None),
            timeout, every=0.25))


class Stack(AirflowRest):
    """A private ``airflow standalone`` (environment: ``standalone_env``):
    ``Stack(home, settings).start()``, then ``wait_ready`` once ``dag_ids`` should be parsed,
    ``stop()`` at the end; or ``with Stack(...) as s:`` for all three (the executor started too).
    """

    def __init__(self, home: Path, settings: Mapping[str, str | None] = {},
                 base_env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 dag_ids: tuple[str, ...] = ()) -> None:
        self.home, self.cwd, self.dag_ids = home, cwd, dag_ids
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = standalone_env(home, self.port, settings, base_env)
        self.db_path = home / "airflow.db"
        self.log_path = home / "standalone.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0
        self._t0 = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Stack:
        """Launch it (standalone migrates an empty metadata DB itself)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        self.proc = launch(["standalone"], self.env, self.log_path, self.cwd)
        return self

    def wait_ready(self, timeout: float = 300, worker: bool = False) -> None:
        """Until the scheduler is healthy and ``dag_ids`` are parsed; with ``worker``, also the
        executor started (its worker logged: the scheduler loop runs)."""
        def ready() -> bool:
            if self.api("/monitor/health")["scheduler"]["status"] != "healthy":
                return False
            if worker and "Worker starting up" not in tail(self.log_path, 10**9):
                return False
            return all(self.api(f"/dags/{d}")["dag_id"] for d in self.dag_ids)
        self.wait("a healthy scheduler and the DAGs", ready, timeout)
        self.start_seconds = time.perf_counter() - self._t0

    def __enter__(self) -> Stack:
        self.start()
        try:
            self.wait_ready(worker=True)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    # ------------------------------------------------------------------ waits, logs
    def wait(self, what: str, check: Callable[[], Any], timeout: float,
             every: float = 0.5) -> Any:
        return wait_for(what, check, timeout, self.log_path, every, self.proc)

    def tail(self) -> str:
        return tail(self.log_path, 3000)

    def wait_idle(self, dag_id: str, timeout: float, first: str | None = None) -> None:
        """Until the DAG has no queued or running run (e.g. a cron tick caught up on unpause);
        with ``first`` (a run type), until a run of that type exists first (60 s at most)."""
        if first:
            try:
                self.wait(f"a {first} run of {dag_id}", lambda: any(
                    r["run_type"] == first for r in self.api(f"/dags/{dag_id}/dagRuns")[
                        "dag_runs"]), 60)
            except TimeoutError:
                pass

        def idle() -> bool:
            runs = self.api(f"/dags/{dag_id}/dagRuns?state=queued&state=running")
            return not runs["dag_runs"]
        self.wait(f"{dag_id} to be idle", idle, timeout)

    # ------------------------------------------------------------------ metadata DB (SQLite)
    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def run_times(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The dag_run's queued/start/end and its task instances (epoch seconds), by start."""
        run = self.query("select queued_at, start_date, end_date, state from dag_run "
                         "where dag_id = ? and run_id = ?", dag_id, run_id)[0]
        tis = self.query("select task_id, map_index, state, start_date, end_date, queued_dttm, "
                         "scheduled_dttm, try_number from task_instance where dag_id = ? and "
                         "run_id = ?", dag_id, run_id)
        tasks = sorted(({"task_id": t["task_id"], "map_index": t["map_index"],
                         "state": t["state"], "try_number": t["try_number"],
                         "scheduled": ts(t["scheduled_dttm"]), "queued": ts(t["queued_dttm"]),
                         "start": ts(t["start_date"]), "end": ts(t["end_date"])} for t in tis),
                       key=lambda t: (t["start"] or 1e18, t["task_id"]))
        return {"queued": ts(run["queued_at"]), "start": ts(run["start_date"]),
                "end": ts(run["end_date"]), "state": run["state"], "tasks": tasks}

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Path:
        """The task's first-attempt log file (JSON lines) under this home's logs/."""
        d = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            d = d / f"map_index={map_index}"
        return d / "attempt=1.log"
