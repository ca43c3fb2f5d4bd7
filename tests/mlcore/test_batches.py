"""Batch identity: the ID rule, file hashing."""

from __future__ import annotations

import hashlib
import os

import pytest

from mlcore.batches import InvalidBatchId, check_batch_id, sha256_file


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
