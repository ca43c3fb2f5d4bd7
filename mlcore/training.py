"""Training, the stage: the dataset's training part through the candidate search
(``mlcore.model.estimators``), the winner saved as a content-addressed artifact and registered
with a record of everything needed to retrain the same model (``reproduce_version``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from mlcore.batches import sha256_file
from mlcore.config import Settings, TrainConfig
from mlcore.data.target_coding import target_coder
from mlcore.datasets import write_dataset
from mlcore.evaluation import timed_scores
from mlcore.model.estimators import TrainedModel, refit_recorded, select_and_fit
from mlcore.model.preprocessing import missing_values_plan
from mlcore.model.reference import write_reference_profile
from mlcore.model.registry import get_version, load_model, register_version
from mlcore.model.splits import DatasetRef, frame_hash, load_part
from mlcore.model.targets import model_target, predict
from mlcore.policy import close_retrain_requests
from mlcore.problems import ProblemSpec, spec_hash
from mlcore.provenance import code_version, failpoint, lock_hash
from mlcore.store.catalog import published_batches

_LIBRARIES = ("scikit-learn", "numpy", "pandas", "scipy", "joblib", "pyarrow", "feast")


def save_artifact(pipeline: Pipeline, settings: Settings, problem: str) -> tuple[str, str]:
    """Dump the pipeline under a content-addressed path. Returns (uri, sha256).

    On an object-storage home the dump is staged locally and put with one PUT to
    ``artifacts/problem=<p>/sha256=<16 hex>/model.joblib`` (the key names its content)."""
    if not settings.home_is_local:
        return _save_remote(pipeline, settings, problem)
    root = settings.home / "artifacts" / f"problem={problem}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".model-{time.time_ns()}.joblib"
    joblib.dump(pipeline, tmp)
    sha = sha256_file(tmp)
    dest = root / f"sha256={sha[:16]}" / "model.joblib"
    dest.parent.mkdir(exist_ok=True)
    tmp.replace(dest)
    return str(dest), sha


def _save_remote(pipeline: Pipeline, settings: Settings, problem: str) -> tuple[str, str]:
    import shutil

    from mlcore.data.objects import process_tmp
    from mlcore.model.artifacts_store import upload

    staged = process_tmp("artifact")
    try:
        joblib.dump(pipeline, staged / "model.joblib")
        sha = sha256_file(staged / "model.joblib")
        return upload(settings.store_home(), staged / "model.joblib", "artifacts",
                      f"problem={problem}", f"sha256={sha[:16]}", "model.joblib"), sha
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _reference_profile(spec: ProblemSpec, train: pd.DataFrame, pipeline: Pipeline, uri: str,
                       seed: int) -> dict[str, Any]:
    """``write_reference_profile`` next to the artifact at ``uri`` (on an object-storage home:
    staged locally, then put beside the artifact's object)."""
    from mlcore.model.artifacts_store import is_remote, sibling

    if not is_remote(uri):
        return write_reference_profile(spec, train, pipeline, Path(uri).parent, seed)
    import shutil

    from mlcore.data.objects import process_tmp
    from mlcore.objstore import Home

    staged = process_tmp("reference")
    try:
        profile = write_reference_profile(spec, train, pipeline, staged, seed)
        dest = sibling(uri, profile["uri"])
        Home.of(dest).put_file(staged / profile["uri"], dest)
        return profile
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _load_part(uri: str, expected_hash: str) -> pd.DataFrame:
    """``load_part``, also for a part on object storage (read into memory, hash checked)."""
    from mlcore.model.artifacts_store import is_remote, read_parquet

    if not is_remote(uri):
        return load_part(uri, expected_hash)
    frame = read_parquet(uri)
    if frame_hash(frame) != expected_hash:
        raise ValueError(f"dataset part {uri} changed since it was built (hash mismatch)")
    return frame


def predictions_hash(p: np.ndarray) -> str:
    """SHA-256 of a score vector's exact float64 bytes (identical means bit-for-bit)."""
    return hashlib.sha256(np.ascontiguousarray(p, dtype="float64").tobytes()).hexdigest()


def library_versions() -> dict[str, str]:
    """Python and the versions of the libraries a fitted model depends on."""
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = pkg_version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def reproducibility_record(spec: ProblemSpec, dataset: DatasetRef, cfg: TrainConfig,
                           trained: TrainedModel, batch_hashes: dict[str, str],
                           sampled_rows: int | None, holdout_scores: np.ndarray,
                           rows_per_second: float) -> dict[str, Any]:
    """Everything ``reproduce_version`` needs, and what a reviewer asks about a model."""
    candidate = spec.algorithms[trained.algorithm]
    config = {"estimator": candidate.estimator, "preprocessing": candidate.preprocessing,
              "params": {**candidate.params, **trained.overrides}, "seed": cfg.random_state,
              "validation_fraction": cfg.validation_fraction, "algorithm_param": cfg.algorithm,
              "max_train_rows": cfg.max_train_rows, "spec_hash": spec_hash(spec),
              "target": {"kind": spec.target.kind,
                         "classes": model_target(trained.pipeline)["classes"]},
              "missing_values": missing_values_plan(spec, candidate)}
    if trained.window is not None:  # only with windows declared: older records stay as they were
        config["window"] = {k: v for k, v in trained.window.items() if k != "rows"}
    windows = {} if trained.window is None else {
        "window_rows": trained.window["rows"], "windows": trained.window_scores,
        "window_why": trained.why}
    return {
        **config,
        "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "code_version": code_version(), "lock_hash": lock_hash(),
        "libraries": library_versions(),
        "batches": [{"batch_id": b, "sha256": batch_hashes[b]}
                    for b in dict.fromkeys(dataset.train_batches + dataset.holdout_batches)],
        "dataset": dataset.to_dict(), "sampled_rows": sampled_rows,
        "feature_definitions_hash": spec.feature_definitions_hash,
        "feature_service": spec.feature_service,
        "selection": trained.validation, **windows,
        "fit_seconds": round(trained.fit_seconds, 3),
        "predict_rows_per_second": round(rows_per_second, 1),
        "holdout_predictions_sha256": predictions_hash(holdout_scores),
    }


@dataclass(frozen=True)
class ContenderRef:
    """A trained, registered contender (small enough for XCom)."""

    problem: str
    version: int
    algorithm: str
    artifact_uri: str
    artifact_sha256: str
    validation: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def train_contender(spec: ProblemSpec, dataset: DatasetRef, cfg: TrainConfig,
                    settings: Settings) -> ContenderRef:
    """Train on the dataset's train part, save the artifact, register a new version with its
    reproducibility record (including the hash of its holdout predictions)."""
    failpoint("training.started")
    start = time.perf_counter()
    train = _load_part(dataset.train_uri, dataset.train_hash)
    sampled = None
    if len(train) > cfg.max_train_rows:
        train = train.sample(cfg.max_train_rows, random_state=cfg.random_state)
        sampled = cfg.max_train_rows
    trained = select_and_fit(spec, train, cfg, target_coder(spec, settings.db_url))
    holdout = _load_part(dataset.holdout_uri, dataset.holdout_hash)
    scores, rps = timed_scores(trained.pipeline, holdout[spec.feature_names])
    hashes = {b.batch_id: b.sha256 for b in published_batches(spec.name, settings.db_url)}
    record = reproducibility_record(spec, dataset, cfg, trained, hashes, sampled, scores, rps)
    uri, sha = save_artifact(trained.pipeline, settings, spec.name)
    record["reference_profile"] = _reference_profile(  # before the write-once registration
        spec, train, trained.pipeline, uri, cfg.random_state)
    timings = {"fit_seconds": round(trained.fit_seconds, 3),
               "total_seconds": round(time.perf_counter() - start, 3)}
    failpoint("training.before_register")
    version = register_version(
        spec, settings, algorithm=trained.algorithm, artifact_uri=uri, artifact_sha256=sha,
        hyperparameters={"algorithm": trained.algorithm, **record["params"],
                         "random_state": cfg.random_state},
        dataset=dataset, validation=trained.validation, timings=timings,
        train_rows=len(train) if trained.window is None else trained.window["rows"],
        reproducibility=record)
    close_retrain_requests(spec.name, version, settings.db_url)
    return ContenderRef(spec.name, version, trained.algorithm, uri, sha, trained.validation)


class NotReproducible(ValueError):
    """A version cannot be rebuilt as recorded (missing record, changed batch or features)."""


@dataclass(frozen=True)
class Reproduction:
    """What ``mlcore reproduce`` found."""

    problem: str
    version: int
    dataset_identical: bool
    predictions_identical: bool  # retrained model vs the recorded holdout predictions
    matches_registered: bool  # retrained model vs the registered artifact, same rows
    max_abs_diff: float
    rows: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        """Everything matched bit for bit."""
        return self.dataset_identical and self.predictions_identical and self.matches_registered

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "verified": self.verified}


def reproduce_version(spec: ProblemSpec, version: int, settings: Settings) -> Reproduction:
    """Rebuild a version's training set from its recorded batches (from scratch, in a scratch
    folder), retrain it with its recorded configuration and seed, and compare holdout
    predictions with the recorded hash and with the registered artifact.

    Raises:
        NotReproducible: no record, a batch is gone or changed, or the features changed.
    """
    import shutil

    start = time.perf_counter()
    mv = get_version(spec.name, version, settings.db_url)
    rec = mv.reproducibility
    if not rec:
        raise NotReproducible(f"{spec.name!r} v{version} has no reproducibility record "
                              "(trained before it was kept)")
    if rec["feature_definitions_hash"] != spec.feature_definitions_hash:
        raise NotReproducible(f"{spec.name!r} v{version}: the feature definitions changed since "
                              "it was trained")
    published = {b.batch_id: b for b in published_batches(spec.name, settings.db_url)}
    batches = []
    for b in rec["batches"]:
        found = published.get(b["batch_id"])
        if found is None or found.sha256 != b["sha256"]:
            raise NotReproducible(f"{spec.name!r} v{version}: batch {b['batch_id']!r} is no "
                                  "longer published with the content it was trained on")
        batches.append(found)
    if settings.home_is_local:
        scratch = settings.home / "tmp" / f"reproduce-v{version}-{time.time_ns()}"
    else:  # an object-storage home: the rebuild stays in a local process folder
        from mlcore.data.objects import process_tmp
        scratch = process_tmp("reproduce")
    try:
        rebuilt = write_dataset(spec, settings, batches, root=scratch)
        recorded = DatasetRef.from_dict(rec["dataset"])
        same_data = (rebuilt.train_hash, rebuilt.holdout_hash) == (recorded.train_hash,
                                                                    recorded.holdout_hash)
        train = pd.read_parquet(rebuilt.train_uri)
        if rec["sampled_rows"]:
            train = train.sample(rec["sampled_rows"], random_state=rec["seed"])
        model = refit_recorded(spec, rec, train)
        X = pd.read_parquet(rebuilt.holdout_uri)[spec.feature_names]
        again = predict(model, X)
        registered = predict(load_model(mv, settings), X)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    notes = [] if same_data else ["rebuilt training set differs from the recorded hashes"]
    if rec["code_version"] != code_version():
        notes.append(f"code version differs: trained with {rec['code_version']}, now "
                     f"{code_version()}")
    if rec["libraries"] != library_versions():
        notes.append("library versions differ from the record")
    return Reproduction(
        spec.name, version, same_data,
        predictions_hash(again) == rec["holdout_predictions_sha256"],
        bool(np.array_equal(again, registered)), float(np.max(np.abs(again - registered),
                                                             initial=0.0)),
        len(X), round(time.perf_counter() - start, 3), notes)
