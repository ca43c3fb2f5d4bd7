"""One storage layer for ``MLCORE_HOME``: a local folder (the default) or ``s3://bucket/prefix``,
over fsspec (s3fs) and pyarrow. Credentials come only from the environment / the boto chain:
a ``Home`` holds its URI (``repr``: nothing secret), errors name the URI and are scrubbed of
credential values. Endpoint: ``MLCORE_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``; waits bounded by ``MLCORE_S3_CONNECT_TIMEOUT`` / ``_READ_TIMEOUT`` /
``_MAX_ATTEMPTS`` (a dead endpoint fails a call in seconds).

``Home.publish`` is atomic on both: locally a staging dir renamed onto the partition (today's
protocol); on S3 (no rename) the files go under ``<home>/.attempts/<partition's path>/<uuid>/``
and the caller commits that location and the record in the database. Readers follow committed
locations only; nothing is written under the partition's own prefix, so a directory-wide read
(Feast's dask reader also reads ``.`` folders) never meets an uncommitted attempt;
``sweep_attempts`` removes those. s3fs/pyarrow load on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs
    from fsspec import AbstractFileSystem

FileSet = dict[str, dict[str, Any]]  # {relative name: {"rows"?, "bytes", "sha256"}}
ENDPOINT_VARS = ("MLCORE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
ATTEMPTS, CHUNK = ".attempts", 1 << 20
BOUNDS = {"CONNECT_TIMEOUT": 5.0, "READ_TIMEOUT": 60.0, "MAX_ATTEMPTS": 2.0}


class StorageError(OSError):
    """A storage call failed: names the operation and the URI, never a credential."""


def _bound(name: str) -> float:
    """``MLCORE_S3_<name>`` of the environment, else its default in ``BOUNDS``."""
    return float(os.environ.get(f"MLCORE_S3_{name}") or BOUNDS[name])


def endpoint_url() -> str | None:
    """The S3 endpoint of the environment (None: AWS itself)."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _scrub(text: str) -> str:
    """``text`` with every credential value of the environment masked."""
    for value in filter(lambda v: len(v) >= 4, (os.environ.get(v, "") for v in SECRET_VARS)):
        text = text.replace(value, "***")
    return text


def _s3_fs() -> AbstractFileSystem:
    """s3fs with the endpoint and bounds of the environment; a fresh instance (fsspec's cache
    would hand back one built with another environment's credentials)."""
    import s3fs
    from aiobotocore.session import AioSession
    from botocore.handlers import add_expect_header

    session = AioSession()
    # No "Expect: 100-continue" on uploads: aiohttp's read timeout does not fire while it waits
    # for the continue, so a silent endpoint would hang every write.
    session.unregister("before-call.s3", add_expect_header)
    tries = int(_bound("MAX_ATTEMPTS"))
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint_url(), session=session, skip_instance_cache=True,
        use_listings_cache=False, client_kwargs={"region_name": _region()},
        config_kwargs={"connect_timeout": _bound("CONNECT_TIMEOUT"),
                       "read_timeout": _bound("READ_TIMEOUT"),
                       "retries": {"max_attempts": tries, "mode": "standard"}})
    fs.retries = tries  # s3fs's own loop retries on top of botocore's
    return fs


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
                self._fs = _s3_fs()
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
                ep = urlsplit(endpoint_url() or "")
                extra = {"endpoint_override": ep.netloc, "scheme": ep.scheme} if ep.netloc else {}
                self._pafs[native] = pafs.S3FileSystem(
                    region=_region(), allow_bucket_creation=False, request_timeout=_bound(
                        "READ_TIMEOUT"), connect_timeout=_bound("CONNECT_TIMEOUT"),
                    retry_strategy=pafs.AwsStandardS3RetryStrategy(int(_bound("MAX_ATTEMPTS"))),
                    **extra)
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
            clean, ep = _scrub(text), None if self.is_local else endpoint_url()
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

    @contextlib.contextmanager
    def publish(self, partition: str, parquet_only: bool = True) -> Iterator[Attempt]:
        """Yield an ``Attempt`` to write the partition into; on a clean exit its ``record`` is
        set and ``location`` is what to commit. Local: a staging dir renamed onto ``partition``
        (which must not exist: sweep first); S3: ``<home>/.attempts/<partition>/<uuid>/``.
        On an error what the attempt wrote is removed and the error re-raised."""
        part, tag = partition.rstrip("/"), uuid.uuid4().hex
        where = f"{self._attempts_of(part)}/{tag}" if not self.is_local else posixpath.join(
            posixpath.dirname(part), f".staging-{posixpath.basename(part)}-{tag[:8]}")
        attempt = Attempt(self, part, where)
        try:
            if self.is_local:
                with self._errors("creating the staging dir for", part):
                    Path(where).mkdir(parents=True)
            yield attempt
            attempt.record = self.record(where, parquet_only, attempt.known)
            if self.is_local:
                with self._errors("renaming the staging dir onto", part):
                    os.replace(where, part)
            attempt.location = part if self.is_local else where
        except BaseException:
            with contextlib.suppress(Exception):
                self.rm(where, recursive=True)
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
        return gone


@dataclass
class Attempt:
    """One publish attempt of a partition: write files with ``uri``/``open``/``put_file``;
    after ``Home.publish`` exits, ``record`` and ``location`` (what to commit) are set."""

    home: Home
    partition: str
    write_to: str
    location: str = ""
    record: FileSet = field(default_factory=dict)
    known: dict[str, tuple[int, str]] = field(default_factory=dict)

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
