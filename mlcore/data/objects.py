"""Published files on object storage, read the way ``mlcore.data.integrity`` reads a folder
(it routes object-storage locations here): every parquet file under a committed location (a
manifest's ``curated_uri``, a materialization's ``offline_uri``) is checked against its record
-- the names, then per file bytes, footer rows and SHA-256 -- before a stage reads it. The files
are fetched into a local folder while they are hashed (one GET each), so what a stage reads is
exactly what was checked. Only committed locations are ever read: an attempt that was
never committed is in no manifest.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mlcore.data.damage import DataDamaged, FileSet
from mlcore.objstore import CHUNK, Home
from mlcore.s3_client import endpoint_url

log = logging.getLogger(__name__)
_STORES: dict[tuple[str, str | None], Home] = {}
_CACHE: list[Path] = []  # this process's folder of fetched committed locations


def is_remote(uri: str | None) -> bool:
    """Is ``uri`` on object storage (``s3://``), not a local path?"""
    return (uri or "").startswith(("s3://", "s3a://"))


def store_of(uri: str) -> Home:
    """The store holding ``uri``: a ``Home`` at its bucket, one per bucket and endpoint."""
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    key = (bucket, endpoint_url())
    if key not in _STORES:
        _STORES[key] = Home.of(f"s3://{bucket}")
    return _STORES[key]


def _listing(home: Home, root: str) -> dict[str, str]:
    """Relative name -> URI of the parquet files under ``root`` a directory read takes (names
    with a ``.``/``_``-prefixed part skipped, as pyarrow skips them)."""
    base = root.rstrip("/")
    out = {}
    for uri in home.find(base):
        name = uri[len(base) + 1:]
        if name.endswith(".parquet") and not any(p.startswith((".", "_"))
                                                 for p in name.split("/")):
            out[name] = uri
    return out


def _fetch(home: Home, uri: str, local: Path) -> tuple[int, str]:
    """Copy ``uri`` to ``local``, hashing on the way; (bytes, sha256)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with home.open(uri, "rb") as src, open(local, "wb") as dst:
        while block := src.read(CHUNK):
            digest.update(block)
            dst.write(block)
            size += len(block)
    return size, digest.hexdigest()


def fetch_verified(root: str, recorded: FileSet | None, into: Path, what: str,
                   hint: str = "") -> list[Path]:
    """The parquet files under the committed location ``root``, fetched into ``into`` and
    checked against ``recorded`` (``integrity.verified``'s contract, always hashed); local
    paths in the record's order. ``recorded`` None (written before records) is trusted with a
    warning.

    Raises:
        DataDamaged: naming ``what``, the object and what differs, then ``hint``.
    """
    home, tail = store_of(root), f"; {hint}" if hint else ""
    found = _listing(home, root)
    if recorded is None:
        log.warning("%s: %s has no integrity record; unverified", what, root)
    else:
        if missing := sorted(set(recorded) - set(found)):
            raise DataDamaged(f"{what}: file {root.rstrip('/')}/{missing[0]} is missing "
                              f"({len(missing)} of {len(recorded)} recorded files){tail}")
        if extra := sorted(set(found) - set(recorded)):
            raise DataDamaged(f"{what}: unexpected file {found[extra[0]]} (not in the record)"
                              f"{tail}")
    out = []
    for name in sorted(recorded if recorded is not None else found):
        local = into / name
        size, sha = _fetch(home, found[name], local)
        if recorded is not None:
            _check(found[name], local, size, sha, recorded[name], what, tail)
        out.append(local)
    return out


def _check(uri: str, local: Path, size: int, sha: str, rec: dict[str, object], what: str,
           tail: str) -> None:
    if size != rec["bytes"]:
        raise DataDamaged(f"{what}: file {uri} is {size:,} bytes, recorded {rec['bytes']:,} "
                          f"bytes ({rec['rows']:,} rows){tail}")
    try:
        rows = int(pq.ParquetFile(local).metadata.num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise DataDamaged(f"{what}: file {uri} is not readable parquet ({exc}){tail}") from exc
    if rows != rec["rows"]:
        raise DataDamaged(f"{what}: file {uri} has {rows:,} rows, recorded {rec['rows']:,}{tail}")
    if sha != rec["sha256"]:
        raise DataDamaged(f"{what}: file {uri} content differs from its record (sha256 "
                          f"{sha[:12]}…, recorded {str(rec['sha256'])[:12]}…){tail}")


def process_tmp(kind: str) -> Path:
    """A new temporary folder ``mlcore-<kind>-<pid>-*`` of this process; the folders of this
    kind left by processes that no longer run (SIGKILLed: no cleanup ran) are removed first."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"mlcore-{kind}-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"mlcore-{kind}-{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _cache_dir() -> Path:
    if not _CACHE:
        _CACHE.append(process_tmp("fetched"))
        atexit.register(shutil.rmtree, _CACHE[0], True)
    return _CACHE[0]


def fetched_copy(root: str, recorded: FileSet | None, what: str, hint: str = "") -> Path:
    """A local folder holding the files of the committed location ``root``, fetched and
    verified (``fetch_verified``) on the first call in this process; later calls return the same
    folder (keyed by the location and its record) while the location still lists the recorded
    names and sizes (one listing and a HEAD per file: Feast reads the features partitions from
    the bucket itself, so a removed or truncated object must still fail; a same-size replacement
    is only caught by the first fetch of a process). A fetch lands in a sibling folder renamed
    into place, so a failed fetch leaves no half copy. The folder is removed at process exit.

    Raises:
        DataDamaged: naming ``what``, the object and what differs, then ``hint``.
    """
    shas = "".join(f"{n}:{r['sha256']}" for n, r in sorted((recorded or {}).items()))
    folder = _cache_dir() / hashlib.sha256(f"{root}|{shas}".encode()).hexdigest()[:24]
    if folder.is_dir() and _unchanged(root, recorded):
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # gone or changed since: fetched (and checked) anew
    part = folder.with_name(f"{folder.name}.{uuid.uuid4().hex[:8]}")
    try:
        fetch_verified(root, recorded, part, what, hint)
        part.mkdir(parents=True, exist_ok=True)  # an empty location: an empty folder
        try:
            os.replace(part, folder)
        except OSError:
            if not folder.is_dir():  # else another thread fetched it first: keep that copy
                raise
            shutil.rmtree(part, ignore_errors=True)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return folder


def _unchanged(root: str, recorded: FileSet | None) -> bool:
    """Does ``root`` still hold exactly the recorded names, of the recorded sizes?"""
    home = store_of(root)
    found = _listing(home, root)
    if recorded is None:
        return True
    return set(found) == set(recorded) and all(
        home.size(found[name]) == rec["bytes"] for name, rec in recorded.items())
