"""One storage layer for ``MLCORE_HOME``: a local folder (the default) or ``s3://bucket/prefix``,
over fsspec (s3fs) and pyarrow. Credentials come only from the environment / the boto chain:
a ``Home`` holds its URI (``repr``: nothing secret), errors name the URI and are scrubbed of
credential values. The S3 clients (endpoint, bounded waits) are ``mlcore.s3_client``'s.

``Home.publish`` (or ``Home.attempt`` then ``Attempt.finish``) is atomic on both: locally a
staging dir renamed onto the partition (today's protocol); on S3 (no rename) the files go under
``<home>/.attempts/<partition's path>/<uuid>/`` and the caller commits that location and the
record in the database (``mlcore.ingest_publish``: with the batch's manifest). Readers follow
committed locations only; nothing is written under the partition's own prefix, so a
directory-wide read (Feast's dask reader also reads ``.`` folders) never meets an uncommitted
attempt; ``sweep_attempts`` removes those. s3fs/pyarrow load on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from mlcore.s3_client import endpoint_url, pyarrow_s3, s3_filesystem, scrub

if TYPE_CHECKING:
    import pyarrow.fs
    from fsspec import AbstractFileSystem

FileSet = dict[str, dict[str, Any]]  # {relative name: {"rows"?, "bytes", "sha256"}}
ATTEMPTS, CHUNK = ".attempts", 1 << 20
log = logging.getLogger(__name__)


class StorageError(OSError):
    """A storage call failed: names the operation and the URI, never a credential."""


class Home:
    """Where Batchloop keeps its files: a local folder or ``s3://bucket/prefix``. Methods take
    what ``uri`` returns (absolute paths or ``s3://`` URIs), as the database stores them."""

    def __init__(self, scheme: str, root: str) -> None:
        self.scheme, self.root = scheme, root.rstrip("/") or "/"
        self.is_local = scheme == "file"
        self._fs: AbstractFileSystem | None = None
        self._pafs: dict[bool, pyarrow.fs.FileSystem] = {}

    @classmethod
    def of(cls, where: str | Path) -> Home:
        """The home at ``where``: a folder (made absolute) or ``s3://bucket[/prefix]``; a
        ``Path`` of an S3 URI (``Path("s3://b/p")`` is ``s3:/b/p``) is taken as that URI.
        Raises ValueError: another scheme, no bucket, or credentials written into the URI."""
        text = str(where)
        if text.startswith("s3:/") and not text.startswith("s3://"):
            text = "s3://" + text[len("s3:/"):]
        parts = urlsplit(text if "://" in text else "")
        if parts.scheme in {"", "file"}:
            return cls("file", Path(parts.path or text).expanduser().absolute().as_posix())
        if parts.scheme not in {"s3", "s3a"}:
            raise ValueError(f"MLCORE_HOME: unsupported scheme {parts.scheme!r} (a folder or "
                             "s3://bucket/prefix)")
        if "@" in parts.netloc:
            raise ValueError("MLCORE_HOME: credentials in the URI are refused (take them from "
                             "the environment or an Airflow Connection)")
        if not parts.netloc:
            raise ValueError(f"MLCORE_HOME {text!r}: no bucket")
        return cls("s3", f"{parts.netloc}{parts.path}".rstrip("/"))

    def __repr__(self) -> str:
        where = "" if self.is_local else f", endpoint={endpoint_url() or 'aws'!r}"
        return f"Home({self.uri()!r}{where})"

    def uri(self, *parts: str) -> str:
        """The home's URI, or of ``parts`` under it (``home.uri("curated", "problem=p")``)."""
        return self._uri(posixpath.join(self.root, *parts) if parts else self.root)

    def path(self, uri: str) -> str:
        """``uri`` as the path the fsspec and pyarrow filesystems take (no scheme)."""
        if self.is_local:
            return uri.removeprefix("file://")
        for scheme in ("s3://", "s3a://"):
            if uri.startswith(scheme):
                return uri[len(scheme):]
        raise ValueError(f"{uri!r} is not an s3:// URI of {self!r}")

    def _uri(self, path: str) -> str:
        return path if self.is_local else f"s3://{path}"

    @property
    def filesystem(self) -> AbstractFileSystem:
        """The fsspec filesystem (built once per ``Home``; bounded timeouts and tries)."""
        if self._fs is None:
            if self.is_local:
                import fsspec

                self._fs = fsspec.filesystem("file")
            else:
                self._fs = s3_filesystem()
        return self._fs

    def pyarrow_filesystem(self, native: bool = True) -> pyarrow.fs.FileSystem:
        """A pyarrow filesystem of the same store (paths: ``path(uri)``): pyarrow's S3 client
        with the same endpoint and bounds, or (``native=False``) the fsspec one wrapped."""
        if native not in self._pafs:
            import pyarrow.fs as pafs

            if self.is_local:
                self._pafs[native] = pafs.LocalFileSystem()
            elif not native:
                self._pafs[native] = pafs.PyFileSystem(pafs.FSSpecHandler(self.filesystem))
            else:
                self._pafs[native] = pyarrow_s3()
        return self._pafs[native]

    @contextlib.contextmanager
    def _errors(self, what: str, uri: str) -> Iterator[None]:
        """Re-raise a failure as ``StorageError`` (``FileNotFoundError`` kept) naming ``uri``."""
        try:
            yield
        except (FileNotFoundError, StorageError):
            raise
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            clean, ep = scrub(text), None if self.is_local else endpoint_url()
            where = f" at endpoint {ep}" if ep else ""
            err = StorageError(getattr(exc, "errno", None), f"{what} {uri} failed{where} ({clean})")
            raise err from (exc if clean == text else None)

    def open(self, uri: str, mode: str = "rb", digest: Any = None) -> IO[Any]:
        """A file object (local parents made when writing); ``digest``: a hashlib object fed
        every byte written."""
        with self._errors(f"opening ({mode})", uri):
            if self.is_local and ("w" in mode or "a" in mode):
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
            try:
                raw = self.filesystem.open(self.path(uri), mode)
            except FileNotFoundError:
                raise FileNotFoundError(f"{uri} does not exist") from None
        return cast(IO[Any], _Guarded(self, uri, raw, mode, digest))

    def exists(self, uri: str) -> bool:
        with self._errors("looking up", uri):
            return bool(self.filesystem.exists(self.path(uri)))

    def ls(self, uri: str) -> list[str]:
        """The URIs right under ``uri`` (files and folders), sorted; [] when it does not exist."""
        with self._errors("listing", uri):
            try:
                names = self.filesystem.ls(self.path(uri), detail=False)
            except FileNotFoundError:
                return []
        return sorted(self._uri(n.rstrip("/")) for n in names
                      if n.rstrip("/") != self.path(uri).rstrip("/"))

    def find(self, uri: str) -> list[str]:
        """Every file under ``uri`` (recursive), as URIs, sorted."""
        with self._errors("listing", uri):
            return sorted(self._uri(n) for n in self.filesystem.find(self.path(uri)))

    def size(self, uri: str) -> int:
        with self._errors("sizing", uri):
            return int(self.filesystem.size(self.path(uri)))

    def rm(self, uri: str, recursive: bool = False) -> None:
        """Remove a file (or a folder with ``recursive``); a missing one is no error."""
        with self._errors("removing", uri):
            if self.is_local:
                p = Path(uri)
                if not p.is_dir():
                    p.unlink(missing_ok=True)
                else:
                    shutil.rmtree(p) if recursive else p.rmdir()
            elif self.filesystem.exists(self.path(uri)):
                self.filesystem.rm(self.path(uri), recursive=recursive)

    def put_file(self, local: str | Path, uri: str) -> None:
        """Copy a local file to ``uri``."""
        with self._errors(f"uploading {local} to", uri):
            if self.is_local:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, uri)
            else:
                self.filesystem.put_file(str(local), self.path(uri))

    def get_file(self, uri: str, local: str | Path) -> None:
        """Copy ``uri`` to a local file."""
        with self._errors("downloading", uri):
            Path(local).parent.mkdir(parents=True, exist_ok=True)
            self.filesystem.get_file(self.path(uri), str(local))

    def sha256(self, uri: str) -> str:
        """SHA-256 of the file's bytes, streamed."""
        with self.open(uri, "rb") as fh:
            return _digest(fh)

    def parquet_rows(self, uri: str) -> int:
        """Rows of a parquet file, from its footer."""
        from pyarrow.parquet import read_metadata

        with self._errors("reading the parquet footer of", uri):
            return int(read_metadata(self.path(uri), filesystem=self.pyarrow_filesystem()).num_rows)

    def record(self, root: str, parquet_only: bool = True,
               known: dict[str, tuple[int, str]] | None = None) -> FileSet:
        """The files under ``root`` as ``mlcore.data.integrity`` records them: relative name ->
        rows (parquet), bytes, sha256; names with a ``.``/``_``-prefixed part are skipped (as
        pyarrow skips them). ``known``: (bytes, sha256) already computed per relative name."""
        out: FileSet = {}
        base = root.rstrip("/")
        for f in self.find(base):
            name = f[len(base) + 1:]
            if any(part.startswith((".", "_")) for part in name.split("/")):
                continue
            if parquet_only and not name.endswith(".parquet"):
                continue
            size, sha = (known or {}).get(name) or (self.size(f), self.sha256(f))
            rec: dict[str, Any] = {"rows": self.parquet_rows(f)} if name.endswith(".parquet") \
                else {}
            out[name] = {**rec, "bytes": size, "sha256": sha}
        return out

    def attempt(self, partition: str, tag: str | None = None) -> Attempt:
        """A new publish attempt of ``partition`` to write into (local: a staging dir made
        beside it; S3: ``<home>/.attempts/<partition>/<tag>/``). ``tag`` (default a new UUID)
        pairs the attempts of one publish (e.g. a batch's curated files and raw copy)."""
        part, tag = partition.rstrip("/"), tag or uuid.uuid4().hex
        where = f"{self._attempts_of(part)}/{tag}" if not self.is_local else posixpath.join(
            posixpath.dirname(part), f".staging-{posixpath.basename(part)}-{tag[:8]}")
        if self.is_local:
            with self._errors("creating the staging dir for", part):
                Path(where).mkdir(parents=True)
        return Attempt(self, part, where, tag)

    @contextlib.contextmanager
    def publish(self, partition: str, parquet_only: bool = True,
                tag: str | None = None) -> Iterator[Attempt]:
        """``attempt`` as a block: on a clean exit it is finished (``record`` and ``location``,
        what to commit, set; local: renamed onto ``partition``, which must not exist: sweep
        first); on an error what it wrote is removed and the error re-raised."""
        attempt = self.attempt(partition, tag)
        try:
            yield attempt
            attempt.finish(parquet_only)
        except BaseException:
            attempt.discard()
            raise

    def _attempts_of(self, part: str) -> str:
        rel = posixpath.relpath(self.path(part), self.root)
        if rel.startswith(".."):
            raise ValueError(f"{part} is not a partition of {self!r}")
        return self.uri(ATTEMPTS, rel)

    def attempts(self, partition: str) -> list[str]:
        """The attempt locations of ``partition`` (S3: the folders under its ``.attempts``
        path; local: ``.staging-<name>-*`` dirs and the partition dir when it exists)."""
        part = partition.rstrip("/")
        if not self.is_local:
            return self.ls(self._attempts_of(part))
        found = sorted(Path(part).parent.glob(f".staging-{Path(part).name}-*"))
        return [p.as_posix() for p in found] + ([part] if Path(part).exists() else [])

    def sweep_attempts(self, partition: str, keep: Iterable[str | None] = ()) -> list[str]:
        """Remove the attempts of ``partition`` not in ``keep`` (the committed location(s)):
        crash leftovers and superseded attempts. Returns what it removed. Call it holding the
        partition's publish lock: an attempt being written by another writer looks the same."""
        kept = {k.rstrip("/") for k in keep if k}
        gone = [a for a in self.attempts(partition) if a.rstrip("/") not in kept]
        for uri in gone:
            self.rm(uri, recursive=True)
        if not self.is_local:
            self._abort_uploads(self._attempts_of(partition.rstrip("/")), kept)
        return gone

    def _abort_uploads(self, prefix: str, kept: set[str]) -> None:
        """Abort the unfinished multipart uploads under ``prefix`` (a writer killed while
        uploading a large file: no object to list or remove, yet the parts are stored). A
        failure (e.g. no s3:ListBucketMultipartUploads permission) is logged, not raised: a
        lifecycle rule (AbortIncompleteMultipartUpload) does the same job later."""
        bucket, _, key = self.path(prefix).partition("/")
        try:
            with self._errors("aborting the unfinished uploads under", prefix):
                found = self.filesystem.call_s3("list_multipart_uploads", Bucket=bucket,
                                                Prefix=f"{key}/").get("Uploads", [])
                for up in found:
                    if not any(f"s3://{bucket}/{up['Key']}".startswith(f"{k}/") for k in kept):
                        self.filesystem.call_s3("abort_multipart_upload", Bucket=bucket,
                                                Key=up["Key"], UploadId=up["UploadId"])
        except StorageError as exc:
            log.warning("%s", exc)


@dataclass
class Attempt:
    """One publish attempt of a partition: write files with ``uri``/``open``/``put_file``;
    after ``Home.publish`` exits, ``record`` and ``location`` (what to commit) are set."""

    home: Home
    partition: str
    write_to: str
    tag: str = ""
    location: str = ""
    record: FileSet = field(default_factory=dict)
    known: dict[str, tuple[int, str]] = field(default_factory=dict)

    def finish(self, parquet_only: bool = True) -> None:
        """Record what was written (``record``); local: rename the staging dir onto the
        partition. Sets ``location``: what to commit (S3: the attempt's own folder)."""
        home = self.home
        self.record = home.record(self.write_to, parquet_only, self.known)
        if home.is_local:
            with home._errors("renaming the staging dir onto", self.partition):
                os.replace(self.write_to, self.partition)
        self.location = self.partition if home.is_local else self.write_to

    def discard(self) -> None:
        """Remove what the attempt wrote (finished locally: its partition); best effort."""
        with contextlib.suppress(Exception):
            self.home.rm(self.location or self.write_to, recursive=True)

    def uri(self, *parts: str) -> str:
        """Where a file of the attempt goes (for pyarrow: ``home.path(attempt.uri(...))``)."""
        return posixpath.join(self.write_to, *parts)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A binary writer of ``name`` hashing what passes through it (no read-back)."""
        digest = hashlib.sha256()
        with self.home.open(self.uri(name), "wb", digest) as sink:
            yield sink
        self.known[name] = (cast(_Guarded, sink).size, digest.hexdigest())

    def put_file(self, local: str | Path, name: str) -> None:
        """Copy a local file into the attempt (hashed locally, not read back)."""
        with open(local, "rb") as fh:
            sha = _digest(fh)
        self.home.put_file(local, self.uri(name))
        self.known[name] = (os.path.getsize(local), sha)


def _digest(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while block := fh.read(CHUNK):
        digest.update(block)
    return digest.hexdigest()


class _Guarded:
    """A file of the store whose errors (an upload's on ``close`` too) name its URI; when
    writing with a ``digest``, every byte written also goes to it (``size`` counts them)."""

    def __init__(self, home: Home, uri: str, raw: Any, mode: str, digest: Any) -> None:
        self._home, self._uri, self._raw, self._mode = home, uri, raw, mode
        self.digest, self.size = digest, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def read(self, *size: int) -> Any:
        with self._home._errors("reading", self._uri):
            return self._raw.read(*size)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        with self._home._errors("writing", self._uri):
            self._raw.write(view)
        if self.digest is not None:
            self.digest.update(view)
        self.size += len(view)
        return len(view)

    def close(self) -> None:
        with self._home._errors("writing" if "r" not in self._mode else "closing", self._uri):
            self._raw.close()

    def __enter__(self) -> _Guarded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
