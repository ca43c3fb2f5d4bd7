"""A retrain request is answered even when the retrain dies without its own callback, under a
private ``airflow standalone`` (own home, ports, SQLite DBs, problems dir):

* a task SIGKILLed on every try (as the OOM killer does; here a failpoint just before the
  model is registered) never runs its failure callback; the DAG-level sweep in the
  dag-processor fails the request with the signal and the run id;
* a run past its ``dagrun_timeout`` (the spec's ``lease_hours``; here 0.04 h, its tasks held
  by an empty pool) is failed by the scheduler, its unfinished tasks skipped, the teardown never
  runs: the sweep fails the request as timed out and releases the lease.

In both cases the next request is a new one. And a try whose supervisor (the executor's worker
process) is SIGKILLed does not live on as an orphan: the task process ends itself within seconds
(``mlcore.store.fencing``, exit 75, read here because pytest is the stack's child subreaper) while
Airflow later declares the try dead and retries it. ``dag.test`` can show none of these (a
SIGKILL would kill pytest; it never checks ``dagrun_timeout``): ``test_retrain_request_failed.py``
covers a task that fails with an error.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from airflow_stack import Stack, api, migrate, wait_for
from sqlalchemy import select

from mlcore.model.registry import list_versions
from mlcore.policy import list_requests, request_manual
from mlcore.store.models import RetrainLease
from mlcore.store.session import session_scope, upgrade

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
LEASE_HOURS = 0.04  # 144 s: the retrain DAG's dagrun_timeout
DAG_ID = "census_employment__retrain_model"
PR_SET_CHILD_SUBREAPER = 36
CONF = {"until_batch": "2016", "algorithm": "logistic_regression", "reason": "test"}


def _problems_dir(base: Path) -> Path:
    """The census spec with a short lease and no cron (unpausing must not start a run)."""
    spec = yaml.safe_load((ROOT / "problems" / "census_employment.yaml").read_text())
    spec["retrain"] = {**spec["retrain"], "lease_hours": LEASE_HOURS, "schedule": None}
    spec.pop("alerts", None)
    folder = base / "problems"
    folder.mkdir()
    (folder / "census_employment.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory, slices):
    from mlcore.config import Settings
    from mlcore.feast.store import apply_definitions
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.problems import get_problem

    home = tmp_path_factory.mktemp("retrain_standalone")
    mlcore_home, problems = home / "mlcore", _problems_dir(home)
    airflow = Stack(home, {
        "MLCORE_HOME": str(mlcore_home), "MLCORE_PROBLEMS_DIR": str(problems),
        "BATCHLOOP_RETRY_DELAY": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "BATCHLOOP_START_PAUSED": "true",  # only the retrain DAG (unpaused below) runs
        # every try of train_contender SIGKILLs itself before registering, as the OOM
        # killer would (a kill from outside raced the task: it failed in CI twice)
        "MLCORE_FAILPOINT": "training.before_register",
        "MLCORE_STALL": "training.started=20",  # time to kill a try's supervisor mid-way
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",  # a lost try, sooner
        "MLCORE_DATABASE_URL": None, "AIRFLOW_CONN_MLCORE_DB": None, "BATCHLOOP_DEADLINES": None},
        dag_ids=(DAG_ID,))
    mlcore_home.mkdir()
    settings = Settings(home=mlcore_home, problems_dir=problems,
                        feature_repo=ROOT / "feature_repo")
    upgrade(settings.db_url)
    spec = get_problem("census_employment", problems)
    apply_definitions(settings)
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
        materialize_batch(spec, str(year), settings)
    migrate(airflow.env)
    reaper = _subreaper(True)  # orphans of the stack become ours: their exit status readable
    airflow.start()
    try:
        airflow.wait_ready(timeout=300)
        api(airflow.base, f"/dags/{DAG_ID}", {"is_paused": False}, "PATCH")
        yield SimpleNamespace(base=airflow.base, log=airflow.log_path, url=settings.db_url)
    finally:
        airflow.stop()
        if reaper:
            _subreaper(False)
            _reap_all()


def _subreaper(on: bool) -> bool:
    """Make pytest the child subreaper of what it starts (or stop being one)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def _reap_all() -> None:
    """Collect every adopted orphan that has exited (no zombies left behind)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _proc_status(pid: int) -> str:
    """State and parent of a process from /proc (for failure messages)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return f"no /proc entry ({exc})"
    return "; ".join(ln for ln in lines if ln.startswith(("State:", "PPid:", "Threads:")))


def _trigger(stack) -> str:
    run = api(stack.base, f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": CONF},
               "POST")
    return str(run["dag_run_id"])


def _ti(stack, run_id: str, task_id: str) -> dict:
    return api(stack.base, f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")


def _finished(stack, run_id: str) -> str:
    def state():
        s = api(stack.base, f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return s if s in ("success", "failed") else None

    return str(wait_for(f"run {run_id} to finish", state, 400, stack.log))


def _answered(stack, request_id: int) -> dict:
    """The request once the sweep (dag-processor, seconds after the run) has failed it."""
    def failed():
        [row] = [r for r in list_requests("census_employment", stack.url) if r["id"] == request_id]
        return row if row["state"] == "failed" else None

    return dict(wait_for(f"request #{request_id} to fail", failed, 120, stack.log))


def _leases(url: str) -> list[str]:
    with session_scope(url) as s:
        return [lease.holder for lease in s.scalars(select(RetrainLease))]


def test_a_retrain_killed_on_every_try_fails_its_request(stack):
    request_id = request_manual("census_employment", "killed", stack.url)
    run_id = _trigger(stack)
    assert _finished(stack, run_id) == "failed"
    ti = _ti(stack, run_id, "train_contender")  # SIGKILLed itself on each try (the failpoint)
    assert (ti["state"], ti["try_number"]) == ("failed", 3)

    row = _answered(stack, request_id)
    assert row["run_id"] == run_id and row["taken_by"] == f"{DAG_ID}/{run_id}"
    assert row["error"].startswith("train_contender: ") and "SIGKILL" in row["error"]
    assert _leases(stack.url) == []
    assert list_versions("census_employment", stack.url) == []  # no try registered anything
    assert request_manual("census_employment", "again", stack.url) != request_id


def test_a_timed_out_retrain_fails_its_request_and_releases_the_lease(stack):
    request_id = request_manual("census_employment", "timed out", stack.url)
    run_id = _trigger(stack)
    wait_for("start_retrain to take the request",
          lambda: _ti(stack, run_id, "start_retrain")["state"] == "success", 240, stack.log)
    pool = "/pools/default_pool?update_mask=slots"
    api(stack.base, pool, {"slots": 0}, "PATCH")  # every later task waits for a slot
    try:
        assert _finished(stack, run_id) == "failed"
        row = _answered(stack, request_id)
    finally:
        api(stack.base, pool, {"slots": 128}, "PATCH")

    assert row["run_id"] == run_id
    assert "timed out" in row["error"] and "dagrun_timeout" in row["error"]
    assert _ti(stack, run_id, "release_retrain")["state"] == "skipped"  # no teardown ran
    assert _leases(stack.url) == []  # the sweep released it
    assert request_manual("census_employment", "after the timeout", stack.url) != request_id


def test_an_orphaned_try_ends_itself_and_is_retried(stack):
    """SIGKILL the supervisor of a running train_contender try (the executor's worker process,
    which forked the task): the task process, now unwatched, exits by itself (fencing exit 75,
    not the failpoint's SIGKILL or the end of its 20 s stall) and registers nothing; the
    scheduler declares the try dead when its heartbeats stop and runs try 2."""
    from mlcore.store.fencing import EXIT_ORPHANED

    request_manual("census_employment", "orphan drill", stack.url)
    run_id = _trigger(stack)
    ti = wait_for("train_contender try 1 running", lambda: (t := _ti(
        stack, run_id, "train_contender"))["state"] == "running" and t["pid"] and t, 300,
        stack.log)
    task = int(ti["pid"])
    time.sleep(6)  # past its start-up, inside the 20 s stall of training.started
    stat = Path(f"/proc/{task}/stat").read_text()
    supervisor = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent pid
    assert "airflow" in Path(f"/proc/{supervisor}/cmdline").read_bytes().decode(errors="replace")
    os.kill(supervisor, signal.SIGKILL)
    killed = time.monotonic()
    while True:  # the orphan is re-parented to pytest (the subreaper) once the kill took
        try:
            pid, status = os.waitpid(task, os.WNOHANG)
        except ChildProcessError:  # the supervisor is not dead yet: still its child
            pid = 0
        if pid:
            break
        assert time.monotonic() - killed < 15, (
            f"the orphaned task process {task} is still alive (pytest {os.getpid()}): "
            + _proc_status(task))
        time.sleep(0.1)
    assert os.waitstatus_to_exitcode(status) == EXIT_ORPHANED
    assert time.monotonic() - killed < 10  # the watchdog, not the end of the 20 s stall
    assert list_versions("census_employment", stack.url) == []
    wait_for("train_contender try 2 (the lost try declared dead)",
          lambda: _ti(stack, run_id, "train_contender")["try_number"] >= 2, 240, stack.log)
