"""Repair: find files that differ from their record, and re-publish a damaged batch from its raw
copy under the same manifest, then re-derive what depends on it (features, the champion's
predictions, drift), through the same locks as the stages themselves.

``check`` only reads (size, footer rows and SHA-256 of every recorded file, and the raw copy
against the manifest's SHA-256). ``repair_batch`` refuses when the raw copy is damaged too, or
when re-curating it no longer gives the manifest's rows (the spec changed): re-ingest then.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select, update

from mlcore.batches import BatchError, sha256_file
from mlcore.config import Settings
from mlcore.data.integrity import DataDamaged, curated_files, fingerprint, offline_files
from mlcore.data.io import staging_dir
from mlcore.features import materialize_batch
from mlcore.ingestion import batch_lock, recurate
from mlcore.monitoring import detect_drift
from mlcore.problems import ProblemSpec
from mlcore.scoring import score_batch
from mlcore.store.catalog import get_batch, published_batches
from mlcore.store.models import Batch, DriftReport, Materialization, Prediction
from mlcore.store.session import session_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One damaged thing: the batch, what it is, and what differs."""

    batch_id: str
    what: str  # curated | features | raw
    problem: str


@dataclass
class RepairResult:
    """What ``repair_batch`` did."""

    batch_id: str
    repaired: list[str] = field(default_factory=list)  # curated, features, scores vN, drift vN
    rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def raw_copy(settings: Settings, batch: Batch) -> Path:
    """The raw file ingest kept of ``batch`` (its source's name under ``raw/``)."""
    folder = settings.partition("raw", batch.problem, batch.batch_id)
    name = Path(batch.source_uri.removeprefix("file://")).name
    return folder / name


def _raw_finding(settings: Settings, batch: Batch) -> str | None:
    path = raw_copy(settings, batch)
    if not path.is_file():
        return f"raw copy {path} is missing"
    if sha256_file(path) != batch.sha256:
        return f"raw copy {path} differs from the manifest's sha256 {batch.sha256[:12]}…"
    return None


def check(spec: ProblemSpec, settings: Settings) -> list[Finding]:
    """Every published batch's curated files, features partition and raw copy, checked."""

    out = []
    for batch in published_batches(spec.name, settings.db_url):
        for what, verify in (("curated", lambda b=batch: curated_files(b)),
                             ("features", lambda b=batch: offline_files(
                                 spec.name, settings.db_url, [b.batch_id]))):
            try:
                verify()
            except DataDamaged as exc:
                out.append(Finding(batch.batch_id, what, str(exc)))
        if (raw := _raw_finding(settings, batch)) is not None:
            out.append(Finding(batch.batch_id, "raw", f"batch {batch.batch_id!r}: {raw}"))
    return out


def repair_batch(spec: ProblemSpec, batch_id: str, settings: Settings) -> RepairResult:
    """Re-publish ``batch_id``'s curated files from its raw copy when they differ from the
    record, then re-derive its features, the champion's scores and drift where they existed.

    Raises:
        BatchNotFound: not published. DataDamaged: the raw copy is damaged as well, or the
            re-curated rows differ from the manifest's.
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    result = RepairResult(batch_id)
    try:
        curated_files(batch)
    except DataDamaged as exc:
        log.warning("%s: re-publishing from the raw copy", exc)
        result.rows = _republish(spec, batch, settings)
        result.repaired.append("curated")
    _rederive(spec, batch_id, settings, result, curated_changed=bool(result.repaired))
    return result


def _republish(spec: ProblemSpec, batch: Batch, settings: Settings) -> int:
    if (raw := _raw_finding(settings, batch)) is not None:
        raise DataDamaged(f"batch {batch.batch_id!r} of {spec.name!r}: cannot repair: {raw}; "
                          f"re-ingest the source under a new batch ID")
    curated = Path(batch.curated_uri or settings.partition("curated", spec.name,
                                                           batch.batch_id))
    expected = batch.row_count - batch.quarantine_count
    with batch_lock(settings, spec.name, batch.batch_id):
        staging = staging_dir(curated)
        try:
            published = recurate(spec, batch, raw_copy(settings, batch), staging, settings)
            if published != expected:
                raise DataDamaged(
                    f"batch {batch.batch_id!r} of {spec.name!r}: cannot repair: the raw copy "
                    f"now curates to {published} rows, the manifest published {expected} "
                    "(the spec changed?); re-ingest the source under a new batch ID")
            record = fingerprint(staging)
            aside = curated.with_name(f".damaged-{curated.name}")
            shutil.rmtree(aside, ignore_errors=True)
            if curated.exists():
                os.replace(curated, aside)
            os.replace(staging, curated)
            with session_scope(settings.db_url) as s:
                s.execute(update(Batch).where(Batch.id == batch.id).values(files=record))
            shutil.rmtree(aside, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("batch %r: curated files re-published from %s (%d rows)", batch.batch_id,
             raw_copy(settings, batch), expected)
    return expected


def _versions(table: Any, problem: str, batch_id: str, url: str) -> list[int]:
    """The model versions with rows of ``table`` (predictions, drift reports) for the batch."""
    with session_scope(url) as s:
        return sorted(set(s.scalars(select(table.model_version).where(
            table.problem == problem, table.batch_id == batch_id).distinct())))


def _materialized(problem: str, batch_id: str, url: str) -> bool:
    with session_scope(url) as s:
        return bool(s.scalar(select(exists().where(Materialization.problem == problem,
                                                   Materialization.batch_id == batch_id))))


def _rederive(spec: ProblemSpec, batch_id: str, settings: Settings, result: RepairResult,
              curated_changed: bool) -> None:
    """Materialize again when the curated files were re-published or the partition is
    damaged; then re-score and re-check drift for the versions that had results."""

    url = settings.db_url
    if not _materialized(spec.name, batch_id, url):
        return
    features_ok = True
    try:
        offline_files(spec.name, url, [batch_id])
    except DataDamaged:
        features_ok = False
    if curated_changed or not features_ok:
        materialize_batch(spec, batch_id, settings)
        result.repaired.append("features")
    else:
        return  # nothing upstream changed: predictions and drift stand
    for version in _versions(Prediction, spec.name, batch_id, url):
        score_batch(spec, batch_id, settings, version=version)
        result.repaired.append(f"scores v{version}")
    if _versions(DriftReport, spec.name, batch_id, url):
        try:
            detect_drift(spec, batch_id, settings)
            result.repaired.append("drift")
        except (BatchError, ValueError) as exc:  # best effort: the batch itself is repaired
            log.warning("batch %r: drift not re-checked: %s", batch_id, exc)
