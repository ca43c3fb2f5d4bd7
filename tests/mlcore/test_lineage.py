"""Lineage: from a model version back to its batches, data hash, decisions and alias moves."""

from __future__ import annotations

import pytest

from mlcore.lineage import model_lineage
from mlcore.registry import ModelNotFound


def test_lineage_leads_back_to_the_training_batches_and_promotion(spec, loop):
    version = loop.contender.version
    data = model_lineage(spec.name, version, loop.settings.db_url)

    assert (data["version"], data["algorithm"]) == (version, "logistic_regression")
    assert (data["artifact_uri"], data["artifact_sha256"]) == (
        loop.contender.artifact_uri, loop.contender.artifact_sha256)
    assert (data["data_hash"], data["dataset"]) == (loop.dataset.train_hash,
                                                    loop.dataset.dataset_id)
    batches = {b["batch_id"]: b for b in data["training_batches"]}
    assert set(batches) == {"2015", "2016"}
    for year in (2015, 2016):
        manifest = loop.manifests[year]
        assert (batches[str(year)]["sha256"], batches[str(year)]["source_uri"],
                batches[str(year)]["rows"]) == (manifest.sha256, manifest.source_uri, 1500)
    first = data["alias_history"][0]
    assert (first["from"], first["to"], first["action"], first["actor"]) == (
        None, version, "promote", "tests")
    assert data["spec_hash"] and data["code_version"]


def test_lineage_of_an_unknown_version_is_not_found(spec, loop):
    with pytest.raises(ModelNotFound):
        model_lineage(spec.name, 999, loop.settings.db_url)
