"""The CLI's error contract: every failure is one stderr line (cause, batch, next command) and a
documented exit code; ``--debug`` / ``MLCORE_DEBUG=1`` add the traceback; no password shown."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow_stack import free_port  # bound, never listening: a refused connect

from mlcore import cli, cli_commands, errors
from mlcore.config import get_settings

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *argv: str, url: str | None = None, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLCORE_")}
    environ.update(MLCORE_HOME=str(tmp_path / "home"), MLCORE_PROBLEMS_DIR=str(ROOT / "problems"),
                   MLCORE_DB_CONNECT_TIMEOUT="5", **env)
    if url is not None:
        environ["MLCORE_DATABASE_URL"] = url
    return subprocess.run([sys.executable, "-m", "mlcore", *argv], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_unreachable_database_exits_5_naming_the_host_without_the_password(tmp_path):
    port = free_port()
    res = run(tmp_path, "batches", "--problem", "census_employment",
              url=f"postgresql://x:s3cret@127.0.0.1:{port}/x")
    assert res.returncode == errors.EXIT_UNAVAILABLE
    line = one_line(res.stderr)
    assert "127.0.0.1" in line and "s3cret" not in line and "mlcore batches" in line


def test_uninitialised_sqlite_home_exits_6_pointing_at_init(tmp_path):
    res = run(tmp_path, "models", "--problem", "census_employment")
    assert res.returncode == errors.EXIT_NO_SCHEMA
    assert "mlcore init" in one_line(res.stderr)
    (tmp_path / "home").mkdir()  # the folder exists, the tables do not
    res = run(tmp_path, "report", "--problem", "census_employment")
    assert res.returncode == errors.EXIT_NO_SCHEMA
    assert "mlcore init" in one_line(res.stderr)


def test_malformed_database_url_is_bad_input(tmp_path):
    res = run(tmp_path, "batches", "--problem", "census_employment", url="notaurl")
    assert res.returncode == errors.EXIT_BAD_INPUT
    assert "MLCORE_DATABASE_URL" in one_line(res.stderr)


def test_corrupt_sqlite_file_exits_8(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "mlcore.db").write_bytes(os.urandom(8192))
    res = run(tmp_path, "batches", "--problem", "census_employment")
    assert res.returncode == errors.EXIT_DAMAGED
    assert "not a database" in one_line(res.stderr)


@pytest.mark.parametrize("how", ["flag", "flag-after", "env"])
def test_debug_prints_the_traceback_and_keeps_the_code(tmp_path, how):
    argv = ["batches", "--problem", "census_employment"]
    env = {}
    if how == "flag":
        argv = ["--debug", *argv]
    elif how == "flag-after":
        argv = [*argv, "--debug"]
    else:
        env["MLCORE_DEBUG"] = "1"
    res = run(tmp_path, *argv, url="notaurl", **env)
    assert res.returncode == errors.EXIT_BAD_INPUT
    assert "Traceback" in res.stderr and "ArgumentError" in res.stderr
    assert res.stderr.splitlines()[-1].startswith("bad database URL")


def test_usage_errors_are_one_line_exit_2(tmp_path):
    res = run(tmp_path, "batches", "--bogus")
    assert res.returncode == errors.EXIT_BAD_INPUT and "--bogus" in one_line(res.stderr)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCORE_PROBLEMS_DIR", str(ROOT / "problems"))
    monkeypatch.delenv("MLCORE_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLCORE_DEBUG", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def fail_with(monkeypatch, exc: BaseException) -> None:
    def boom(*_args, **_kwargs):
        raise exc

    monkeypatch.setattr(cli_commands, "batches", boom)


@pytest.mark.parametrize("err, label", [(errno.ENOSPC, "disk full"),
                                        (errno.EDQUOT, "disk quota exceeded"),
                                        (errno.EIO, "I/O error"),
                                        (errno.EROFS, "read-only file system")])
def test_storage_errors_exit_7(home, monkeypatch, capsys, err, label):
    fail_with(monkeypatch, OSError(err, os.strerror(err), str(home / "curated" / "x.parquet")))
    assert cli.main(["batches"]) == errors.EXIT_STORAGE
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"{label}:") and "x.parquet" in line and "mlcore batches" in line


def test_damaged_data_exits_8_naming_the_batch_and_repair(home, monkeypatch, capsys):
    class DataDamaged(Exception):  # matched by name: mlcore.data.integrity's class
        __module__ = "mlcore.data.integrity"

    fail_with(monkeypatch, DataDamaged("batch '2015' curated: file part-0.parquet is missing"))
    assert cli.main(["batches"]) == errors.EXIT_DAMAGED
    line = one_line(capsys.readouterr().err)
    assert "batch '2015'" in line and "mlcore repair --check" in line


def test_unreadable_parquet_exits_8(home, monkeypatch, capsys):
    import pyarrow as pa

    fail_with(monkeypatch, pa.ArrowInvalid("Parquet magic bytes not found in footer.\nmore"))
    assert cli.main(["batches"]) == errors.EXIT_DAMAGED
    assert "magic bytes" in one_line(capsys.readouterr().err)


def test_unexpected_errors_are_internal_exit_1(home, monkeypatch, capsys):
    fail_with(monkeypatch, TypeError("unsupported operand\nsecond line"))
    assert cli.main(["batches"]) == errors.EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert line.startswith("internal error: TypeError: unsupported operand") and "--debug" in line


def test_interrupt_exits_130(home, monkeypatch, capsys):
    fail_with(monkeypatch, KeyboardInterrupt())
    assert cli.main(["batches"]) == errors.EXIT_INTERRUPTED
    assert one_line(capsys.readouterr().err) == "interrupted"


def test_passwords_are_redacted():
    assert errors.redact("postgresql+psycopg://u:p@ss/w@h:5432/db") == (
        "postgresql+psycopg://u:***@h:5432/db")
    assert errors.redact("url 'sqlite://a:b@c/d' and x@y") == "url 'sqlite://a:***@c/d' and x@y"
    assert errors.redact("host=h password=hunter2 dbname=x") == "host=h password=*** dbname=x"
