"""Model registry: versions, the ``champion`` alias moved only by compare-and-set, its history,
rollback, and artifact loading that verifies the SHA-256 before deserializing."""

from __future__ import annotations

import getpass
import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from mlcore.config import Settings
from mlcore.problems import ProblemSpec
from mlcore.provenance import code_version, failpoint
from mlcore.store.models import Alias, AliasHistory, ModelVersion, utcnow
from mlcore.store.session import session_scope

if TYPE_CHECKING:
    from mlcore.datasets import DatasetRef

CHAMPION = "champion"
CHALLENGER = "challenger"  # shadow-scored next to the champion; moves without checks
ALIASES = (CHAMPION, CHALLENGER)


class RegistryError(Exception):
    """Base of registry errors."""


class ModelNotFound(RegistryError, LookupError):
    """No such version (or no champion yet)."""


class AliasConflict(RegistryError):
    """The alias moved since the caller read it (compare-and-set failed)."""


class ArtifactTampered(RegistryError):
    """The artifact's SHA-256 differs from the registered one."""


def register_version(spec: ProblemSpec, settings: Settings, *, algorithm: str, artifact_uri: str,
                     artifact_sha256: str, hyperparameters: dict[str, Any], dataset: DatasetRef,
                     train_rows: int, validation: dict[str, Any], timings: dict[str, Any],
                     reproducibility: dict[str, Any] | None = None) -> int:
    """Record a new, immutable version (next number for the problem). Returns its number.

    Two trainers registering at once: the unique (problem, version) constraint fails one of
    them, which retries with the next number.
    """
    from mlcore.training import spec_hash

    for attempt in range(5):
        try:
            with session_scope(settings.db_url) as s:
                last = s.scalar(select(func.max(ModelVersion.version))
                                .where(ModelVersion.problem == spec.name))
                mv = ModelVersion(
                    problem=spec.name, version=(last or 0) + 1, algorithm=algorithm,
                    hyperparameters=hyperparameters, artifact_uri=artifact_uri,
                    artifact_sha256=artifact_sha256, training_batch_ids=dataset.train_batches,
                    data_hash=dataset.train_hash, train_rows=train_rows,
                    metrics={"validation": validation, "dataset_id": dataset.dataset_id,
                             "feature_service": spec.feature_service, "split": dataset.method},
                    code_version=code_version(), timings=timings, spec_hash=spec_hash(spec),
                    reproducibility=reproducibility)
                s.add(mv)
                s.flush()
                return mv.version
        except IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def get_version(problem: str, version: int, url: str) -> ModelVersion:
    """One registered version.

    Raises:
        ModelNotFound: no such version.
    """
    with session_scope(url) as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.problem == problem,
                                                 ModelVersion.version == version))
    if mv is None:
        raise ModelNotFound(f"{problem!r} has no model version {version}")
    return mv


def alias_holder(problem: str, url: str, alias: str = CHAMPION) -> int | None:
    """The version holding ``alias`` now, or None."""
    with session_scope(url) as s:
        return s.scalar(select(Alias.version).where(Alias.problem == problem,
                                                    Alias.alias == alias))


def move_alias(problem: str, *, expected: int | None, new: int, reason: str, url: str,
               action: str = "promote", actor: str | None = None,
               evaluation_id: int | None = None, alias: str = CHAMPION) -> None:
    """Compare-and-set ``alias`` from ``expected`` to ``new`` and log it, in one transaction.

    Raises:
        AliasConflict: the alias no longer points at ``expected``.
        ModelNotFound: ``new`` is not a registered version.
    """
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r} (aliases: {', '.join(ALIASES)})")
    get_version(problem, new, url)
    actor = actor or getpass.getuser()
    try:
        with session_scope(url) as s:
            if expected is None:
                s.add(Alias(problem=problem, alias=alias, version=new))
                s.flush()  # a concurrent first promotion hits the unique constraint here
            else:
                moved = s.execute(update(Alias).where(
                    Alias.problem == problem, Alias.alias == alias, Alias.version == expected,
                ).values(version=new, updated_at=utcnow())).rowcount  # type: ignore[attr-defined]
                if moved != 1:
                    raise AliasConflict(f"{problem!r} {alias} is no longer version {expected}")
            s.add(AliasHistory(problem=problem, alias=alias, from_version=expected,
                               to_version=new, action=action, actor=actor, reason=reason,
                               evaluation_id=evaluation_id))
            s.flush()
            failpoint("registry.before_alias_commit")
    except IntegrityError as exc:
        raise AliasConflict(f"{problem!r} {alias} was set concurrently") from exc


def rollback(problem: str, reason: str, url: str, actor: str | None = None) -> tuple[int, int]:
    """Move the champion back to the version it replaced. Returns (from, to).

    Raises:
        ModelNotFound: there is no champion, or it has no previous holder.
    """
    current = alias_holder(problem, url)
    if current is None:
        raise ModelNotFound(f"{problem!r} has no champion to roll back")
    with session_scope(url) as s:
        previous = s.scalar(
            select(AliasHistory.from_version)
            .where(AliasHistory.problem == problem, AliasHistory.alias == CHAMPION,
                   AliasHistory.to_version == current, AliasHistory.from_version.is_not(None),
                   AliasHistory.action != "rollback")  # undoing a rollback is not a rollback
            .order_by(AliasHistory.id.desc()).limit(1))
    if previous is None:
        raise ModelNotFound(f"{problem!r} champion v{current} has no previous holder")
    move_alias(problem, expected=current, new=previous, reason=reason, url=url,
               action="rollback", actor=actor)
    return current, previous


def load_model(mv: ModelVersion, settings: Settings) -> Any:
    """Deserialize a version's artifact, only from under ``<home>/artifacts`` and only after its
    SHA-256 matches the registered one (a tampered file is never unpickled).

    Raises:
        ArtifactTampered: the path escapes the artifact root, the file is missing, or its hash
            differs.
    """
    import joblib

    root = (settings.home / "artifacts").resolve()
    path = Path(mv.artifact_uri).resolve()
    if not path.is_relative_to(root):
        raise ArtifactTampered(f"{mv.problem!r} v{mv.version}: artifact {mv.artifact_uri} is "
                               f"outside {root}; refusing to load it")
    # Read once, hash those bytes, unpickle those bytes: a file swapped after the check is
    # never what gets loaded.
    data = path.read_bytes() if path.is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != mv.artifact_sha256:
        raise ArtifactTampered(f"{mv.problem!r} v{mv.version}: artifact {path} is missing or "
                               "does not match its registered SHA-256; refusing to load it")
    return joblib.load(io.BytesIO(data))


def list_versions(problem: str, url: str) -> list[dict[str, Any]]:
    """Every version with its aliases, newest first (what ``mlcore models --json`` prints)."""
    with session_scope(url) as s:
        aliases: dict[int, list[str]] = {}
        for a in s.scalars(select(Alias).where(Alias.problem == problem)):
            aliases.setdefault(a.version, []).append(a.alias)
        rows = s.scalars(select(ModelVersion).where(ModelVersion.problem == problem)
                         .order_by(ModelVersion.version.desc()))
        return [{"problem": problem, "version": mv.version, "aliases": aliases.get(mv.version, []),
                 "algorithm": mv.algorithm, "metrics": mv.metrics,
                 "artifact_uri": mv.artifact_uri, "artifact_sha256": mv.artifact_sha256,
                 "training_batch_ids": mv.training_batch_ids, "train_rows": mv.train_rows,
                 "hyperparameters": mv.hyperparameters,
                 "created_at": mv.created_at.isoformat()} for mv in rows]


def alias_log(problem: str, url: str) -> list[dict[str, Any]]:
    """Every alias move (champion and challenger; each entry names its alias), oldest first."""
    with session_scope(url) as s:
        rows = s.scalars(select(AliasHistory).where(AliasHistory.problem == problem)
                         .order_by(AliasHistory.id))
        return [{"alias": h.alias, "from": h.from_version, "to": h.to_version,
                 "action": h.action, "actor": h.actor, "reason": h.reason,
                 "evaluation_id": h.evaluation_id, "at": h.created_at.isoformat()} for h in rows]
