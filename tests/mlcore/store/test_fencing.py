"""An orphaned task try never commits (``mlcore.store.fencing``), with the real process tree: a
"supervisor" process forks the task process (as Airflow's task SDK does), the supervisor is
SIGKILLed (its worker was lost, the OOM killer chose it), and the orphan then either reaches a
commit (rolled back, :class:`TryNotCurrent`) or is ended by the watchdog before it gets there.

pytest makes itself a child subreaper, so the orphan is re-parented to it and its exit status
can be read (not lost to a container's init that never reaps)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlcore.policy import list_requests, request_manual
from mlcore.store import fencing
from mlcore.store.fencing import EXIT_ORPHANED, bind_to_parent, ensure_current
from mlcore.store.session import upgrade

PR_SET_CHILD_SUBREAPER = 36
PLUGINS = Path(__file__).resolve().parents[3] / "plugins"

SUPERVISOR = textwrap.dedent("""\
    import os, socket, sys, time
    from pathlib import Path
    work, url, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    mine, theirs = socket.socketpair()  # the supervisor channel, as Airflow's task SDK has
    err_mine, err_theirs = socket.socketpair()  # and the task's stderr goes to the supervisor
    pid = os.fork()
    if pid:  # the supervisor: waits for its task, as Airflow's would, until it is killed
        theirs.close()
        err_theirs.close()
        (work / "task.pid").write_text(str(pid))
        time.sleep(600)
        os._exit(0)
    mine.close()
    err_mine.close()
    os.dup2(err_theirs.fileno(), 2)  # writing there fails once the supervisor is gone
    from functools import partial
    from mlcore.store.fencing import TryNotCurrent, bind_to_parent
    from mlcore.policy import request_manual
    from batchloop_airflow.tasks import peer_open
    what = "census__retrain_model/run/train_contender try 1"
    alive = partial(peer_open, theirs.fileno())
    if mode == "late":  # orphaned while starting up, before it bound: only the channel tells
        (work / "bound").write_text("1")
        while not (work / "go").exists():
            time.sleep(0.05)
        bind_to_parent(what, alive=alive, interval=0.1)
        time.sleep(30)
        os._exit(0)
    bind_to_parent(what, alive=alive, interval=0.1, watchdog=mode == "watchdog")
    request_manual("census", "while supervised", url)  # a commit while supervised: fine
    (work / "bound").write_text("1")
    while not (work / "go").exists():  # "training"
        time.sleep(0.05)
    try:
        request_manual("census", "orphaned", url)  # the commit after the try was lost
        (work / "outcome").write_text("committed")
    except TryNotCurrent as exc:
        (work / "outcome").write_text(f"refused: {exc}")
    os._exit(0)
""")

@pytest.fixture
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) is not available here")
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the supervisor exited ({proc.returncode})"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def _orphan(tmp_path: Path, watchdog: str) -> tuple[int, str]:
    """Start supervisor + task (``watchdog``: off, watchdog, or late: bind only after being
    orphaned), SIGKILL the supervisor, let the task go on; return the task's exit status and
    the database URL."""
    url = f"sqlite:///{tmp_path / 'mlcore.db'}"
    upgrade(url)
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path), url,
                                   watchdog], env={**os.environ, "PYTHONPATH": str(PLUGINS)})
    try:
        _wait_for(tmp_path / "bound", supervisor)
    except BaseException:  # a failed start leaves no process behind
        supervisor.kill()
        supervisor.wait(10)
        if (tmp_path / "task.pid").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int((tmp_path / "task.pid").read_text()), signal.SIGKILL)
        raise
    task = int((tmp_path / "task.pid").read_text())
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(10)
    if watchdog in ("off", "late"):
        (tmp_path / "go").write_text("1")
    deadline = time.monotonic() + 30
    try:
        while True:  # the orphan is ours now (subreaper): reap it
            pid, status = os.waitpid(task, os.WNOHANG)
            if pid:
                task = 0
                return os.waitstatus_to_exitcode(status), url
            assert time.monotonic() < deadline, "the orphaned task never ended"
            time.sleep(0.05)
    finally:
        if task:  # a failed run leaves no process behind
            os.kill(task, signal.SIGKILL)
            os.waitpid(task, 0)


def test_an_orphaned_try_cannot_commit(tmp_path, subreaper):
    code, url = _orphan(tmp_path, watchdog="off")
    assert code == 0
    outcome = (tmp_path / "outcome").read_text()
    assert outcome.startswith("refused: ") and "supervisor" in outcome and "try 1" in outcome
    assert [r["reason"] for r in list_requests("census", url)] == ["manual: while supervised"]


def test_the_watchdog_ends_an_orphan_within_a_second(tmp_path, subreaper):
    started = time.monotonic()
    code, url = _orphan(tmp_path, watchdog="watchdog")
    assert code == EXIT_ORPHANED
    assert time.monotonic() - started < 30
    assert not (tmp_path / "outcome").exists()  # ended while "training", before its commit
    assert [r["reason"] for r in list_requests("census", url)] == ["manual: while supervised"]


def test_a_supervised_process_commits(tmp_path, monkeypatch):
    monkeypatch.setattr(fencing, "_binding", None)  # pytest's own binding ends with the test
    url = f"sqlite:///{tmp_path / 'mlcore.db'}"
    upgrade(url)
    bind_to_parent("pytest itself", watchdog=False)  # pytest's parent is alive
    ensure_current()
    assert request_manual("census", "fine", url) == 1


def test_a_try_orphaned_before_it_bound_is_found_by_its_closed_channel(tmp_path, subreaper):
    """Killed while the task was still starting up: when it binds, its parent is already the
    adopter (pytest here, init in a container), so the parent check alone would pass; the
    supervisor channel's closed end tells, and the process exits at once."""
    started = time.monotonic()
    code, _ = _orphan(tmp_path, watchdog="late")
    assert code == EXIT_ORPHANED
    assert time.monotonic() - started < 25  # not the 30 s sleep after binding


def test_peer_open_sees_the_other_end_close():
    import socket

    from batchloop_airflow.tasks import peer_open

    a, b = socket.socketpair()
    assert peer_open(a.fileno())
    b.close()
    assert not peer_open(a.fileno())
    a.close()
