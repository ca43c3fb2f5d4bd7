"""The batch catalogue: look-ups of batch manifests in the metadata store.

Readers follow published manifests only (``published_batches``, ``get_batch``); the ingest
stage, lineage and the summary also ask for manifests in any state (``find_batch``,
``all_batches``), and the ingest stage for a published file by its content hash
(``published_with_sha``).
"""

from __future__ import annotations

from sqlalchemy import select

from mlcore.batches import BatchNotFound, check_batch_id
from mlcore.store.models import Batch
from mlcore.store.session import session_scope


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


def all_batches(problem: str, url: str) -> list[Batch]:
    """Every batch manifest of a problem (any state), in the order they were first staged."""
    with session_scope(url) as s:
        return list(s.scalars(select(Batch).where(Batch.problem == problem)
                              .order_by(Batch.id)))


def find_batch(problem: str, batch_id: str, url: str) -> Batch | None:
    """The manifest of ``batch_id`` in whatever state it is (None: never staged)."""
    with session_scope(url) as s:
        return s.scalar(select(Batch).where(Batch.problem == problem,
                                            Batch.batch_id == batch_id))


def published_with_sha(problem: str, sha: str, url: str, other_than: str) -> str | None:
    """The ID of a published batch of ``problem`` (other than ``other_than``) whose file has
    the SHA-256 ``sha``; the first by ID, None when there is none."""
    with session_scope(url) as s:
        return s.scalar(select(Batch.batch_id).where(
            Batch.problem == problem, Batch.sha256 == sha, Batch.state == "published",
            Batch.batch_id != other_than).order_by(Batch.batch_id).limit(1))
