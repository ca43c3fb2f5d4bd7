"""Ingest a raw file as a batch: manifest, validation, quarantine, atomic publish, idempotency."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import delete, insert, select

from mlcore.batches import BatchConflict, BatchNotFound, BatchRejected, check_batch_id, sha256_file
from mlcore.config import Settings
from mlcore.problems import ProblemSpec
from mlcore.store.models import Batch, QuarantinedRow, utcnow
from mlcore.store.session import session_scope
from mlcore.validation import validate_rows


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


def read_source(path: Path) -> pd.DataFrame:
    """Read a raw batch file (parquet or CSV)."""
    if path.suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"unsupported source format {path.suffix!r} (parquet or csv)")


def schema_of(df: pd.DataFrame) -> dict[str, str]:
    """Column name -> dtype name, in file order."""
    return {str(c): str(t) for c, t in df.dtypes.items()}


def event_timestamps(df: pd.DataFrame, spec: ProblemSpec) -> pd.Series:
    """Derive UTC event times as the spec declares (``year_end``: <year>-12-31T00:00Z)."""
    col = df[spec.event_time.column]
    if spec.event_time.kind == "year_end":
        years = pd.to_numeric(col).astype("int64").astype(str)
        return pd.to_datetime(years + "-12-31", utc=True)
    return pd.to_datetime(col, utc=True)


def curate(valid: pd.DataFrame, spec: ProblemSpec) -> pd.DataFrame:
    """Typed curated frame: key, event_timestamp, features (float/int64), target if present."""
    out = pd.DataFrame({spec.entity.key: valid[spec.entity.key].astype(spec.entity.dtype)})
    out["event_timestamp"] = event_timestamps(valid, spec)
    for feat in spec.features:
        values = pd.to_numeric(valid[feat.name].astype("object"))
        out[feat.name] = values.astype("float64" if feat.kind == "numeric" else "int64")
    if spec.target.name in valid.columns:
        out[spec.target.name] = pd.to_numeric(valid[spec.target.name].astype("object")).astype(
            "int64")
    return out.reset_index(drop=True)


def _publish(frame: pd.DataFrame, raw: Path, dest: Path, curated: Path) -> None:
    """Write raw copy and curated parquet to staging dirs, then rename into place."""
    for final, write in ((dest, lambda d: shutil.copy2(raw, d / raw.name)),
                         (curated, lambda d: frame.to_parquet(d / "part-0.parquet", index=False))):
        staging = final.with_name(f".staging-{final.name}-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        write(staging)
        if final.exists():  # left by a crash before the manifest said "published"
            shutil.rmtree(final)
        os.replace(staging, final)


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


def _manifest(row: Batch, created: bool) -> Manifest:
    return Manifest(row.problem, row.batch_id, row.source_uri, row.sha256, row.row_count,
                    row.row_count - row.quarantine_count, row.quarantine_count, row.schema_hash,
                    row.state, row.curated_uri or "", created)


def _record(spec: ProblemSpec, batch_id: str, fields: dict[str, Any], violations: pd.DataFrame,
            url: str) -> Manifest:
    with session_scope(url) as s:
        s.execute(delete(QuarantinedRow).where(QuarantinedRow.problem == spec.name,
                                               QuarantinedRow.batch_id == batch_id))
        s.execute(delete(Batch).where(Batch.problem == spec.name, Batch.batch_id == batch_id))
        row = Batch(problem=spec.name, batch_id=batch_id, **fields)
        s.add(row)
        if len(violations):
            s.execute(insert(QuarantinedRow), [
                {"problem": spec.name, "batch_id": batch_id, "row_number": int(r.row_number),
                 "rule": r.rule, "reason": r.reason} for r in violations.itertuples()])
        s.flush()
        return _manifest(row, created=True)


def ingest_batch(spec: ProblemSpec, source: str, batch_id: str, settings: Settings) -> Manifest:
    """Validate ``source`` and publish it as ``batch_id``; a same-content re-run is a no-op.

    Raises:
        InvalidBatchId: bad ID. BatchConflict: the ID is published with other content.
        BatchRejected: the file fails whole-batch checks (recorded as ``rejected``).
        FileNotFoundError, ValueError: the source cannot be read.
    """
    check_batch_id(batch_id)
    raw = _source_path(source)
    sha = sha256_file(raw)
    if (done := _existing(spec.name, batch_id, sha, settings.db_url)) is not None:
        return done
    df = read_source(raw)
    schema = schema_of(df)
    fields: dict[str, Any] = {
        "source_uri": raw.as_uri(), "sha256": sha, "row_count": len(df), "schema": schema,
        "schema_hash": hashlib.sha256(json.dumps(schema).encode()).hexdigest()}
    try:
        result = validate_rows(df, spec, batch_id)
    except BatchRejected:
        _record(spec, batch_id, {**fields, "state": "rejected", "quarantine_count": len(df)},
                pd.DataFrame(columns=["row_number", "rule", "reason"]), settings.db_url)
        raise
    frame = curate(result.valid, spec)
    curated = settings.partition("curated", spec.name, batch_id)
    _publish(frame, raw, settings.partition("raw", spec.name, batch_id), curated)
    ts = frame["event_timestamp"]
    return _record(spec, batch_id, {
        **fields, "state": "published", "quarantine_count": result.quarantined_rows,
        "curated_uri": str(curated), "event_time_min": ts.min().to_pydatetime(),
        "event_time_max": ts.max().to_pydatetime(), "published_at": utcnow(),
    }, result.violations, settings.db_url)


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
    """A published batch's curated rows."""
    return pd.read_parquet(Path(batch.curated_uri or ""), columns=columns)


