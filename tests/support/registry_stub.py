"""A model version in the registry without training one: a stub training set (no files behind
its URIs) and, unless a test passes a real one, a stub artifact. For tests that need a version
to exist (aliases, labels, policy, scoring, the UI), not a model that predicts."""

from __future__ import annotations

from typing import Any

from mlcore.model.registry import register_version
from mlcore.model.splits import DatasetRef


def stub_dataset(batches: tuple[str, ...] = ("2015",),
                 rows: tuple[int, int] = (1200, 300)) -> DatasetRef:
    """A training set of ``batches`` (train and holdout alike) with ``rows`` (train, holdout)."""
    return DatasetRef("d" * 16, "/x/train.parquet", "/x/holdout.parquet", list(batches),
                      list(batches), "entity_hash", rows[0], rows[1], "a" * 64, "b" * 64)


def register_stub(spec: Any, settings: Any, *, algorithm: str = "logistic_regression",
                  artifact_uri: str = "/x/model.joblib", artifact_sha256: str = "0" * 64,
                  hyperparameters: dict[str, Any] | None = None,
                  validation: dict[str, Any] | None = None,
                  batches: tuple[str, ...] = ("2015",), rows: tuple[int, int] = (1200, 300),
                  train_rows: int | None = None) -> int:
    """Register a version trained on ``stub_dataset(batches, rows)``; returns its number.
    ``train_rows`` (the version's) defaults to the set's."""
    return register_version(
        spec, settings, algorithm=algorithm, artifact_uri=artifact_uri,
        artifact_sha256=artifact_sha256, hyperparameters=hyperparameters or {},
        dataset=stub_dataset(batches, rows),
        train_rows=rows[0] if train_rows is None else train_rows,
        validation=validation or {}, timings={})
