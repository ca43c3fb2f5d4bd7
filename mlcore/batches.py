"""Batch identity: the ID rule, the errors every entry point maps, and file hashing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BatchError(Exception):
    """Base of batch errors; the message always names the batch."""


class InvalidBatchId(BatchError, ValueError):
    """The batch ID does not match ``BATCH_ID_RE``."""


class BatchConflict(BatchError):
    """The batch ID is already published with different content."""


class BatchRejected(BatchError, ValueError):
    """The batch failed validation as a whole; nothing was published."""


class BatchNotFound(BatchError, LookupError):
    """No published batch with that ID."""


def check_batch_id(batch_id: str) -> str:
    """Return ``batch_id`` if it is safe to build paths and SQL from.

    Raises:
        InvalidBatchId: it is not.
    """
    if not isinstance(batch_id, str) or not BATCH_ID_RE.fullmatch(batch_id):
        raise InvalidBatchId(
            f"invalid batch id {batch_id!r}: must match {BATCH_ID_RE.pattern} "
            "(letters, digits, '_', '.', '-'; at most 64 characters)"
        )
    if batch_id in {".", ".."} or ".." in batch_id:
        raise InvalidBatchId(f"invalid batch id {batch_id!r}: '..' is not allowed")
    return batch_id


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
