"""Features: engineer a published batch into the offline store and materialize it online
(the Feast side, and every retrieval path, is ``mlcore.feast``)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import delete

from mlcore.config import Settings
from mlcore.data.integrity import FileSet, curated_files, fingerprint
from mlcore.data.objects import process_tmp
from mlcore.feast import store as feast_store
from mlcore.feast.store import CREATED, ensure_definitions
from mlcore.objstore import Home
from mlcore.problems import ProblemSpec
from mlcore.provenance import failpoint
from mlcore.store.catalog import get_batch
from mlcore.store.models import Batch, Materialization
from mlcore.store.session import session_scope

CHUNK_ROWS = 2_000_000  # rows engineered and written at a time: a materialize holds one chunk
# (500k made the SQLite online write 1.6x slower per row at 10M: 20 key-sorted runs over the
# whole table instead of 5; peak RSS 842 MiB then)


@dataclass(frozen=True)
class MaterializationResult:
    """What ``materialize_batch`` wrote."""

    problem: str
    batch_id: str
    feature_view: str
    offline_uri: str
    rows: int
    window_start: str
    window_end: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def engineer(curated: pd.DataFrame, spec: ProblemSpec) -> pd.DataFrame:
    """The offline-store row of each entity: key, event time and the model's feature columns
    (timestamp parts included) in their curated types, which the Feast view declares:
    numeric Float64, categorical Int64/String/Bool by vocabulary, boolean Bool."""
    return curated[[spec.entity.key, "event_timestamp", *spec.feature_names]].copy()


def _columns(spec: ProblemSpec) -> tuple[list[str], list[str]]:
    """The engineered columns, and the text ones read as the file's own dictionary (no
    per-value decode; written back as plain text)."""
    text = [f.name for f in spec.features if f.kind == "categorical" and f.value_type == "str"]
    return [spec.entity.key, "event_timestamp", *spec.feature_names], text


def _with_created(table: pa.Table, batch: Batch, spec: ProblemSpec) -> pa.Table:
    """With ``corrections: supersede``, plus ``CREATED``: when the batch was published (a
    correction, published later, wins over the row it corrects)."""
    if spec.corrections != "supersede":
        return table
    stamp = pd.Timestamp(batch.published_at or batch.created_at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return table.append_column(CREATED, pa.array(np.full(table.num_rows, stamp.value),
                                                 pa.timestamp("ns", tz="UTC")))


def engineer_table(batch: Batch, spec: ProblemSpec) -> pa.Table:
    """``engineer(read_curated(batch), spec)`` as Arrow, read straight from the curated file:
    text columns stay Arrow strings (no Python object per value until the online write), and
    ``CREATED`` with ``corrections: supersede`` (``_with_created``). The whole batch at once:
    ``engineered_chunks`` is the bounded-memory form."""
    columns, text = _columns(spec)
    files = curated_files(batch)
    table = pq.read_table(files[0] if len(files) == 1 else Path(batch.curated_uri or ""),
                          columns=columns, read_dictionary=text or None)
    return _with_created(table, batch, spec)


def engineered_chunks(batch: Batch, spec: ProblemSpec, rows: int | None = None,
                      files: list[Path] | None = None) -> Iterator[pa.Table]:
    """``engineer_table(batch, spec)`` in pieces of at most ``rows`` (default ``CHUNK_ROWS``)
    rows, in file order: what one piece needs is all that is held (verified curated files,
    read batch by batch; ``files``: the batch's ``curated_files``, already verified)."""
    columns, text = _columns(spec)
    for path in curated_files(batch) if files is None else files:
        source = pq.ParquetFile(path, read_dictionary=text or None)
        for piece in source.iter_batches(batch_size=rows or CHUNK_ROWS, columns=columns):
            yield _with_created(pa.Table.from_batches([piece]), batch, spec)


def write_offline(frame: pd.DataFrame | pa.Table, dest: Path) -> FileSet:
    """Write one batch's partition atomically (staging dir, then rename); its file record.
    (``write_offline_chunks``: the same from pieces, one held at a time.)"""
    staging = _staging(dest)
    if isinstance(frame, pa.Table):  # no Arrow schema stored: dictionaries read back as text
        pq.write_table(frame, staging / "part-0.parquet", store_schema=False)
    else:
        frame.to_parquet(staging / "part-0.parquet", index=False)
    return _put_in_place(staging, dest)


def write_offline_chunks(chunks: Iterable[pa.Table],
                         dest: Path) -> tuple[FileSet, int, tuple[Any, Any]]:
    """``write_offline`` of the pieces' concatenation, one piece in memory at a time: the file
    record, the rows and the (min, max) event time.

    Raises:
        ValueError: no piece (an empty batch: nothing to materialize).
    """
    staging, writer = _staging(dest), None
    rows, low, high = 0, None, None
    try:
        for chunk in chunks:
            if writer is None:
                writer = pq.ParquetWriter(staging / "part-0.parquet", chunk.schema,
                                          store_schema=False)
            writer.write_table(chunk)
            bounds = pc.min_max(chunk.column("event_timestamp"))
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            low = lo if low is None or (lo is not None and lo < low) else low
            high = hi if high is None or (hi is not None and hi > high) else high
            rows += chunk.num_rows
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if writer is None:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"{dest}: the batch has no rows to materialize")
    writer.close()
    return _put_in_place(staging, dest), rows, (low, high)


def write_offline_remote(chunks: Iterable[pa.Table], home: Home,
                         dest: str) -> tuple[FileSet, int, tuple[Any, Any]]:
    """``write_offline_chunks`` to the object-storage partition ``dest``
    (``<home>/features/problem=<p>/batch=<id>/part-0.parquet``): the file record, the rows and
    the (min, max) event time. Objects under ``dest`` not in the new record are removed after.

    Why the final key and not an attempt committed in the database (as ingest does): Feast's
    ``FileSource`` reads the problem's whole prefix, so a partition is only seen where it finally
    lives. What matters is that no object is ever half-visible: the file is written and
    fingerprinted in a local staging folder, uploaded to its final key in one PUT (s3fs uses a
    multipart upload past 50 MiB, which S3 also makes visible only once completed), then the
    ``Materialization`` row records it. A run killed after the upload and before the record
    leaves a complete partition with no record, as a folder-home run killed between its rename
    and its record does; the partition is a function of the committed curated batch, so the
    re-run rewrites the same bytes and records them. A writer killed mid-upload leaves no object.

    Raises:
        ValueError: no piece (an empty batch: nothing to materialize).
    """
    tmp = process_tmp("features")  # a killed run's is removed by the next run's
    try:
        local = tmp / "features" / "problem" / "batch"
        record, rows, bounds = write_offline_chunks(chunks, local)  # staged, fingerprinted
        base = dest.rstrip("/")
        for name in sorted(record):
            home.put_file(local / name, f"{base}/{name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failpoint("features.after_offline_upload")
    stale = [uri for uri in home.find(base) if uri[len(base) + 1:] not in record]
    for uri in stale:
        home.rm(uri)
    return record, rows, bounds


def _staging(dest: Path) -> Path:
    """A new staging dir for ``dest``, outside the problem's folder (``features/.staging/
    problem=<p>/``): Feast's file source reads that whole folder with dask, which does not skip
    dot-named folders, so a crashed run's leftover there broke every later offline read
    (``KeyError: '.staging-batch'``). Leftovers of that older layout are removed here."""
    for legacy in dest.parent.glob(f".staging-{dest.name}-*") if dest.parent.is_dir() else ():
        shutil.rmtree(legacy, ignore_errors=True)
    staging = dest.parent.parent / ".staging" / dest.parent.name / (
        f"{dest.name}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return staging


def _put_in_place(staging: Path, dest: Path) -> FileSet:
    record = fingerprint(staging)
    failpoint("features.after_stage_write")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    return record


def materialize_batch(spec: ProblemSpec, batch_id: str,
                      settings: Settings) -> MaterializationResult:
    """Engineer a published batch into the offline store and materialize it online (idempotent).

    A late or re-run older batch never regresses the online store: the newer event time wins
    (``materialize_online``).
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    # Two passes over the curated file, each holding one chunk: the offline partition, then
    # (definitions applied) the online write. Memory is bounded by CHUNK_ROWS, not the batch.
    files = curated_files(batch)  # verified once for both passes
    if settings.home_is_local:
        dest: Path | str = settings.partition("features", spec.name, batch_id)
        record, rows, (low, high) = write_offline_chunks(
            engineered_chunks(batch, spec, files=files), Path(dest))
    else:
        dest = settings.partition_uri("features", spec.name, batch_id)
        record, rows, (low, high) = write_offline_remote(
            engineered_chunks(batch, spec, files=files), settings.store_home(), dest)
    store = ensure_definitions(spec, settings)
    start = pd.Timestamp(low).to_pydatetime() - timedelta(seconds=1)
    end = pd.Timestamp(high).to_pydatetime() + timedelta(seconds=1)
    materialize_online(spec, settings, store, engineered_chunks(batch, spec, files=files),
                       start, end)
    _record(spec, batch_id, dest, (rows, record), start, end, settings.db_url)
    return MaterializationResult(spec.name, batch_id, spec.feature_view, str(dest), rows,
                                 start.isoformat(), end.isoformat())


def materialize_online(spec: ProblemSpec, settings: Settings, store: Any,
                       frame: pa.Table | Iterable[pa.Table], start: datetime,
                       end: datetime) -> None:
    """Write a batch's engineered frame online, newest by event time (a late or re-run older
    batch, or one older than what the stream service wrote, never regresses it).

    PostgreSQL and Redis take it through ``mlcore.feast.online_write`` (their stock Feast writes
    have no event-time check, or check it read-then-write), and the interval is recorded in
    Feast's registry as ``materialize`` does; mlcore's SQLite store (bulk) and any other store
    go through ``mlcore.feast.store.materialize_online``.
    """
    from mlcore.feast.online_write import has_writer, write_newest  # loads Feast: not at import

    if feast_store.fast_store(store) or not has_writer(store):
        feast_store.materialize_online(spec, settings, store, frame, start, end)
        return
    for chunk in [frame] if isinstance(frame, pa.Table) else frame:
        write_newest(store, spec, chunk)
    store.registry.apply_materialization(store.get_feature_view(spec.feature_view),
                                         store.project, start, end)


def _record(spec: ProblemSpec, batch_id: str, dest: Path | str, written: tuple[int, FileSet],
            start: datetime, end: datetime, url: str) -> None:
    with session_scope(url) as s:
        s.execute(delete(Materialization).where(Materialization.problem == spec.name,
                                                Materialization.batch_id == batch_id))
        s.add(Materialization(problem=spec.name, batch_id=batch_id, feature_view=spec.feature_view,
                              offline_uri=str(dest), rows=written[0], window_start=start,
                              window_end=end, files=written[1]))

