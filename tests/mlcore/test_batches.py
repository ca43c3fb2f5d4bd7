"""Batch identity: the ID rule, deterministic IDs per run, file hashing."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta

import pytest

from mlcore.batches import BATCH_ID_RE, InvalidBatchId, check_batch_id, make_batch_id, sha256_file

LOGICAL = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("batch_id", ["2015", "a.b-c_d", "x" * 64, "A", "20240102T030405",
                                      "v1.2", "0-0", "Z_"])
def test_check_batch_id_accepts(batch_id):
    assert check_batch_id(batch_id) == batch_id


@pytest.mark.parametrize("batch_id", ["", "-x", "../x", "a/b", "a b", "x" * 65, "x;drop",
                                      ".hidden", "_x", "..", "a..b", "abc\n", "a\\b", "a:b",
                                      "é", "a'b", "%2e%2e"])
def test_check_batch_id_rejects_naming_the_id(batch_id):
    with pytest.raises(InvalidBatchId) as exc:
        check_batch_id(batch_id)
    assert repr(batch_id) in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_check_batch_id_rejects_non_strings():
    with pytest.raises(InvalidBatchId):
        check_batch_id(2015)  # type: ignore[arg-type]


@pytest.mark.parametrize("logical_date, run_id, override, expected", [
    (LOGICAL, "manual__x", "my-batch", "my-batch"),
    (None, "manual__x", "my-batch", "my-batch"),
    (LOGICAL, "manual__x", None, "20240102T030405"),
    (LOGICAL, "manual__x", "", "20240102T030405"),
    (None, "manual__2024-01-02T03:04:05+00:00", None, "manual__2024-01-02T03_04_05_00_00"),
    (None, "__leading", None, "leading"),
    (None, "...", None, "run"),
    (None, "a/b c", None, "a_b_c"),
], ids=["override-beats-date", "override-beats-run", "date-beats-run", "empty-override-ignored",
        "run-id-sanitized", "leading-separators-stripped", "nothing-left-gives-run",
        "unsafe-characters-replaced"])
def test_make_batch_id_precedence(logical_date, run_id, override, expected):
    assert make_batch_id(logical_date, run_id, override) == expected


def test_make_batch_id_is_deterministic_and_distinguishes_runs():
    assert make_batch_id(LOGICAL, "r1") == make_batch_id(LOGICAL, "r2")
    assert make_batch_id(None, "manual__1") == make_batch_id(None, "manual__1")
    assert make_batch_id(None, "manual__1") != make_batch_id(None, "manual__2")
    assert make_batch_id(LOGICAL, "r") != make_batch_id(LOGICAL + timedelta(seconds=1), "r")


def test_make_batch_id_rejects_an_unsafe_override():
    with pytest.raises(InvalidBatchId, match="../etc"):
        make_batch_id(LOGICAL, "r", "../etc")


def test_make_batch_id_keeps_a_long_run_id_within_64_characters():
    batch_id = make_batch_id(None, "scheduled__" + "9" * 100)
    assert len(batch_id) == 64 and BATCH_ID_RE.fullmatch(batch_id)


def test_make_batch_id_accepts_any_airflow_run_id():
    # Airflow's default allowed_run_id_pattern admits dots, so '..' is a legal run ID.
    batch_id = make_batch_id(None, "manual__retry..2")
    assert check_batch_id(batch_id) == batch_id


@pytest.mark.parametrize("size, chunk", [(0, 1 << 20), (1, 1 << 20), (1000, 7),
                                         ((1 << 20) + 3, 1 << 20)])
def test_sha256_file_matches_hashlib(tmp_path, size, chunk):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=chunk) == hashlib.sha256(data).hexdigest()


def test_the_airflow_param_pattern_is_the_mlcore_rule():
    """The form-level pattern in plugins and the mlcore check must not drift apart."""
    from batchloop_airflow.tasks import BATCH_ID_PATTERN
    from mlcore.batches import BATCH_ID_RE

    assert BATCH_ID_PATTERN == BATCH_ID_RE.pattern
