"""``make up``'s launcher (``scripts/up.py``) for real, on a private home and port: quiet on the
terminal (the URL, the stream services, then the URL again once the UI answers), standalone's
thousands of lines in ``$AIRFLOW_HOME/standalone.log``, ``[api] base_url`` set to the URL it
serves, one ``mlcore stream serve`` per problem beside it, and Ctrl-C (SIGINT) stops every process
it started (the stream services cleanly: each prints its counts on the way out). Also
``make -s env``: the environment the RUNBOOK's commands need, usable from a bare shell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from airflow_stack import BIN, free_port, migrate, standalone_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.live
def test_up_is_quiet_says_when_the_ui_answers_and_stops_on_ctrl_c(tmp_path, claim_redis_db):
    port = free_port()
    client, db = claim_redis_db()
    env = standalone_env(tmp_path, port, {
        "MLCORE_HOME": str(tmp_path / "mlcore"),
        "MLCORE_STREAM_URL": f"redis://127.0.0.1:6379/{db}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),  # nothing to parse
        "AIRFLOW__API__BASE_URL": None, "BATCHLOOP_UP_VERBOSE": None,
        "BATCHLOOP_UP_STREAM": None})
    (tmp_path / "dags").mkdir()
    migrate(env)
    subprocess.run([str(BIN / "mlcore"), "init"], env=env, check=True, capture_output=True,
                   timeout=300)  # what `make up` runs first
    problems = sorted(yaml.safe_load(f.read_text())["name"]
                      for f in (ROOT / "problems").glob("*.yaml"))
    try:
        _up_and_stop(tmp_path, env, port, problems)
    finally:
        client.flushdb()


def _up_and_stop(tmp_path, env, port, problems):
    up = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "up.py")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        first = up.stdout.readline()
        assert first.startswith("Airflow standalone (pid ") and url in first
        assert f"logs: {tmp_path / 'standalone.log'}" in first
        streams = up.stdout.readline()
        assert streams.startswith(f"stream services: {', '.join(problems)} (logs: "), streams
        ready = up.stdout.readline()  # blocks until the UI answers (or standalone exits)
        assert ready.strip() == f"Airflow is up: {url}  (Batchloop view: {url}/batchloop/)"
        log = (tmp_path / "standalone.log").read_text()
        assert len(log.splitlines()) > 20 and "api-server" in log  # its output went there
        assert f"base_url={url}" in log or url in log
    finally:
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends to the launcher
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    rest = up.stdout.read()
    assert "stopping Airflow" in rest and code is not None
    assert "still running" not in rest and "exited (" not in rest, rest
    for problem in problems:  # each started, told this api-server, and stopped cleanly
        log = (tmp_path / f"stream-{problem}.log").read_text()
        assert f"stream service for {problem}" in log, log[-2000:]
        assert log.rstrip().splitlines()[-1].startswith('{"read": '), log[-2000:]
    deadline = time.monotonic() + 30
    while _running_under(tmp_path):
        assert time.monotonic() < deadline, "processes of the stack are still running"
        time.sleep(1)


def _running_under(home: Path) -> list[int]:
    """PIDs whose environment points at this test's AIRFLOW_HOME."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"AIRFLOW_HOME={home}\0".encode() in environ:
            found.append(int(entry.name))
    return found


def test_make_env_gives_a_bare_shell_the_projects_mlcore_and_airflow(tmp_path):
    script = (f'eval "$(make -s -C {ROOT} env)" && command -v mlcore airflow && '
              'echo "home=$AIRFLOW_HOME" && mlcore --help >/dev/null')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"HOME": os.environ.get("HOME", "/root"),
                                            "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[:2] == [str(ROOT / ".venv" / "bin" / "mlcore"),
                         str(ROOT / ".venv" / "bin" / "airflow")]
    assert f"home={ROOT / '.airflow'}" in lines
