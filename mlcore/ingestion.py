"""Ingest a raw file as a batch: manifest, streamed validation with row-level quarantine,
atomic publish, idempotent re-runs.

Publishing protocol (a crash at any step leaves nothing half-visible; a re-run publishes once):
1. under a per-batch file lock: same ID + same content already published -> no-op;
   different content -> ``BatchConflict``; then under a per-problem lock (one publishing
   ingest per problem): the same file published under another ID -> ``BatchConflict``;
2. manifest row ``staged``; leftovers of crashed runs (staging dirs) are removed;
3. the file is streamed in row-group chunks: validated, curated and written to a staging dir;
   a row whose (key, event time) another published batch holds is quarantined under
   ``duplicate_in_published_batch`` unless the spec declares ``corrections: supersede``;
4. the decision: rejected (recorded with every reason, staging removed) or
5. rename staging -> ``curated/problem=<p>/batch=<id>``, then one transaction marks the manifest
   ``published`` and stores the quarantined rows. Readers only follow published manifests.
Any other error (disk full, I/O) removes the staging dirs and marks the manifest ``failed``
with the cause; a re-run restages from step 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import delete, insert, select, update

from mlcore.batches import BatchConflict, BatchNotFound, BatchRejected, check_batch_id, sha256_file
from mlcore.columns import category_array, factorize, label_key, parse_timestamp, time_part
from mlcore.config import Settings
from mlcore.data.integrity import curated_files, fingerprint
from mlcore.data.validation import (
    PUBLISHED_RULE,
    check_columns,
    describe_feature,
    duplicate_mask,
    entity_keys,
    event_time,
    numeric,
    rejection_reasons,
    row_violations,
)
from mlcore.locks import file_lock
from mlcore.model.targets import ClassesUnknown, TargetCoder, fix_classes, local_coder, target_coder
from mlcore.problems import ProblemSpec
from mlcore.provenance import code_version, failpoint
from mlcore.spec_columns import Feature
from mlcore.store.models import Batch, QuarantinedRow, utcnow
from mlcore.store.session import session_scope

CHUNK_ROWS = 250_000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    """What a published batch is. ``created`` is False for an idempotent re-run."""

    problem: str
    batch_id: str
    source_uri: str
    sha256: str
    row_count: int
    published_rows: int
    quarantine_count: int
    schema_hash: str
    state: str
    curated_uri: str
    created: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for XCom and ``--json``)."""
        return asdict(self)


def _source_path(source: str) -> Path:
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"source {source!r} is not a readable file")
    return path.resolve()


class _Source:
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


ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "str": pa.string(), "bool": pa.bool_()}


def _feature_arrays(raw: pd.Series, feat: Feature) -> dict[str, pa.Array]:
    """A valid input column as its curated column(s): numeric float64 (NaN where a nullable
    value is missing); categorical in its vocabulary's own type and boolean as bool (null where
    missing); a timestamp as UTC timestamp plus one float64 column per declared part."""
    if feat.kind == "numeric":
        return {feat.name: pa.array(numeric(raw).to_numpy(dtype="float64"))}
    if feat.kind == "timestamp":
        stamps = parse_timestamp(raw)
        out = {feat.name: pa.array(stamps, pa.timestamp("ns", tz="UTC"))}
        for part, column in zip(feat.parts or (), feat.model_columns, strict=True):
            out[column] = pa.array(time_part(stamps, part))
        return out
    if feat.kind == "categorical" and feat.value_type == "int":
        return {feat.name: _int_array(raw)}
    vocabulary = feat.values or () if feat.kind == "categorical" else (False, True)
    return {feat.name: category_array(raw, vocabulary, feat.value_type,
                                      ARROW_TYPES[feat.value_type])}


def _int_array(raw: pd.Series) -> pa.Array:
    """A (valid) integer category column as int64, null where missing. Categorical input is
    converted per category, then gathered by its codes (no float64 pass per row)."""
    if isinstance(raw.dtype, pd.CategoricalDtype):
        codes, uniques = factorize(raw)
        num = numeric(pd.Series(uniques)).to_numpy() if len(uniques) else np.empty(0)
        nan = np.append(np.isnan(num), True)[codes]  # code -1 (missing) -> the last entry
        ints = np.append(np.where(np.isnan(num), 0, num).astype("int64"), 0)[codes]
    else:
        num = numeric(raw).to_numpy()
        nan = np.isnan(num)
        ints = np.where(nan, 0, num).astype("int64")
    return pa.array(ints, mask=nan if nan.any() else None)


def curate_table(valid: pd.DataFrame, spec: ProblemSpec, when: pd.Series | None = None,
                 coder: TargetCoder | None = None) -> pa.Table:
    """Typed curated rows as Arrow: key, event_timestamp, inputs in their stored types (with
    timestamp parts), the target encoded by ``coder`` (``mlcore.model.targets``).

    Built column by column from numpy (no pandas frame to consolidate and re-index).
    """
    keys = entity_keys(valid[spec.entity.key], spec)
    key = (pa.array(keys.to_numpy(dtype="int64"), pa.int64()) if spec.entity.dtype == "int64"
           else pa.array(keys.to_numpy(dtype=object).astype(str), pa.string()))
    when = event_time(valid[spec.event_time.column], spec) if when is None else when
    cols: dict[str, pa.Array] = {
        spec.entity.key: key,
        "event_timestamp": pa.array(pd.DatetimeIndex(when).asi8, pa.timestamp("ns", tz="UTC")),
    }
    for feat in spec.features:
        cols.update(_feature_arrays(valid[feat.name], feat))
    if spec.target.name in valid.columns:
        target = valid[spec.target.name]
        codes = (coder or local_coder(spec, target)).encode(target)
        cols[spec.target.name] = pa.array(codes if spec.target.kind == "regression"
                                          else codes.astype("int64"))
    return pa.table(cols)


def curate(valid: pd.DataFrame, spec: ProblemSpec) -> pd.DataFrame:
    """``curate_table`` as a pandas frame (text as plain strings, as the curated file reads)."""
    table = curate_table(valid, spec)
    plain = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                       for f in table.schema])
    return table.cast(plain).to_pandas()


@dataclass
class _Outcome:
    """What streaming the file produced (in the staging dir) and the counts for the decision."""

    rows: int = 0
    published: int = 0
    bad_rows: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    violations: list[pd.DataFrame] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    ts_min: pd.Timestamp | None = None
    ts_max: pd.Timestamp | None = None
    found: dict[str, list[str]] = field(default_factory=dict)  # rule -> a few offending values


EXAMPLES = 3


def _examples(out: _Outcome, chunk: pd.DataFrame, violations: pd.DataFrame, offset: int,
              spec: ProblemSpec) -> None:
    """Keep a few offending values per column rule (what was found, for the rejection)."""
    columns = {*spec.inputs, spec.target.name}
    for rule, rows in violations.groupby("rule")["row_number"]:
        column = next((c for c in columns if str(rule).startswith(f"{c}_")), None)
        if str(rule) == "target_invalid":
            column = spec.target.name
        seen = out.found.setdefault(str(rule), [])
        if column is None or column not in chunk.columns or len(seen) >= EXAMPLES:
            continue
        values = chunk[column].iloc[rows.to_numpy()[:50] - offset]
        for v in dict.fromkeys(repr(x) for x in values.tolist()):
            if len(seen) < EXAMPLES and v not in seen:
                seen.append(v)


def declared_and_found(spec: ProblemSpec, rules: Counter[str], found: dict[str, list[str]],
                       coder: TargetCoder | None) -> list[str]:
    """For each column rule that fired, what the spec declares and a few values found."""
    out = []
    for rule, n in sorted(rules.items()):
        if rule not in found or not found[rule]:
            continue
        column = next((f for f in spec.features if rule.startswith(f"{f.name}_")), None)
        if column is not None:
            declared = describe_feature(column)
        elif rule == PUBLISHED_RULE:
            out.append(f"{rule} ({n} rows): (key, event time) already published in batch "
                       + ", ".join(repr(b) for b in found[rule]))
            continue
        elif rule == "target_invalid":
            declared = f"target {spec.target.kind}: " + (coder.describe() if coder else "")
        else:
            continue
        out.append(f"{rule} ({n} rows): declared {declared}; found e.g. "
                   + ", ".join(found[rule]))
    return out


def _target_coder(src: _Source, spec: ProblemSpec, url: str) -> tuple[TargetCoder | None, bool]:
    """The coder labels are encoded with, and whether its classes were learnt from this file
    (to be fixed when it publishes). None when the file carries no target."""
    if spec.target.name not in src.columns:
        return None, False
    try:
        return target_coder(spec, url), False
    except ClassesUnknown:
        return local_coder(spec, src.read_columns([spec.target.name])[spec.target.name]), True


def _stream(src: _Source, spec: ProblemSpec, staging: Path, now: datetime,
            coder: TargetCoder | None = None, others: list[Batch] | None = None) -> _Outcome:
    """Validate and curate chunk by chunk into ``staging/part-0.parquet``; memory ~ one chunk
    (plus the file's key and event-time columns, for the duplicate checks). ``others``: the
    published batches a row's (key, event time) must not be in (None: no cross-batch check)."""
    key_col, time_col = spec.entity.key, spec.event_time.column
    ids = src.read_columns([key_col, time_col])
    keys, times = entity_keys(ids[key_col], spec), event_time(ids[time_col], spec)
    del ids
    dups = duplicate_mask(keys, times)
    owners = published_owners(spec, keys, times, others) if others else None
    del keys, times
    out = _Outcome()
    with _BackgroundWriter(staging / "part-0.parquet") as writer:
        for chunk in src.chunks():
            if not out.schema:
                out.schema = {str(c): str(t) for c, t in chunk.dtypes.items()}
            n = len(chunk)
            dup, when = dups[out.rows:out.rows + n], event_time(chunk[time_col], spec)
            seen = None if owners is None else _owner_ids(owners[out.rows:out.rows + n],
                                                          others or [], out)
            bad, violations = row_violations(chunk, spec, now, out.rows, dup, when, coder, seen)
            table = curate_table(chunk.loc[~bad], spec, when[~bad], coder)
            _examples(out, chunk, violations, out.rows, spec)
            writer.write(table)
            _tally(out, n, bad, violations, table.column("event_timestamp"))
            failpoint("ingest.mid_write")
    return out


def _owner_ids(owners: np.ndarray, others: list[Batch], out: _Outcome) -> np.ndarray:
    """The batch ID per row (None where no other batch holds its key and event time); the IDs
    found are kept as the rule's examples."""
    ids = np.array([None, *(b.batch_id for b in others)], dtype=object)[owners + 1]
    found = out.found.setdefault(PUBLISHED_RULE, [])
    for i in np.unique(owners[owners >= 0]):
        if others[i].batch_id not in found:
            found.append(others[i].batch_id)
    return ids


def published_owners(spec: ProblemSpec, keys: pd.Series, times: pd.Series,
                     batches: list[Batch]) -> np.ndarray:
    """Per row, the index in ``batches`` of the first published batch whose curated rows hold
    its (entity key, event time); -1 for none (or an invalid key or time).

    Only batches whose event-time range overlaps the rows' are read, and only their key and
    event-time columns, one record batch at a time: memory ~ these rows' codes plus a chunk,
    never all published keys at once. ``keys`` as ``entity_keys`` gives them, ``times`` as
    ``event_time``.
    """
    owner = np.full(len(keys), -1, dtype=np.int32)
    valid = (keys.notna() & times.notna()).to_numpy()
    stamps = pd.DatetimeIndex(times).asi8
    if not valid.any():
        return owner
    lo, hi = stamps[valid].min(), stamps[valid].max()
    near = [(i, b) for i, b in enumerate(batches) if _overlaps(b, lo, hi)]
    if not near:
        return owner
    key_codes, key_index = _codes(_key_values(keys[valid], spec.entity.dtype))
    time_codes, time_index = _codes(stamps[valid])
    pairs = key_codes * len(time_index) + time_codes  # one int64 per distinct (key, time)
    del key_codes, time_codes
    uniq = np.sort(pairs)  # not np.unique: 2.8 s against 0.04 s at 1M pairs (numpy 2.4, here)
    uniq = uniq[np.append(True, uniq[1:] != uniq[:-1])]
    found = np.full(len(uniq), -1, dtype=np.int32)
    for i, batch in near:
        for k, t in _published_pairs(batch, spec.entity.key):
            kc, tc = key_index.get_indexer(k), time_index.get_indexer(t)
            both = (kc >= 0) & (tc >= 0)
            p = kc[both].astype("int64") * len(time_index) + tc[both]
            pos = np.minimum(np.searchsorted(uniq, p), len(uniq) - 1)
            pos = pos[uniq[pos] == p]
            found[pos[found[pos] < 0]] = i
    owner[valid] = found[np.searchsorted(uniq, pairs)]
    return owner


def _codes(values: np.ndarray) -> tuple[np.ndarray, pd.Index]:
    codes, uniques = pd.factorize(values)
    return codes.astype("int64"), pd.Index(uniques)


def _key_values(keys: pd.Series, dtype: str) -> np.ndarray:
    """Keys as the curated file stores them: int64, or text (``curate_table``)."""
    if dtype == "int64":
        return keys.to_numpy(dtype="int64")
    return keys.to_numpy(dtype=object).astype(str).astype(object)


def _overlaps(batch: Batch, lo: int, hi: int) -> bool:
    """Can ``batch`` hold an event time in [lo, hi] (ns)? Unknown ranges: assume so."""
    if batch.event_time_min is None or batch.event_time_max is None:
        return True
    first, last = (pd.Timestamp(t).tz_localize("UTC") if t.tzinfo is None else pd.Timestamp(t)
                   for t in (batch.event_time_min, batch.event_time_max))
    return bool(first.value <= hi and last.value >= lo)


def _published_pairs(batch: Batch, key: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, event times in ns) of a published batch's curated rows, a record batch at a time
    (its files verified against the manifest first)."""
    for f in curated_files(batch):
        for rb in pq.ParquetFile(f).iter_batches(columns=[key, "event_timestamp"],
                                                 batch_size=CHUNK_ROWS):
            k = rb.column(0).to_numpy(zero_copy_only=False)
            t = rb.column(1).cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
            yield k, t.to_numpy(zero_copy_only=False)


def _read_ahead(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``chunks``, the next one read and decoded on a worker thread while this one is used."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read") as pool:
        nxt = pool.submit(next, chunks, None)
        while (chunk := nxt.result()) is not None:
            nxt = pool.submit(next, chunks, None)
            yield chunk


class _BackgroundWriter:
    """One parquet file written on a worker thread while the next chunk is validated (pyarrow
    writes without the GIL, so validation and encoding overlap on two cores). At most one chunk
    is in flight, so memory stays ~ two chunks; a write error is raised by the next ``write``
    or on exit, as the same exception."""

    def __init__(self, path: Path) -> None:
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

    def __enter__(self) -> _BackgroundWriter:
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


def _tally(out: _Outcome, n: int, bad: np.ndarray, violations: pd.DataFrame,
           ts: pa.ChunkedArray) -> None:
    out.rows += n
    out.bad_rows += int(bad.sum())
    out.published += n - int(bad.sum())
    out.rules.update(violations["rule"].tolist())
    if len(violations):
        out.violations.append(violations)
    if len(ts):
        lo, hi = (pd.Timestamp(v.as_py()) for v in pc.min_max(ts).values())
        out.ts_min = min(x for x in (out.ts_min, lo) if x is not None)
        out.ts_max = max(x for x in (out.ts_max, hi) if x is not None)


@contextlib.contextmanager
def batch_lock(settings: Settings, problem: str, batch_id: str) -> Iterator[None]:
    """One writer per batch at a time (two runs of the same batch at once queue up here)."""
    with file_lock(settings.home / "locks" / f"ingest-{problem}-{batch_id}.lock"):
        yield


@contextlib.contextmanager
def problem_lock(settings: Settings, problem: str) -> Iterator[None]:
    """One publishing ingest per problem at a time: the checks against the batches published
    before (same file, same key and event time) must see every one of them."""
    with file_lock(settings.home / "locks" / f"ingest-{problem}.lock"):
        yield


def _others(spec: ProblemSpec, url: str) -> list[Batch] | None:
    """The published batches a new row's (key, event time) must not be in, oldest publish
    first; None when the spec takes such rows as corrections (``corrections: supersede``)."""
    if spec.corrections != "reject":
        return None
    return sorted(published_batches(spec.name, url),
                  key=lambda b: (b.published_at or b.created_at, b.batch_id))


def _clear_staging(final: Path) -> None:
    """Remove what crashed runs left: staging dirs, and an unpublished final dir."""
    if final.parent.is_dir():
        for orphan in final.parent.glob(f".staging-{final.name}-*"):
            shutil.rmtree(orphan, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)


def staging_dir(final: Path) -> Path:
    path = final.with_name(f".staging-{final.name}-{uuid.uuid4().hex[:8]}")
    path.mkdir(parents=True)
    return path


def _existing(problem: str, batch_id: str, sha: str, url: str) -> Manifest | None:
    with session_scope(url) as s:
        row = s.scalar(select(Batch).where(Batch.problem == problem, Batch.batch_id == batch_id))
        if row is None or row.state != "published":
            return None
        if row.sha256 != sha:
            raise BatchConflict(
                f"batch {batch_id!r} of {problem!r} is already published with content "
                f"sha256 {row.sha256[:12]}…; refusing different content {sha[:12]}…")
        return _manifest(row, created=False)


def _same_file(problem: str, batch_id: str, raw: Path, sha: str, url: str) -> None:
    """Refuse a file already published under another batch ID of the problem.

    Raises:
        BatchConflict: naming the published batch.
    """
    with session_scope(url) as s:
        other = s.scalar(select(Batch.batch_id).where(
            Batch.problem == problem, Batch.sha256 == sha, Batch.state == "published",
            Batch.batch_id != batch_id).order_by(Batch.batch_id).limit(1))
    if other is not None:
        why = (f"batch {batch_id!r}: file {raw.name} has the same SHA-256 as published batch "
               f"{other!r} of {problem!r} ({sha[:12]}…); it is already published, nothing to "
               "ingest (a correction is a different file, with corrections: supersede)")
        log.error("%s", why)
        raise BatchConflict(why)


def _manifest(row: Batch, created: bool) -> Manifest:
    return Manifest(row.problem, row.batch_id, row.source_uri, row.sha256, row.row_count,
                    row.row_count - row.quarantine_count, row.quarantine_count, row.schema_hash,
                    row.state, row.curated_uri or "", created)


def _stage(spec: ProblemSpec, batch_id: str, fields: dict[str, Any], url: str) -> None:
    with session_scope(url) as s:
        s.execute(delete(QuarantinedRow).where(QuarantinedRow.problem == spec.name,
                                               QuarantinedRow.batch_id == batch_id))
        s.execute(delete(Batch).where(Batch.problem == spec.name, Batch.batch_id == batch_id))
        s.add(Batch(problem=spec.name, batch_id=batch_id, state="staged", row_count=0,
                    schema={}, schema_hash="", quarantine_count=0,
                    code_version=code_version(), **fields))


def _finish(spec: ProblemSpec, batch_id: str, values: dict[str, Any],
            violations: list[pd.DataFrame], url: str) -> Manifest:
    """Mark the staged manifest published/rejected and store quarantined rows, atomically."""
    with session_scope(url) as s:
        s.execute(update(Batch).where(Batch.problem == spec.name, Batch.batch_id == batch_id)
                  .values(**values))
        for frame in violations:
            s.execute(insert(QuarantinedRow), [
                {"problem": spec.name, "batch_id": batch_id, "row_number": int(r.row_number),
                 "rule": r.rule, "reason": r.reason} for r in frame.itertuples()])
        row = s.scalar(select(Batch).where(Batch.problem == spec.name,
                                           Batch.batch_id == batch_id))
        assert row is not None
        return _manifest(row, created=True)


def ingest_batch(spec: ProblemSpec, source: str, batch_id: str, settings: Settings,
                 now: datetime | None = None) -> Manifest:
    """Validate ``source`` and publish it as ``batch_id``; a same-content re-run is a no-op.

    Raises:
        InvalidBatchId: bad ID. BatchConflict: the ID is published with other content, or
            the same file (SHA-256) is published as another batch of the problem.
        BatchRejected: unreadable file, wrong schema, or too many / critical bad rows (the
            manifest is recorded as ``rejected`` with every reason).
        FileNotFoundError: no such source file.
        BatchStorageError: an I/O error while staging or publishing (disk full...): staging
            removed, the manifest ``failed`` with the cause; free space and re-run.
    """
    check_batch_id(batch_id)
    raw = _source_path(source)
    sha = sha256_file(raw)
    with batch_lock(settings, spec.name, batch_id):
        if (done := _existing(spec.name, batch_id, sha, settings.db_url)) is not None:
            return done
        with problem_lock(settings, spec.name):
            _same_file(spec.name, batch_id, raw, sha, settings.db_url)
            curated = settings.partition("curated", spec.name, batch_id)
            raw_dir = settings.partition("raw", spec.name, batch_id)
            _clear_staging(curated)
            _clear_staging(raw_dir)
            _stage(spec, batch_id, {"source_uri": raw.as_uri(), "sha256": sha}, settings.db_url)
            return _validate_and_publish(spec, batch_id, raw, (curated, raw_dir), settings,
                                         now or datetime.now(UTC))


class BatchStorageError(OSError):
    """Storage failed while a batch was staged (disk full, I/O error): nothing was published,
    the staging dirs are removed and the manifest is ``failed``. Keeps the errno; not a
    ``BatchError`` on purpose: freeing space and retrying helps (Airflow retries it)."""


@dataclass
class _Attempt:
    """What a publish attempt has written so far and is doing (to clean up and to explain)."""

    made: list[Path] = field(default_factory=list)  # staging dirs, then moved final dirs
    step: str = "staging"
    path: Path | None = None
    committing: bool = False  # the publish transaction started: leave the final dirs

    def at(self, step: str, path: Path) -> None:
        self.step, self.path = step, path


def _validate_and_publish(spec: ProblemSpec, batch_id: str, raw: Path,
                          dirs: tuple[Path, Path], settings: Settings,
                          now: datetime) -> Manifest:
    """Validate, stage and publish; on any failure but a rejection: staging removed, manifest
    ``failed`` with the cause, and the error names the batch and the path.

    Raises:
        BatchRejected: see ``ingest_batch``. BatchStorageError: an OSError while staging or
            publishing (errno kept). Anything else: re-raised, with a note naming the batch.
    """
    attempt = _Attempt(path=dirs[0])
    try:
        return _publish(spec, batch_id, raw, dirs, settings, now, attempt)
    except BatchRejected:
        raise  # recorded as rejected, staging removed
    except Exception as exc:  # never BaseException: a kill must stay a crash (failpoints)
        where = str(getattr(exc, "filename", None) or attempt.path)
        cause = f"{type(exc).__name__}: {exc}"
        why = f"batch {batch_id!r}: {attempt.step} {where} failed ({cause}); nothing published"
        log.error("%s", why)
        _abandon(spec, batch_id, attempt, why, settings.db_url)
        if isinstance(exc, OSError):
            raise BatchStorageError(_errno(exc), why) from exc
        exc.add_note(why)
        raise


def _errno(exc: OSError) -> int | None:
    """The errno of an OSError; Arrow's IO errors carry it only in the text."""
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\[errno (\d+)\]", str(exc), flags=re.IGNORECASE)
    return int(found.group(1)) if found else None


def _abandon(spec: ProblemSpec, batch_id: str, attempt: _Attempt, why: str, url: str) -> None:
    """Remove what the failed attempt wrote and mark the manifest ``failed`` (best effort: the
    store may be what failed; a re-run clears leftovers and restages anyway)."""
    for path in attempt.made:  # once committing, the final dirs may be published: kept
        if not attempt.committing or path.name.startswith(".staging-"):
            shutil.rmtree(path, ignore_errors=True)
    try:
        with session_scope(url) as s:
            s.execute(update(Batch).where(Batch.problem == spec.name, Batch.batch_id == batch_id,
                                          Batch.state == "staged")
                      .values(state="failed", reason=why))
    except Exception as exc:  # the store itself may be down: the original error matters more
        log.error("batch %r: could not mark the manifest failed (%s: %s)", batch_id,
                  type(exc).__name__, exc)


def _publish(spec: ProblemSpec, batch_id: str, raw: Path, dirs: tuple[Path, Path],
             settings: Settings, now: datetime, attempt: _Attempt) -> Manifest:
    curated, raw_dir = dirs
    rows = 0
    attempt.at("creating the staging dir for", curated)
    staging = staging_dir(curated)
    attempt.made.append(staging)
    try:
        src = _Source(raw, batch_id, spec.entity.key)
        rows = max(src.rows, 0)
        check_columns(src.columns, spec, batch_id)
        coder, learnt = _target_coder(src, spec, settings.db_url)
        attempt.at("writing the curated rows to", staging / "part-0.parquet")
        out = _stream(src, spec, staging, now, coder, _others(spec, settings.db_url))
    except BatchRejected as exc:
        log.error("%s", exc)
        shutil.rmtree(staging, ignore_errors=True)
        _finish(spec, batch_id, {"state": "rejected", "reason": str(exc), "row_count": rows},
                [], settings.db_url)
        raise
    schema_hash = hashlib.sha256(json.dumps(out.schema).encode()).hexdigest()
    common = {"row_count": out.rows, "schema": out.schema, "schema_hash": schema_hash,
              "quarantine_count": out.bad_rows}
    reasons = rejection_reasons(spec, out.rows, out.bad_rows, out.rules)
    if reasons:
        reasons += declared_and_found(spec, out.rules, out.found, coder)
        shutil.rmtree(staging, ignore_errors=True)
        why = f"batch {batch_id!r}: rejected: {'; '.join(reasons)}"
        log.error(why)
        _finish(spec, batch_id, {**common, "state": "rejected", "reason": why}, out.violations,
                settings.db_url)
        raise BatchRejected(why)
    if learnt and coder is not None and coder.learnable:
        attempt.at("fixing the classes of", staging)
        _fix_classes(spec, batch_id, coder, staging, settings.db_url)
    attempt.at("creating the staging dir for", raw_dir)
    raw_staging = staging_dir(raw_dir)
    attempt.made.append(raw_staging)
    attempt.at("copying the raw file to", raw_staging / raw.name)
    shutil.copy2(raw, raw_staging / raw.name)
    failpoint("ingest.after_stage_write")
    attempt.at("renaming the raw staging dir to", raw_dir)
    os.replace(raw_staging, raw_dir)
    attempt.made.append(raw_dir)
    attempt.at("renaming the curated staging dir to", curated)
    record = fingerprint(staging)  # what readers verify the curated files against
    os.replace(staging, curated)
    attempt.made.append(curated)
    failpoint("ingest.after_rename")
    log.info("batch %r: publishing %d of %d rows; %d quarantined%s", batch_id, out.published,
             out.rows, out.bad_rows, f" ({dict(out.rules)})" if out.rules else "")
    attempt.at("recording the published manifest of", curated)
    attempt.committing = True
    return _finish(spec, batch_id, {
        **common, "state": "published", "curated_uri": str(curated), "published_at": utcnow(),
        "files": record,
        "event_time_min": out.ts_min.to_pydatetime() if out.ts_min is not None else None,
        "event_time_max": out.ts_max.to_pydatetime() if out.ts_max is not None else None,
    }, out.violations, settings.db_url)


def recurate(spec: ProblemSpec, batch: Batch, raw: Path, staging: Path,
             settings: Settings) -> int:
    """Curate a published batch's raw copy into ``staging`` again, as its publish did (the same
    reading of the file, the stored target coder, the publish time as "now"): the repair path.
    Returns the rows it published."""
    when = batch.published_at or batch.created_at
    if when.tzinfo is None:  # SQLite returns the stored UTC time naive
        when = when.replace(tzinfo=UTC)
    src = _Source(raw, batch.batch_id, spec.entity.key)
    coder, _ = _target_coder(src, spec, settings.db_url)
    return _stream(src, spec, staging, when, coder).published


def _fix_classes(spec: ProblemSpec, batch_id: str, coder: TargetCoder, staging: Path,
                 url: str) -> None:
    """Fix the class list this first labelled batch was encoded with.

    Raises:
        BatchRejected: another batch fixed a different list meanwhile (re-run to re-encode).
    """
    stored = fix_classes(spec.name, list(coder.classes or ()), f"batch {batch_id}", url)
    if [label_key(c) for c in stored] != [label_key(c) for c in coder.classes or ()]:
        shutil.rmtree(staging, ignore_errors=True)
        raise BatchRejected(f"batch {batch_id!r}: its labels were encoded with classes "
                            f"{list(coder.classes or ())}, but another batch fixed {stored} "
                            "first; re-run the ingest")


def published_batches(problem: str, url: str) -> list[Batch]:
    """Published batches of a problem, oldest event time first."""
    with session_scope(url) as s:
        rows = s.scalars(select(Batch).where(Batch.problem == problem,
                                             Batch.state == "published")
                         .order_by(Batch.event_time_max, Batch.batch_id))
        return list(rows)


def get_batch(problem: str, batch_id: str, url: str) -> Batch:
    """The published batch ``batch_id``.

    Raises:
        BatchNotFound: it is not published.
    """
    check_batch_id(batch_id)
    with session_scope(url) as s:
        row = s.scalar(select(Batch).where(Batch.problem == problem, Batch.batch_id == batch_id,
                                           Batch.state == "published"))
    if row is None:
        raise BatchNotFound(f"batch {batch_id!r} of {problem!r} is not published")
    return row


def read_curated(batch: Batch, columns: list[str] | None = None) -> pd.DataFrame:
    """A published batch's curated rows, its files verified against the manifest first.

    Raises:
        DataDamaged: a curated file is missing or differs from what was published.
    """
    files = curated_files(batch)
    return pd.read_parquet(files[0] if len(files) == 1 else Path(batch.curated_uri or ""),
                           columns=columns)


def parquet_rows(files: list[Path]) -> int:
    """The files' rows, from their footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


