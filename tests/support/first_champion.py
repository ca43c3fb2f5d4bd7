"""A home with a first champion, the way the loop makes one: yearly batches ingested and
materialized, a training set built, a logistic regression trained and promoted."""

from __future__ import annotations

from typing import Any

from mlcore.config import TrainConfig
from mlcore.datasets import build_dataset
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.registry import move_alias
from mlcore.training import train_contender


def first_champion(spec: Any, slices: dict[int, Any], settings: Any,
                   years: tuple[int, ...] = (2015, 2016, 2017)) -> tuple[dict, Any, Any]:
    """Ingest and materialize ``years`` of ``slices`` on ``settings``, build the training set,
    train a logistic regression on it and make it champion. Returns (the ingestion manifests by
    year, the training set, the contender)."""
    manifests = {y: ingest_batch(spec, str(slices[y]), str(y), settings) for y in years}
    for year in manifests:
        materialize_batch(spec, str(year), settings)
    dataset = build_dataset(spec, settings)
    contender = train_contender(spec, dataset, TrainConfig(algorithm="logistic_regression"),
                                settings)
    move_alias(spec.name, expected=None, new=contender.version, reason="first model",
               url=settings.db_url, actor="tests")
    return manifests, dataset, contender
