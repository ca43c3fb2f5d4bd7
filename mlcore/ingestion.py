"""Ingest a raw file as a batch: manifest, streamed validation with row-level quarantine,
atomic publish, idempotent re-runs.

Publishing protocol (a crash at any step leaves nothing half-visible; a re-run publishes once):
1. under the batch's store lock (``mlcore.store.claims``: decided by the metadata store, so
   it holds across hosts): same ID + same content already published -> no-op; different
   content -> ``BatchConflict``; then under the problem's store lock (one publishing ingest
   per problem): the same file published under another ID -> ``BatchConflict``;
2. manifest row ``staged`` with a fresh claim token; leftovers of crashed runs (staging dirs,
   on object storage uncommitted attempts) are removed;
3. the file is streamed in row-group chunks: validated, curated and written to a staging dir
   (on object storage: an attempt under ``<home>/.attempts``, ``mlcore.ingest_publish``);
   a row whose (key, event time) another published batch holds is quarantined under
   ``duplicate_in_published_batch`` unless the spec declares ``corrections: supersede``;
4. the decision: rejected (recorded with every reason, staging removed) or
5. rename staging -> ``curated/problem=<p>/batch=<id>`` (object storage: no rename, the
   attempt's location is what is committed), then one transaction marks the manifest
   ``published`` with its ``curated_uri`` (compare-and-set on the claim token: a writer whose
   claim was taken over commits nothing, ``ClaimLost``) and stores the quarantined rows.
   Readers only follow published manifests.
Any other error (disk full, I/O) removes the staging dirs and marks the manifest ``failed``
with the cause; a re-run restages from step 2.

The reading, validation and curation of the file are ``mlcore.data`` (``io``, ``curation``);
the manifest look-ups ``mlcore.store.catalog``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import delete, insert, select, update

from mlcore.batches import BatchConflict, BatchRejected, check_batch_id, sha256_file
from mlcore.columns import label_key
from mlcore.config import Settings
from mlcore.data.curation import declared_and_found, stream
from mlcore.data.io import RawFile, source_path
from mlcore.data.target_coding import (
    ClassesUnknown,
    TargetCoder,
    fix_classes,
    local_coder,
    target_coder,
)
from mlcore.data.validation import check_columns, rejection_reasons
from mlcore.ingest_publish import CURATED_FILE, Target, publish_target
from mlcore.problems import ProblemSpec
from mlcore.provenance import code_version
from mlcore.store.catalog import find_batch, published_batches, published_with_sha
from mlcore.store.claims import store_lock
from mlcore.store.models import Batch, QuarantinedRow, utcnow
from mlcore.store.session import session_scope

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


def _target_coder(src: RawFile, spec: ProblemSpec, url: str) -> tuple[TargetCoder | None, bool]:
    """The coder labels are encoded with, and whether its classes were learnt from this file
    (to be fixed when it publishes). None when the file carries no target."""
    if spec.target.name not in src.columns:
        return None, False
    try:
        return target_coder(spec, url), False
    except ClassesUnknown:
        return local_coder(spec, src.read_columns([spec.target.name])[spec.target.name]), True


def batch_lock(settings: Settings, problem: str, batch_id: str) -> AbstractContextManager[None]:
    """One writer per batch at a time, on any host (runs of the same batch queue up here)."""
    return store_lock(settings.db_url, f"ingest-{problem}-{batch_id}")


def problem_lock(settings: Settings, problem: str) -> AbstractContextManager[None]:
    """One publishing ingest per problem at a time: the checks against the batches published
    before (same file, same key and event time) must see every one of them."""
    return store_lock(settings.db_url, f"ingest-{problem}")


def _others(spec: ProblemSpec, url: str) -> list[Batch] | None:
    """The published batches a new row's (key, event time) must not be in, oldest publish
    first; None when the spec takes such rows as corrections (``corrections: supersede``)."""
    if spec.corrections != "reject":
        return None
    return sorted(published_batches(spec.name, url),
                  key=lambda b: (b.published_at or b.created_at, b.batch_id))


def _existing(problem: str, batch_id: str, sha: str, url: str) -> Manifest | None:
    row = find_batch(problem, batch_id, url)
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
    other = published_with_sha(problem, sha, url, other_than=batch_id)
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


class ClaimLost(BatchConflict):
    """Another writer took this batch over (this one's store lock was lost): it publishes
    nothing; what it wrote is removed."""


def _stage(spec: ProblemSpec, batch_id: str, fields: dict[str, Any], url: str) -> str:
    """Record the manifest ``staged`` under a new claim token (returned)."""
    claim = uuid.uuid4().hex
    with session_scope(url) as s:
        s.execute(delete(QuarantinedRow).where(QuarantinedRow.problem == spec.name,
                                               QuarantinedRow.batch_id == batch_id))
        s.execute(delete(Batch).where(Batch.problem == spec.name, Batch.batch_id == batch_id))
        s.add(Batch(problem=spec.name, batch_id=batch_id, state="staged", row_count=0,
                    schema={}, schema_hash="", quarantine_count=0,
                    code_version=code_version(), claim=claim, **fields))
    return claim


def _finish(spec: ProblemSpec, batch_id: str, claim: str, values: dict[str, Any],
            violations: list[pd.DataFrame], url: str) -> Manifest:
    """Mark the staged manifest published/rejected and store quarantined rows, atomically;
    only while the manifest is still this writer's claim (compare-and-set).

    Raises:
        ClaimLost: the manifest is no longer staged under ``claim``.
    """
    with session_scope(url) as s:
        done = s.execute(update(Batch).where(
            Batch.problem == spec.name, Batch.batch_id == batch_id, Batch.state == "staged",
            Batch.claim == claim).values(**values))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise ClaimLost(f"batch {batch_id!r} of {spec.name!r}: another writer took the "
                            "batch over while this one staged it; nothing published here")
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
    raw = source_path(source)
    sha = sha256_file(raw)
    with batch_lock(settings, spec.name, batch_id):
        if (done := _existing(spec.name, batch_id, sha, settings.db_url)) is not None:
            return done
        with problem_lock(settings, spec.name):
            _same_file(spec.name, batch_id, raw, sha, settings.db_url)
            target = publish_target(settings, spec.name, batch_id)
            claim = _stage(spec, batch_id, {"source_uri": raw.as_uri(), "sha256": sha},
                           settings.db_url)
            return _validate_and_publish(spec, batch_id, claim, raw, target, settings,
                                         now or datetime.now(UTC))


class BatchStorageError(OSError):
    """Storage failed while a batch was staged (disk full, I/O error): nothing was published,
    the staging dirs are removed and the manifest is ``failed``. Keeps the errno; not a
    ``BatchError`` on purpose: freeing space and retrying helps (Airflow retries it)."""


def _validate_and_publish(spec: ProblemSpec, batch_id: str, claim: str, raw: Path,
                          target: Target, settings: Settings, now: datetime) -> Manifest:
    """Validate, stage and publish; on any failure but a rejection: staging removed, manifest
    ``failed`` with the cause, and the error names the batch and the path.

    Raises:
        BatchRejected: see ``ingest_batch``. BatchStorageError: an OSError while staging or
            publishing (errno kept). Anything else: re-raised, with a note naming the batch.
    """
    progress = target.progress
    progress.claim, progress.path = claim, target.curated
    try:
        return _publish(spec, batch_id, raw, target, settings, now)
    except BatchRejected:
        raise  # recorded as rejected, staging removed
    except ClaimLost as exc:
        log.error("%s", exc)
        target.remove(keep_placed=False)  # not published: this writer's copies go, all of them
        raise
    except Exception as exc:  # never BaseException: a kill must stay a crash (failpoints)
        where = str(getattr(exc, "filename", None) or progress.path)
        cause = f"{type(exc).__name__}: {exc}"
        why = f"batch {batch_id!r}: {progress.step} {where} failed ({cause}); nothing published"
        log.error("%s", why)
        _abandon(spec, batch_id, target, why, settings.db_url)
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


def _abandon(spec: ProblemSpec, batch_id: str, target: Target, why: str, url: str) -> None:
    """Remove what the failed attempt wrote and mark the manifest ``failed`` (best effort: the
    store may be what failed; a re-run clears leftovers and restages anyway)."""
    target.remove(keep_placed=target.progress.committing)  # committing: may be published
    try:
        with session_scope(url) as s:
            s.execute(update(Batch).where(Batch.problem == spec.name, Batch.batch_id == batch_id,
                                          Batch.state == "staged",
                                          Batch.claim == target.progress.claim)
                      .values(state="failed", reason=why))
    except Exception as exc:  # the store itself may be down: the original error matters more
        log.error("batch %r: could not mark the manifest failed (%s: %s)", batch_id,
                  type(exc).__name__, exc)


def _publish(spec: ProblemSpec, batch_id: str, raw: Path, target: Target, settings: Settings,
             now: datetime) -> Manifest:
    progress, rows = target.progress, 0
    target.clear()
    sink = target.begin()
    try:
        src = RawFile(raw, batch_id, spec.entity.key)
        rows = max(src.rows, 0)
        check_columns(src.columns, spec, batch_id)
        coder, learnt = _target_coder(src, spec, settings.db_url)
        progress.at("writing the curated rows to", f"{target.staged}/{CURATED_FILE}")
        out = stream(src, spec, sink, now, coder, _others(spec, settings.db_url))
    except BatchRejected as exc:
        log.error("%s", exc)
        target.discard()
        _finish(spec, batch_id, progress.claim, {"state": "rejected", "reason": str(exc),
                                                 "row_count": rows}, [], settings.db_url)
        raise
    schema_hash = hashlib.sha256(json.dumps(out.schema).encode()).hexdigest()
    common = {"row_count": out.rows, "schema": out.schema, "schema_hash": schema_hash,
              "quarantine_count": out.bad_rows}
    reasons = rejection_reasons(spec, out.rows, out.bad_rows, out.rules)
    if reasons:
        reasons += declared_and_found(spec, out.rules, out.found, coder)
        target.discard()
        why = f"batch {batch_id!r}: rejected: {'; '.join(reasons)}"
        log.error(why)
        _finish(spec, batch_id, progress.claim, {**common, "state": "rejected", "reason": why},
                out.violations, settings.db_url)
        raise BatchRejected(why)
    if learnt and coder is not None and coder.learnable:
        progress.at("fixing the classes of", target.staged)
        _fix_classes(spec, batch_id, coder, target, settings.db_url)
    location, record = target.place(raw)
    log.info("batch %r: publishing %d of %d rows; %d quarantined%s", batch_id, out.published,
             out.rows, out.bad_rows, f" ({dict(out.rules)})" if out.rules else "")
    progress.at("recording the published manifest of", target.curated)
    progress.committing = True
    return _finish(spec, batch_id, progress.claim, {
        **common, "state": "published", "curated_uri": location, "published_at": utcnow(),
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
    src = RawFile(raw, batch.batch_id, spec.entity.key)
    coder, _ = _target_coder(src, spec, settings.db_url)
    return stream(src, spec, staging, when, coder).published


def _fix_classes(spec: ProblemSpec, batch_id: str, coder: TargetCoder, target: Target,
                 url: str) -> None:
    """Fix the class list this first labelled batch was encoded with.

    Raises:
        BatchRejected: another batch fixed a different list meanwhile (re-run to re-encode).
    """
    stored = fix_classes(spec.name, list(coder.classes or ()), f"batch {batch_id}", url)
    if [label_key(c) for c in stored] != [label_key(c) for c in coder.classes or ()]:
        target.discard()
        raise BatchRejected(f"batch {batch_id!r}: its labels were encoded with classes "
                            f"{list(coder.classes or ())}, but another batch fixed {stored} "
                            "first; re-run the ingest")

