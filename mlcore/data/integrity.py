"""Verify on read: every curated and features file is checked against what was recorded when it
was written (rows from the parquet footer, size, SHA-256 of the bytes) before a stage reads it.

A file set is recorded as ``{name relative to its folder: {"rows", "bytes", "sha256"}}`` in the
manifest row that published it (``batches.files``, ``materializations.files``). Names are
relative, so a home copied to another path verifies the same. A check that passed is memoised
per process by (path, size, mtime), so one process hashes a file once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlcore.batches import sha256_file
from mlcore.data.damage import DataDamaged, FileSet
from mlcore.data.objects import fetched_copy
from mlcore.store.models import Materialization
from mlcore.store.session import session_scope

log = logging.getLogger(__name__)
_verified: dict[tuple[str, int, int], str] = {}


def parquet_files(root: Path) -> list[Path]:
    """The parquet files ``pd.read_parquet(root)`` reads, in its order: ``root`` itself when it
    is a file, else the ``*.parquet`` files under it, skipping ``.``/``_``-prefixed names."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.parquet")
                  if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def _rows(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


def fingerprint(root: Path) -> FileSet:
    """The record of the parquet files under ``root`` as they are now (call after writing)."""
    out: FileSet = {}
    for f in parquet_files(root):
        name = f.name if root.is_file() else f.relative_to(root).as_posix()
        out[name] = {"rows": _rows(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)}
        _verified[_memo_key(f)] = out[name]["sha256"]
    return out


def _memo_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _size(n: int) -> str:
    return f"{n:,} bytes"


def verified(root: Path, recorded: FileSet | None, what: str, hint: str = "",
             full: bool = True) -> list[Path]:
    """The files under ``root`` after checking them against ``recorded``; ``full`` hashes them
    (else size and footer rows only: enough for files a stage does not read itself).

    ``recorded`` None (written before records existed) is trusted with a warning.

    Raises:
        DataDamaged: naming ``what``, the file and what differs, then ``hint``.
    """
    files = parquet_files(root) if root.exists() else []
    if recorded is None:
        log.warning("%s: %s has no integrity record (written before records); unverified",
                    what, root)
        return files
    tail = f"; {hint}" if hint else ""
    found = {(f.name if root.is_file() else f.relative_to(root).as_posix()): f for f in files}
    if missing := sorted(set(recorded) - set(found)):
        raise DataDamaged(f"{what}: file {root / missing[0]} is missing "
                          f"({len(missing)} of {len(recorded)} recorded files){tail}")
    if extra := sorted(set(found) - set(recorded)):
        raise DataDamaged(f"{what}: unexpected file {found[extra[0]]} (not in the record){tail}")
    for name, rec in recorded.items():
        _check(found[name], rec, what, tail, full)
    return [found[name] for name in sorted(recorded)]


def _check(path: Path, rec: dict[str, Any], what: str, tail: str, full: bool) -> None:
    key = _memo_key(path)
    if _verified.get(key) == rec["sha256"]:
        return
    if key[1] != rec["bytes"]:
        raise DataDamaged(f"{what}: file {path} is {_size(key[1])}, recorded "
                          f"{_size(rec['bytes'])} ({rec['rows']:,} rows){tail}")
    try:
        rows = _rows(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataDamaged(f"{what}: file {path} is not readable parquet ({exc}){tail}") from exc
    if rows != rec["rows"]:
        raise DataDamaged(f"{what}: file {path} has {rows:,} rows, recorded {rec['rows']:,}"
                          f"{tail}")
    if full:
        sha = sha256_file(path)
        if sha != rec["sha256"]:
            raise DataDamaged(f"{what}: file {path} content differs from its record (sha256 "
                              f"{sha[:12]}…, recorded {rec['sha256'][:12]}…){tail}")
        _verified[key] = sha


def repair_hint(batch_id: str) -> str:
    """The next command for a damaged batch."""
    return f"run `mlcore repair --batch {batch_id}`"


def curated_files(batch: Any, full: bool = True) -> list[Path]:
    """A published batch's curated files (a ``Batch`` row), verified against its manifest.

    An object-storage ``curated_uri`` is fetched (hashed on the way, checked against the
    record: ``mlcore.data.objects.fetch_verified``) into this process's cache folder once per
    committed location, and its local copies are returned (checked again like a folder's)."""
    return _located(batch.curated_uri, batch.files,
                    f"batch {batch.batch_id!r} of {batch.problem!r}: curated",
                    repair_hint(batch.batch_id), full)


def offline_files(problem: str, url: str, batch_ids: list[str] | None = None,
                  full: bool = True) -> list[Path]:
    """The features partitions of ``batch_ids`` (None: every materialized batch of the
    problem), each verified against its materialization record."""
    from sqlalchemy import select


    query = select(Materialization).where(Materialization.problem == problem)
    if batch_ids is not None:
        query = query.where(Materialization.batch_id.in_(batch_ids))
    with session_scope(url) as s:
        rows = list(s.scalars(query.order_by(Materialization.batch_id)))
    return [f for m in rows for f in _located(
        m.offline_uri, m.files, f"batch {m.batch_id!r} of {problem!r}: features",
        repair_hint(m.batch_id), full)]


def _located(uri: str | None, recorded: FileSet | None, what: str, hint: str,
             full: bool) -> list[Path]:
    """``verified`` of a folder, or of the verified local copy of an object-storage location
    (``mlcore.data.objects.fetched_copy``: fetched once per process and record)."""
    if (uri or "").startswith(("s3://", "s3a://")):
        return verified(fetched_copy(str(uri), recorded, what, hint), recorded, what, hint, full)
    return verified(Path(uri or ""), recorded, what, hint, full)
