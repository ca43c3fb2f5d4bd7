"""A model version in the registry without training one: a stub training set (no files behind
its URIs) and, unless a test passes a real one, a stub artifact. For tests that need a version
to exist (aliases, labels, policy, scoring, the UI), not a model that predicts.
``register_artifact`` saves a fitted model as a real artifact first (for tests that load it)."""

from __future__ import annotations

from typing import Any

from mlcore.model.registry import register_version
from mlcore.model.splits import DatasetRef
from mlcore.training import save_artifact


def stub_dataset(batches: tuple[str, ...] = ("2015",),
                 rows: tuple[int, int] = (1200, 300), *,
                 holdout: tuple[str, ...] | None = None,
                 method: str = "entity_hash") -> DatasetRef:
    """A training set of ``batches`` with ``rows`` (train, holdout), split by ``method``; its
    holdout batches are ``holdout`` (by default the training batches)."""
    return DatasetRef("d" * 16, "/x/train.parquet", "/x/holdout.parquet", list(batches),
                      list(batches if holdout is None else holdout), method, rows[0], rows[1],
                      "a" * 64, "b" * 64)


def register_stub(spec: Any, settings: Any, *, algorithm: str = "logistic_regression",
                  artifact_uri: str = "/x/model.joblib", artifact_sha256: str = "0" * 64,
                  hyperparameters: dict[str, Any] | None = None,
                  validation: dict[str, Any] | None = None,
                  timings: dict[str, Any] | None = None,
                  batches: tuple[str, ...] = ("2015",), rows: tuple[int, int] = (1200, 300),
                  dataset: DatasetRef | None = None,
                  train_rows: int | None = None) -> int:
    """Register a version trained on ``dataset`` (default ``stub_dataset(batches, rows)``);
    returns its number. ``train_rows`` (the version's) defaults to the set's."""
    dataset = dataset or stub_dataset(batches, rows)
    return register_version(
        spec, settings, algorithm=algorithm, artifact_uri=artifact_uri,
        artifact_sha256=artifact_sha256, hyperparameters=hyperparameters or {},
        dataset=dataset,
        train_rows=dataset.train_rows if train_rows is None else train_rows,
        validation=validation or {}, timings=timings or {})


def register_artifact(spec: Any, settings: Any, model: Any, **stub: Any) -> int:
    """Save the fitted ``model`` as a real artifact under ``settings``' home and register it
    (``stub``: ``register_stub``'s other arguments); returns its number."""
    uri, sha = save_artifact(model, settings, spec.name)
    return register_stub(spec, settings, artifact_uri=uri, artifact_sha256=sha, **stub)
