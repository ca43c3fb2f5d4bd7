"""Model registry: versions, the aliases' compare-and-set primitive (``move_alias``; when to move
one is ``mlcore.promotion``'s), their history, and artifact loading that verifies the SHA-256
before deserializing."""

from __future__ import annotations

import getpass
import hashlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from mlcore.config import Settings
from mlcore.problems import ProblemSpec, spec_hash
from mlcore.provenance import code_version, failpoint
from mlcore.store.models import Alias, AliasHistory, ModelVersion, utcnow
from mlcore.store.session import session_scope

if TYPE_CHECKING:
    from mlcore.model.splits import DatasetRef

CHAMPION = "champion"
CHALLENGER = "challenger"  # shadow-scored next to the champion; moves without checks
ALIASES = (CHAMPION, CHALLENGER)

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """Base of registry errors."""


class ModelNotFound(RegistryError, LookupError):
    """No such version (or no champion yet)."""


class AliasConflict(RegistryError):
    """The alias moved since the caller read it (compare-and-set failed)."""


class ArtifactIntegrityError(RegistryError):
    """A version's artifact cannot be trusted: tampered, outside the artifact root, or missing.
    Catch this to handle both ``ArtifactTampered`` and ``ArtifactMissing``."""


class ArtifactTampered(ArtifactIntegrityError):
    """The artifact's bytes differ from the registered SHA-256 (or its path escapes the
    artifact root)."""


class ArtifactMissing(ArtifactIntegrityError):
    """The artifact file is missing or unreadable (nothing to hash: not evidence of tampering)."""


def register_version(spec: ProblemSpec, settings: Settings, *, algorithm: str, artifact_uri: str,
                     artifact_sha256: str, hyperparameters: dict[str, Any], dataset: DatasetRef,
                     train_rows: int, validation: dict[str, Any], timings: dict[str, Any],
                     reproducibility: dict[str, Any] | None = None) -> int:
    """Record a new, immutable version (next number for the problem). Returns its number.

    Two trainers registering at once: the unique (problem, version) constraint fails one of
    them, which retries with the next number.
    """

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
               evaluation_id: int | None = None, alias: str = CHAMPION,
               settings: Settings | None = None) -> None:
    """Compare-and-set ``alias`` from ``expected`` to ``new`` and log it, in one transaction.

    Every move (champion or challenger, forced, manual, shadow or rollback) first hashes the
    artifact's bytes and compares them to the registered SHA-256: a version whose artifact would
    fail ``load_model`` never gets an alias. With ``settings`` the check is ``load_model``'s
    own (also refusing a path outside ``<home>/artifacts`` and a missing file); without it (callers
    that only have the URL) the bytes at the registered path are checked when the file exists, and
    a missing file is logged, not refused (the artifact root is unknown there).

    Raises:
        AliasConflict: the alias no longer points at ``expected``.
        ModelNotFound: ``new`` is not a registered version.
        ArtifactTampered: the artifact's bytes differ from the registered SHA-256 (or, with
            ``settings``, its path is outside the artifact root).
        ArtifactMissing: with ``settings``: the artifact file is missing or unreadable.
    """
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r} (aliases: {', '.join(ALIASES)})")
    mv = get_version(problem, new, url)
    doing = f"refusing to make it {alias}"
    if settings is not None:
        verify_artifact(mv, settings, doing=doing)
    elif mv.artifact_uri.startswith(("s3://", "s3a://")) or Path(mv.artifact_uri).exists():
        verify_artifact(mv, None, doing=doing)
    else:
        log.warning("moving %s of %r to v%d without an artifact check: %s is missing and no "
                    "settings were given", alias, problem, new, mv.artifact_uri)
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


def verify_artifact(mv: ModelVersion, settings: Settings | None, *,
                    doing: str = "refusing to load it") -> bytes:
    """The artifact's bytes, read once, after checking they hash to the registered SHA-256.

    With ``settings``, the path must resolve under ``<home>/artifacts`` (symlinks and ``..``
    resolved). ``doing`` ends the error message (what is being refused).

    Raises:
        ArtifactTampered: the path escapes the artifact root, or the bytes differ.
        ArtifactMissing: the file is missing or unreadable.
    """
    what = f"{mv.problem!r} v{mv.version}: artifact"
    if mv.artifact_uri.startswith(("s3://", "s3a://")):
        return _verify_remote(mv, settings, what, doing)
    path = Path(mv.artifact_uri).resolve()
    if settings is not None:
        root = (settings.home / "artifacts").resolve()
        if not path.is_relative_to(root):
            raise ArtifactTampered(f"{what} {mv.artifact_uri} is outside {root}; {doing}")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactMissing(f"{what} {path} is missing (registered SHA-256 "
                              f"{mv.artifact_sha256[:12]}...); {doing}") from exc
    except OSError as exc:
        raise ArtifactMissing(f"{what} {path} is missing or unreadable "
                              f"({type(exc).__name__}: {exc.strerror or exc}); {doing}") from exc
    found = hashlib.sha256(data).hexdigest()
    if found != mv.artifact_sha256:
        raise ArtifactTampered(f"{what} {path} does not match its registered SHA-256 (expected "
                               f"{mv.artifact_sha256[:12]}..., found {found[:12]}...); {doing}")
    return data


def _verify_remote(mv: ModelVersion, settings: Settings | None, what: str, doing: str) -> bytes:
    """``verify_artifact`` for an object-storage URI: under ``<home>/artifacts/`` (no ``..``)
    when ``settings`` are given, fetched once, hashed."""
    from mlcore.model.artifacts_store import read_bytes
    from mlcore.objstore import StorageError

    uri = mv.artifact_uri
    if settings is not None:
        root = settings.store_home().uri("artifacts") + "/"
        if not uri.startswith(root) or ".." in uri[len(root):].split("/"):
            raise ArtifactTampered(f"{what} {uri} is outside {root}; {doing}")
    try:
        data = read_bytes(uri)
    except FileNotFoundError as exc:
        raise ArtifactMissing(f"{what} {uri} is missing (registered SHA-256 "
                              f"{mv.artifact_sha256[:12]}...); {doing}") from exc
    except (StorageError, ValueError) as exc:
        raise ArtifactMissing(f"{what} {uri} is missing or unreadable ({exc}); {doing}") from exc
    found = hashlib.sha256(data).hexdigest()
    if found != mv.artifact_sha256:
        raise ArtifactTampered(f"{what} {uri} does not match its registered SHA-256 (expected "
                               f"{mv.artifact_sha256[:12]}..., found {found[:12]}...); {doing}")
    return data


def load_model(mv: ModelVersion, settings: Settings) -> Any:
    """Deserialize a version's artifact, only from under ``<home>/artifacts`` and only after its
    SHA-256 matches the registered one (a tampered file is never unpickled).

    Raises:
        ArtifactTampered: the path escapes the artifact root, or the file's hash differs.
        ArtifactMissing: the file is missing or unreadable.
    """
    import joblib

    # Read once, hash those bytes, unpickle those bytes: a file swapped after the check is
    # never what gets loaded.
    return joblib.load(io.BytesIO(verify_artifact(mv, settings)))


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
