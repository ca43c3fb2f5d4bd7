"""Reference profiles: what a model version's drift is measured against.

A profile is a seeded sample of the version's training features and segment columns with the
model's own outputs on those rows, written next to its artifact when it is trained
(``write_reference_profile``) and read back, checked against its recorded SHA-256, when a batch
is monitored (``read_reference_profile``). Categories are kept as text (``drift.comparable``).
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mlcore.batches import sha256_file
from mlcore.model.drift import DriftCheckFailed, comparable, prediction_columns
from mlcore.model.targets import model_target, predict
from mlcore.problems import ProblemSpec
from mlcore.store.models import ModelVersion


def sample_rows(frame: pd.DataFrame, rows: int, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of at most ``rows`` rows (all of them when fewer), index reset."""
    out = frame.sample(rows, random_state=seed) if len(frame) > rows else frame
    return out.reset_index(drop=True)


def write_reference_profile(spec: ProblemSpec, train: pd.DataFrame, pipeline: Any, out_dir: Path,
                            seed: int) -> dict[str, Any]:
    """Write a model's reference profile next to its artifact: a seeded sample (at most
    ``spec.drift.sample_rows``) of its training features and segment columns, plus its score
    on those rows, as ``out_dir/reference.parquet`` (written atomically).

    Returns:
        ``{"uri", "sha256", "rows", "columns"}`` for the version's reproducibility record.
    """

    columns = list(dict.fromkeys([*spec.feature_names, *spec.drift.segments]))
    sample = sample_rows(train[columns], spec.drift.sample_rows, seed)
    outputs = predict(pipeline, sample[spec.feature_names])
    sample = comparable(sample, spec).assign(
        **prediction_columns(outputs, model_target(pipeline)["classes"]))
    dest = out_dir / "reference.parquet"
    tmp = out_dir / f".reference-{time.time_ns()}.parquet"
    sample.to_parquet(tmp, index=False)
    sha = sha256_file(tmp)
    tmp.replace(dest)
    # the name only: resolved next to the artifact (``profile_path``), so a moved home works
    return {"uri": dest.name, "sha256": sha, "rows": len(sample), "columns": list(sample.columns)}


def profile_path(mv: ModelVersion, profile: dict[str, Any]) -> Path:
    """Where a version's reference profile is: a name next to its artifact (absolute paths
    were recorded before homes could move)."""
    path = Path(profile["uri"])
    return path if path.is_absolute() else Path(mv.artifact_uri).parent / path


def _profile_bytes(mv: ModelVersion, profile: dict[str, Any]) -> tuple[bytes, Path | str]:
    """The profile's bytes (empty when missing) and where they were looked for: beside an
    artifact on object storage, fetched; else ``profile_path``."""
    from mlcore.model.artifacts_store import is_remote, read_bytes, sibling

    if not Path(profile["uri"]).is_absolute() and is_remote(mv.artifact_uri):
        uri = sibling(mv.artifact_uri, profile["uri"])
        try:
            return read_bytes(uri), uri
        except FileNotFoundError:
            return b"", uri
    path = profile_path(mv, profile)
    return (path.read_bytes() if path.is_file() else b""), path


def read_reference_profile(spec: ProblemSpec, mv: ModelVersion, profile: dict[str, Any],
                           batch_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The version's reference profile, sampled to ``spec.drift.sample_rows``, with where it
    came from (``{"source": "profile", "uri", "sha256"}``).

    Raises:
        DriftCheckFailed: the file is missing or does not match its recorded SHA-256.
    """
    data, path = _profile_bytes(mv, profile)
    if hashlib.sha256(data).hexdigest() != profile["sha256"]:
        raise DriftCheckFailed(f"batch {batch_id!r}: {spec.name!r} v{mv.version}'s reference "
                               f"profile {path} is missing or does not match its recorded "
                               "SHA-256; no drift verdict")
    # profiles written before categories were kept as text hold codes: made comparable too
    frame = sample_rows(pd.read_parquet(io.BytesIO(data)), spec.drift.sample_rows)
    return comparable(frame, spec), {"source": "profile", "uri": profile["uri"],
                                     "sha256": profile["sha256"]}
