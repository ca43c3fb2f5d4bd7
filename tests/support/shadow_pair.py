"""A batch to score and two real models on it: the champion and the shadow challenger, for the
tests of scoring with a challenger (the stage, its artifact faults, the alert on a skipped one)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from registry_stub import register_artifact

from mlcore.data.io import read_curated
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.preprocessing import build_pipeline
from mlcore.model.registry import CHALLENGER, CHAMPION, move_alias
from mlcore.store.catalog import get_batch


def shadow_pair(spec: Any, slices: dict[int, Any], settings: Any,
                batch_id: str = "2016") -> tuple[int, int, pd.DataFrame]:
    """Ingest and materialize ``batch_id`` (a year of ``slices``) on ``settings``; fit two
    logistic regressions on it (C=1.0 and C=0.001: really two models), each with an artifact of
    its own; make the first champion and the second challenger. Returns (champion, challenger,
    the batch's curated rows)."""
    ingest_batch(spec, str(slices[int(batch_id)]), batch_id, settings)
    materialize_batch(spec, batch_id, settings)
    curated = read_curated(get_batch(spec.name, batch_id, settings.db_url))
    versions = []
    for c in (1.0, 0.001):
        pipe = build_pipeline(spec, "logistic_regression", 0, {"C": c}).fit(
            curated[spec.feature_names], curated["employed"])
        versions.append(register_artifact(spec, settings, pipe, hyperparameters={"C": c},
                                          batches=(batch_id,), rows=(len(curated), len(curated))))
    for alias, version in zip((CHAMPION, CHALLENGER), versions, strict=True):
        move_alias(spec.name, expected=None, new=version, reason="t", url=settings.db_url,
                   alias=alias, settings=settings)
    champion, challenger = versions
    return champion, challenger, curated
