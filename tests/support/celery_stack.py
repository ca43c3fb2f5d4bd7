"""Airflow with the CeleryExecutor as separate processes, for the live tests: scheduler,
dag-processor, api-server and N Celery workers (``airflow celery worker``), a private Redis as
the broker, PostgreSQL as the metadata DB and the Celery result backend. Nothing is shared
between the processes but the servers and what the environment names.

``CeleryStack(home, settings, workers=2)``: ``start()``, ``wait_ready()``, ``kill_worker(i)``
(SIGKILL to every process of the worker's session: the worker, its pool, the supervisor and
the task it runs, as a lost host), ``stop()``. REST calls from ``airflow_stack.AirflowRest``;
waits and logs over every process's log.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from airflow_stack import (
    AirflowRest,
    _killpg,
    free_port,
    launch,
    migrate,
    standalone_env,
    stop_process,
    wait_for,
)
from airflow_stack import tail as tail_of

PAGE = os.sysconf("SC_PAGE_SIZE")


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` the stacks use."""

    group: int
    session: int
    rss_bytes: int


def proc_stat(pid: int | str) -> ProcStat | None:
    """``pid``'s process group, session and resident memory; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return ProcStat(int(fields[2]), int(fields[3]), int(fields[21]) * PAGE)
    except (OSError, IndexError, ValueError):
        return None


def session_pids(session: int) -> list[int]:
    """Every live process of ``session`` (a worker started in a session of its own)."""
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
            and (st := proc_stat(e.name)) is not None and st.session == session]


class CeleryStack(AirflowRest):
    """Scheduler + dag-processor + api-server + ``workers`` Celery workers over ``airflow_url``
    (PostgreSQL) and a private redis-server broker."""

    def __init__(self, home: Path, airflow_url: str, async_url: str,
                 settings: Mapping[str, str | None] = {}, workers: int = 2,
                 dag_ids: tuple[str, ...] = ()) -> None:
        self.home, self.dag_ids, self.workers = home, dag_ids, workers
        self.port, self.broker_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        result_backend = "db+" + airflow_url.replace("postgresql+psycopg2", "postgresql")
        self.env = standalone_env(home / "airflow", self.port, {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_url,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": async_url,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.broker_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            # the same keys in every process, or one's tokens are unreadable by the others
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": "",
            **settings})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: dict[int, subprocess.Popen[bytes]] = {}
        self.broker: subprocess.Popen[bytes] | None = None
        self.logs = home / "logs"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CeleryStack:
        (self.home / "airflow").mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker = subprocess.Popen(
            ["redis-server", "--port", str(self.broker_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], stdout=(self.logs / "redis.log").open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        migrate(self.env)
        for name, args in (("api-server", ["api-server", "--port", str(self.port)]),
                           ("scheduler", ["scheduler"]), ("dag-processor", ["dag-processor"])):
            self.procs[name] = launch(args, self.env, self.logs / f"{name}.log")
        for i in range(self.workers):
            self.start_worker(i)
        return self

    def start_worker(self, i: int) -> None:
        """Worker ``i``: its own empty working folder and log-server port, hostname w<i>."""
        folder = self.home / f"worker{i}"
        folder.mkdir(exist_ok=True)
        env = {**self.env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
        self.procs[f"worker{i}"] = launch(
            ["celery", "worker", "--concurrency", "1", "--celery-hostname", f"w{i}@%h",
             "--without-mingle", "--without-gossip"], env, self.logs / f"worker{i}.log",
            cwd=folder)

    def wait_ready(self, timeout: float = 300) -> None:
        """Until the scheduler is healthy, the DAGs are parsed and every worker is ready."""
        def ready() -> bool:
            if self.api("/monitor/health")["scheduler"]["status"] != "healthy":
                return False
            for i in range(self.workers):
                if "ready." not in tail_of(self.logs / f"worker{i}.log", 10**7):
                    return False
            return all(self.api(f"/dags/{d}")["dag_id"] for d in self.dag_ids)
        self.wait("a healthy scheduler, the DAGs and the Celery workers", ready, timeout)

    def kill_worker(self, i: int) -> None:
        """SIGKILL everything worker ``i`` started, as a lost host: its process group (worker,
        pool, supervisor) and every other process of its session (Airflow's supervisor starts
        the task process in a process group of its own)."""
        proc = self.procs.pop(f"worker{i}")
        self.killed[i] = proc
        _killpg(proc.pid, signal.SIGKILL)
        for pid in session_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)

    def worker_of(self, pid: int) -> int | None:
        """The worker whose session holds ``pid`` (a task process), or None."""
        stat = proc_stat(pid)
        for i in range(self.workers):
            proc = self.procs.get(f"worker{i}")
            if stat is not None and proc is not None and proc.pid == stat.session:
                return i
        return None

    def stop(self) -> None:
        """Stop every process (a worker's whole session too: task processes left behind)."""
        for name in list(self.procs):
            proc = self.procs.pop(name)
            stop_process(proc, whole_group=True)
            for pid in session_pids(proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self.broker is not None:
            _killpg(self.broker.pid, signal.SIGKILL)
            self.broker.wait(10)
            self.broker = None

    def __enter__(self) -> CeleryStack:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST, waits, logs
    def wait(self, what: str, check: Callable[[], Any], timeout: float,
             every: float = 0.5) -> Any:
        """``check()``'s first truthy result; fails at once when a process that should be
        running exited (a killed worker is removed from ``procs``), with every log's tail."""
        def alive_and(check=check) -> Any:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}\n{self.tail()}")
            return check()
        try:
            return wait_for(what, alive_and, timeout, self.logs / "scheduler.log", every)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.tail()}") from None

    def tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{tail_of(log, 2500)}"
                         for log in sorted(self.logs.glob("*.log")))

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Unpause the DAG (its stack starts every DAG paused), then trigger it."""
        self.set_paused(dag_id, False)
        return super().trigger(dag_id, conf)

    def finished(self, dag_id: str, timeout: float, count: int = 1) -> list[dict[str, Any]]:
        """The DAG's runs once ``count`` of them have finished (success or failed)."""
        def done() -> list[dict[str, Any]] | None:
            runs = self.api(f"/dags/{dag_id}/dagRuns")["dag_runs"]
            over = [r for r in runs if r["state"] in ("success", "failed")]
            return over if len(over) >= count else None
        return list(self.wait(f"{count} finished run(s) of {dag_id}", done, timeout))

    def tasks_of(self, i: int) -> int:
        """How many task workloads worker ``i`` received (its log)."""
        return tail_of(self.logs / f"worker{i}.log", 10**8).count("Executing workload")
