"""A real S3 API server of a test's own: moto's standalone server (``python -m moto.server``,
installed from the lock) as a separate process on a free loopback port, with a bucket.

``s3_server()`` yields an ``S3Server``: ``endpoint``, ``bucket`` and ``env`` (test credentials,
region and ``MLCORE_S3_ENDPOINT_URL``) to put into ``os.environ`` (e.g. ``monkeypatch``) or a
subprocess's environment. The server is stopped (and its process reaped) on exit.
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
