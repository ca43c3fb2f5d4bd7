"""A real, private Airflow stack for the benchmarks: ``airflow standalone`` (scheduler,
dag-processor, api-server, triggerer; LocalExecutor) on a temp AIRFLOW_HOME with SQLite
metadata, the repo's dags/ and plugins/, and the settings the Makefile exports (``make up``).

Only what the product ships is set, plus what a private instance needs (own home, ports, mlcore
home). ``extra_env`` adds settings being tried (reported by the caller). Stopping: one SIGINT
to standalone (its shutdown path), then SIGTERM/SIGKILL to the whole process group.
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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import ROOT, code, log, utc_now  # noqa: E402,F401

BIN = Path(sys.executable).parent
PROBLEM = "census_employment"

# The Makefile's exports for `make up` (AIRFLOW__* and the environment around them).
MAKEFILE_ENV = {
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    "AIRFLOW__API__HOST": "127.0.0.1",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__CORE__EXECUTOR": "batchloop_airflow.executor.PreloadingLocalExecutor",
    "BATCHLOOP_START_PAUSED": "true",  # the benchmark unpauses the DAGs it measures
    "PYTHONPATH": str(ROOT / "plugins"),
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(value: str | None) -> float | None:
    """An Airflow SQLite timestamp (UTC, ``2026-11-22 02:40:01.123456``) as epoch seconds."""
    if not value:
        return None
    from datetime import UTC

    text = value.replace("T", " ").split("+")[0]
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Stack:
    """``with Stack(home, mlcore_home) as s:`` a healthy standalone whose DAGs are parsed."""

    def __init__(self, home: Path, mlcore_home: Path, extra_env: dict[str, str] | None = None,
                 dag_ids: tuple[str, ...] = ()) -> None:
        self.home, self.mlcore_home = home, mlcore_home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db_path = home / "airflow.db"
        self.log_path = home / "standalone.log"
        self.dag_ids = dag_ids
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCORE_"))},
            **MAKEFILE_ENV,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "MLCORE_HOME": str(mlcore_home),
            "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"),
            "MLCORE_FEATURE_REPO": str(ROOT / "feature_repo"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.home)
        try:
            self.wait("a healthy scheduler and the DAGs", self._ready, 300)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        if self.api("/monitor/health")["scheduler"]["status"] != "healthy":
            return False
        if "Worker starting up" not in self.log_path.read_text(errors="replace"):
            return False  # the executor has not started: the scheduler loop has not either
        return all(self.api(f"/dags/{d}")["dag_id"] for d in self.dag_ids)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                self._killpg(proc.pid, signal.SIGKILL)
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            self._killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self._killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (executor workers)

    @staticmethod
    def _killpg(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------------ REST
    def api(self, path: str, body: dict[str, Any] | None = None, method: str = "GET") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}/api/v2{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def wait(self, what: str, check: Callable[[], Any], timeout: float,
             every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"standalone exited ({self.proc.returncode})\n{self.tail()}")
            try:
                if result := check():
                    return result
            except (OSError, ValueError, KeyError, IndexError, urllib.error.URLError):
                pass
            time.sleep(every)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

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

    # ------------------------------------------------------------------ metadata DB
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


# ---------------------------------------------------------------------------- shared helpers

def new_settings(home: Path) -> Any:
    """Settings of an MLCORE home under the temp dir (SQLite store, the repo's Feast repo)."""
    from mlcore.config import Settings

    return Settings(home=home, database_url=None, problems_dir=ROOT / "problems",
                    feature_repo=ROOT / "feature_repo")


def slice_files(rows: int, work: Path, years: tuple[int, ...]) -> dict[int, Path]:
    """Year -> the real yearly file, or its first ``rows`` rows (``rows`` > 0) under ``work``."""
    files = {y: ROOT / "data" / "census_ma_employment" / f"employment_{y}.parquet" for y in years}
    if not rows:
        return files
    import pyarrow.parquet as pq

    (work / "inputs").mkdir(parents=True, exist_ok=True)
    for y, src in files.items():
        table = pq.read_table(src)
        files[y] = work / "inputs" / src.name
        pq.write_table(table.slice(0, min(rows, len(table))), files[y])
    return files


def seed_home(settings: Any, files: dict[int, Path], train: bool) -> dict[str, Any]:
    """``mlcore init``, the files ingested + materialized (batch id = year); with ``train`` a
    logistic-regression champion on them (newest year = holdout), as tests/conftest.py's loop."""
    from mlcore.config import TrainConfig
    from mlcore.datasets import build_dataset
    from mlcore.features import apply_definitions, materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.model.registry import move_alias
    from mlcore.problems import get_problem
    from mlcore.store.session import get_engine, upgrade
    from mlcore.training import train_contender

    spec = get_problem(PROBLEM, settings.problems_dir)
    settings.home.mkdir(parents=True)
    upgrade(settings.db_url)
    apply_definitions(settings)
    rows = {}
    for year, src in files.items():
        rows[year] = ingest_batch(spec, str(src), str(year), settings).published_rows
        materialize_batch(spec, str(year), settings)
    out: dict[str, Any] = {"rows": rows}
    if train:
        ref = train_contender(spec, build_dataset(spec, settings),
                              TrainConfig(algorithm="logistic_regression"), settings)
        move_alias(spec.name, expected=None, new=ref.version, reason="benchmark seed",
                   url=settings.db_url, actor="bench")
        out["champion"] = ref.version
    get_engine(settings.db_url).dispose()
    import gc

    gc.collect()  # Feast stores' SQLite connections go too: the home is copied next
    return out


def _log_events(path: Path) -> list[tuple[float, str]]:
    out = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                out.append((ts(rec["timestamp"].rstrip("Z")) or 0.0, str(rec.get("event", ""))))
            except (ValueError, KeyError):
                continue
    return out


def task_breakdown(stack: Stack, dag_id: str, run_id: str,
                   times: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task that ran: TI start -> callable start ("Pre Execute" done, after the worker's
    DAG parse), callable (-> "Done."), callable end -> TI end; and the wait before it (from the
    end of the latest task that ended before it started, or the run's start)."""
    rows, ended = [], [times["start"]]
    for t in times["tasks"]:
        if not t["try_number"] or t["start"] is None or t["end"] is None:
            continue
        ev = _log_events(stack.task_log(dag_id, run_id, t["task_id"], t["map_index"]))
        pre_end = next((s for s, e in ev if e == "::endgroup::"), None)
        done = next((s for s, e in ev if e.startswith(("Done.", "Condition result"))), None)
        parse_ms = None
        for line in stack.task_log(dag_id, run_id, t["task_id"], t["map_index"]).read_text(
                errors="replace").splitlines() if ev else []:
            if "dag_file_parse_ms" in line:
                parse_ms = json.loads(line).get("dag_file_parse_ms")
                break
        before = max((e for e in ended if e <= t["start"] + 1e-6), default=times["start"])
        rows.append({"task_id": t["task_id"], "map_index": t["map_index"],
                     "wait": t["start"] - before, "duration": t["end"] - t["start"],
                     "startup": (pre_end - t["start"]) if pre_end else None,
                     "callable": (done - pre_end) if pre_end and done else None,
                     "finish": (t["end"] - done) if done else None,
                     "parse_ms": parse_ms})
        ended.append(t["end"])
    return rows


def idle_seconds(times: dict[str, Any]) -> float:
    """Seconds of the run (start -> end) with no task instance running."""
    spans = sorted((t["start"], t["end"]) for t in times["tasks"]
                   if t["try_number"] and t["start"] is not None and t["end"] is not None)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None and cur_s is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None and cur_s is not None:
        busy += cur_e - cur_s
    return (times["end"] - times["start"]) - busy


def machine() -> str:
    import platform

    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text()
                .splitlines() if x.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import version

    return (f"{os.cpu_count()} vCPU {cpu}, {mem:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, apache-airflow {version('apache-airflow')}, "
            f"feast {version('feast')}")
