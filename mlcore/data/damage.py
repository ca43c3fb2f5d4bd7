"""What verify-on-read records and raises (``mlcore.data.integrity`` for folders,
``mlcore.data.objects`` for object storage): a file set's record and ``DataDamaged``."""

from __future__ import annotations

from typing import Any

from mlcore.batches import BatchError

# {name relative to its folder: {"rows", "bytes", "sha256"}}
FileSet = dict[str, dict[str, Any]]


class DataDamaged(BatchError):
    """A file differs from its record (missing, truncated, replaced) or cannot be read."""
