"""A real S3 API server of a test's own: moto's standalone server (``python -m moto.server``,
installed from the lock) as a separate process on a free loopback port, with a bucket.

``s3_server()`` yields an ``S3Server``: ``endpoint``, ``bucket`` and ``env`` (test credentials,
region and ``MLCORE_S3_ENDPOINT_URL``) to put into ``os.environ`` (e.g. ``monkeypatch``) or a
subprocess's environment. The server is stopped (and its process reaped) on exit.

``s3_home(server, monkeypatch, tmp_path)``: the ``Settings`` of a fresh home on it (the tests'
``s3_settings``); ``folder_home(tmp_path)``: a folder home to compare it with.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ACCESS_KEY = "batchloop-test-key"
SECRET_KEY = "batchloop-test-secret-d41d8cd98f00"  # a value tests look for in outputs
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    pid: int
    env: dict[str, str] = field(default_factory=dict)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(endpoint: str, proc: subprocess.Popen[bytes], log: str,
                   timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log) as fh:
                raise RuntimeError(f"moto server exited with {proc.returncode}: {fh.read()}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"moto server at {endpoint} did not answer in {timeout:.0f} s")


def _make_bucket(endpoint: str, bucket: str) -> None:
    """PUT /<bucket> (moto accepts any signature-less request on its own server)."""
    req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise RuntimeError(f"creating bucket {bucket} at {endpoint}: HTTP {resp.status}")


@contextmanager
def s3_server(bucket: str | None = None) -> Iterator[S3Server]:
    """Start moto's S3 server on 127.0.0.1:<free port>, create ``bucket``, yield, stop it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = bucket or f"batchloop-{uuid.uuid4().hex[:8]}"
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
           "MLCORE_S3_ENDPOINT_URL": endpoint}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
        start_new_session=True)
    try:
        _wait_until_up(endpoint, proc, log.name)
        _make_bucket(endpoint, bucket)
        yield S3Server(endpoint, bucket, proc.pid, env)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        os.unlink(log.name)


def s3_home(server: S3Server, monkeypatch: Any, tmp_path: Path, *, database_url: str | None = None,
            feast_local: bool = False, chdir: bool = False) -> Any:
    """``Settings`` over a fresh prefix of ``server``'s bucket, the environment pointed at the
    server (and at nothing else: AWS_ENDPOINT_URL*, AWS_PROFILE, AWS_SESSION_TOKEN removed);
    the store ``database_url``, else a migrated SQLite file under ``tmp_path``. ``feast_local``:
    Feast's embedded state in ``tmp_path/local`` (and MLCORE_HOME set to an unused folder, so
    the process-wide value is restored after the test). ``chdir``: into ``tmp_path``, where a
    stray write to a folder named ``s3:`` would land."""
    from mlcore.config import Settings
    from mlcore.store.session import upgrade

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for var, value in server.env.items():
        monkeypatch.setenv(var, value)
    if feast_local:
        monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "unused"))
    if chdir:
        monkeypatch.chdir(tmp_path)
    if database_url is None:
        database_url = f"sqlite:///{tmp_path / 'mlcore.db'}"
        upgrade(database_url)
    extra = {"local_dir": tmp_path / "local"} if feast_local else {}
    return Settings(home=server.uri(f"home-{uuid.uuid4().hex[:8]}"), database_url=database_url,
                    problems_dir=ROOT / "problems", feature_repo=ROOT / "feature_repo", **extra)


def folder_home(tmp_path: Path, name: str = "folder") -> Any:
    """``Settings`` over a new folder home ``tmp_path/name`` with its migrated SQLite store."""
    from mlcore.config import Settings
    from mlcore.store.session import upgrade

    home = tmp_path / name
    home.mkdir()
    settings = Settings(home=home, problems_dir=ROOT / "problems",
                        feature_repo=ROOT / "feature_repo")
    upgrade(settings.db_url)
    return settings
