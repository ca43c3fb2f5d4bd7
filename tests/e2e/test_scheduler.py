"""The real scheduler path: `airflow standalone`, a REST trigger, and the Asset hand-off.

`dag.test()` runs one DAG; only the scheduler turns ingest's asset event into an
asset-triggered materialize run. This test starts a private standalone instance (own home,
ports and SQLite DB), so it never touches `make up`'s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from mlcore.store.models import Materialization
from mlcore.store.session import session_scope, upgrade

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(base: str, path: str, body: dict | None = None, method: str = "GET") -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/v2{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _wait(what: str, check, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(2)
    tail = log.read_text()[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("standalone")
    port = _free_port()
    mlcore_home = home / "mlcore"
    env = {**os.environ,
           "AIRFLOW_HOME": str(home), "MLCORE_HOME": str(mlcore_home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__CORE__PARALLELISM": "2",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
           "PYTHONPATH": str(ROOT / "plugins"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    mlcore_home.mkdir()
    upgrade(f"sqlite:///{mlcore_home / 'mlcore.db'}")
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    log = home / "standalone.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("a healthy scheduler and the DAGs",
              lambda: _api(base, "/monitor/health")["scheduler"]["status"] == "healthy"
              and _api(base, "/dags?tags=stage:materialize_features")["total_entries"] == 1,
              240, log)
        yield base, mlcore_home, log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_ingest_event_schedules_materialize_under_the_real_scheduler(server, spec, slices):
    base, mlcore_home, log = server
    p = spec.name
    for stage in ("ingest_batch", "materialize_features"):
        _api(base, f"/dags/{p}__{stage}", {"is_paused": False}, "PATCH")
    run = _api(base, f"/dags/{p}__ingest_batch/dagRuns",
               {"logical_date": None, "conf": {"batch_id": "sched-1",
                                               "source": str(slices[2015])}}, "POST")

    def ingest_done():
        state = _api(base, f"/dags/{p}__ingest_batch/dagRuns/{run['dag_run_id']}")["state"]
        assert state != "failed", "ingest failed"
        return state == "success"

    _wait("the ingest run", ingest_done, 180, log)

    def materialized():
        runs = _api(base, f"/dags/{p}__materialize_features/dagRuns")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return done[0] if done else None

    mat = _wait("an asset-triggered materialize run", materialized, 240, log)
    assert mat["run_type"] == "asset_triggered" and mat["state"] == "success"
    with session_scope(f"sqlite:///{mlcore_home / 'mlcore.db'}") as s:
        rows = s.scalars(select(Materialization.rows).where(
            Materialization.batch_id == "sched-1")).all()
    assert rows == [1500]
