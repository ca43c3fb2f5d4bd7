"""File I/O of batches: raw files read in chunks, curated parquet written on a worker thread
and read back (verified against the manifest), staging dirs for atomic publishes.

A raw file is parquet or CSV; errors reading it name the batch and the file. Curated files are
one directory per published batch (``curated/problem=<p>/batch=<id>``), written to a staging
dir first and renamed into place by the stage that publishes; on object storage the committed
location of an attempt (``mlcore.ingest_publish``), read through verified local copies
(``mlcore.data.objects``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlcore.batches import BatchRejected
from mlcore.data.integrity import curated_files, repair_hint
from mlcore.data.objects import fetch_verified, is_remote
from mlcore.objstore import Attempt
from mlcore.store.models import Batch

CHUNK_ROWS = 250_000

def source_path(source: str) -> Path:
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"source {source!r} is not a readable file")
    return path.resolve()


class RawFile:
    """A raw parquet or CSV file read in chunks, with errors naming the batch and the file."""

    def __init__(self, path: Path, batch_id: str, key: str | None = None) -> None:
        self.path, self.batch_id, self.key = path, batch_id, key
        if path.suffix not in {".parquet", ".pq", ".csv"}:
            raise BatchRejected(f"batch {batch_id!r}: unsupported file type {path.name!r} "
                                "(parquet or csv)")
        with self._errors():
            if self.is_parquet:
                self._pf = pq.ParquetFile(path)
                self.columns = list(self._pf.schema_arrow.names)
                self.rows = int(self._pf.metadata.num_rows)
            else:
                self.columns = list(pd.read_csv(path, nrows=0).columns)
                self.rows = -1  # known after the first pass

    @property
    def is_parquet(self) -> bool:
        return self.path.suffix != ".csv"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError) as exc:
            kind = "parquet" if self.is_parquet else "CSV"
            raise BatchRejected(f"batch {self.batch_id!r}: {self.path} is not a readable {kind} "
                                f"file ({type(exc).__name__}: {exc})") from exc

    @property
    def _csv_types(self) -> dict[str, type] | None:
        """The key column of a CSV is read as text: parsed exactly later, never via float64."""
        return {self.key: str} if self.key is not None and self.key in self.columns else None

    def _frame(self, data: pa.Table | pa.RecordBatch) -> pd.DataFrame:
        """Arrow rows as pandas; an integer key column with nulls as ``Int64``, not float64."""
        frame = data.to_pandas()
        if self.key in frame.columns:
            col = data.column(data.schema.get_field_index(self.key))
            if pa.types.is_integer(col.type) and col.null_count:
                frame[self.key] = col.to_pandas(types_mapper=nullable_int)
        return frame

    def read_columns(self, columns: list[str]) -> pd.DataFrame:
        """Whole-file read of a few columns (the cross-chunk duplicate pass)."""
        with self._errors():
            if self.is_parquet:
                return self._frame(self._pf.read(columns=columns))
            frame = pd.read_csv(self.path, usecols=columns, dtype=self._csv_types)
            self.rows = len(frame)
            return frame

    def chunks(self) -> Iterator[pd.DataFrame]:
        """The rows, ``CHUNK_ROWS`` at a time (parquet: by record batches of row groups)."""
        with self._errors():
            if self.is_parquet:
                for rb in self._pf.iter_batches(batch_size=CHUNK_ROWS):
                    yield self._frame(rb)
            else:
                yield from pd.read_csv(self.path, chunksize=CHUNK_ROWS, dtype=self._csv_types)


def nullable_int(kind: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Arrow integer types as pandas nullable integers (exact, unlike float64 with NaN)."""
    return pd.api.types.pandas_dtype(str(kind).replace("int", "Int").replace("uInt", "UInt")) \
        if pa.types.is_integer(kind) else None


class BackgroundWriter:
    """One parquet file written on a worker thread while the next chunk is validated (pyarrow
    writes without the GIL, so validation and encoding overlap on two cores). At most one chunk
    is in flight, so memory stays ~ two chunks; a write error is raised by the next ``write``
    or on exit, as the same exception. ``path``: a local file, or a binary file object (an
    object-storage upload)."""

    def __init__(self, path: Path | IO[bytes]) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write")
        self._writer: pq.ParquetWriter | None = None
        self._pending: Future[None] | None = None

    def _write(self, table: pa.Table) -> None:
        # no Arrow schema in the file: dictionary-encoded text reads back as plain text
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, store_schema=False)
        self._writer.write_table(table)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def write(self, table: pa.Table) -> None:
        self._wait()
        self._pending = self._pool.submit(self._write, table)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if kind is None:
                self._wait()
            elif self._pending is not None:  # already failing: finish the write, keep that error
                with contextlib.suppress(Exception):
                    self._pending.result()
        finally:
            self._pool.shutdown(wait=True)
            if self._writer is not None:
                self._writer.close()


@contextlib.contextmanager
def curated_sink(staging: Path | Attempt, name: str) -> Iterator[Path | IO[bytes]]:
    """Where a curated file ``name`` is written: into a staging dir (the path), or into an
    object-storage attempt (an upload, hashed on the way out)."""
    if isinstance(staging, Path):
        yield staging / name
        return
    with staging.open(name) as sink:
        yield sink


def staging_dir(final: Path) -> Path:
    """A new, empty staging dir beside ``final`` (renamed onto it when the batch publishes)."""
    path = final.with_name(f".staging-{final.name}-{uuid.uuid4().hex[:8]}")
    path.mkdir(parents=True)
    return path


def clear_staging(final: Path) -> None:
    """Remove what crashed runs left: staging dirs, and an unpublished final dir."""
    if final.parent.is_dir():
        for orphan in final.parent.glob(f".staging-{final.name}-*"):
            shutil.rmtree(orphan, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)


@contextlib.contextmanager
def curated_local(batch: Batch) -> Iterator[tuple[Path, list[Path]]]:
    """A published batch's curated folder and files as local paths, verified against its
    manifest: its own (a folder home), or (object storage) copies of its committed location in
    a temporary folder, removed on exit.

    Raises:
        DataDamaged: a curated file is missing or differs from what was published.
    """
    if not is_remote(batch.curated_uri):
        yield Path(batch.curated_uri or ""), curated_files(batch)
        return
    with tempfile.TemporaryDirectory(prefix="mlcore-curated-") as tmp:
        yield Path(tmp), fetch_verified(
            str(batch.curated_uri), batch.files, Path(tmp),
            f"batch {batch.batch_id!r} of {batch.problem!r}: curated", repair_hint(batch.batch_id))


def read_curated(batch: Batch, columns: list[str] | None = None) -> pd.DataFrame:
    """A published batch's curated rows, its files verified against the manifest first.

    Raises:
        DataDamaged: a curated file is missing or differs from what was published.
    """
    with curated_local(batch) as (folder, files):
        return pd.read_parquet(files[0] if len(files) == 1 else folder, columns=columns)


def parquet_rows(files: list[Path]) -> int:
    """The files' rows, from their footers (no data read)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def curated_pairs(batch: Batch, key: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, event times in ns) of a published batch's curated rows, a record batch at a time
    (its files verified against the manifest first)."""
    with curated_local(batch) as (_, files):
        for f in files:
            for rb in pq.ParquetFile(f).iter_batches(columns=[key, "event_timestamp"],
                                                     batch_size=CHUNK_ROWS):
                k = rb.column(0).to_numpy(zero_copy_only=False)
                t = rb.column(1).cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
                yield k, t.to_numpy(zero_copy_only=False)
