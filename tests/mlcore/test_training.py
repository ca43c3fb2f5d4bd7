"""Training, the stage: content-addressed artifacts, registered contenders, their
reproducibility record and reproduction."""

from __future__ import annotations

import hashlib
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from spec_sections import variant

from mlcore.model.preprocessing import build_pipeline
from mlcore.model.registry import get_version, load_model
from mlcore.problems import spec_hash
from mlcore.training import save_artifact


def test_save_artifact_hash_is_the_file_hash(spec, curated, sqlite_settings):
    pipe = build_pipeline(spec, "logistic_regression").fit(curated[spec.feature_names],
                                                           curated["employed"])
    uri, sha = save_artifact(pipe, sqlite_settings, spec.name)
    path = Path(uri)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.parent.name == f"sha256={sha[:16]}"
    assert path.is_relative_to(sqlite_settings.home / "artifacts")
    assert not list(path.parent.parent.glob(".model-*"))  # no staging file left behind
    X = curated.head(50)[spec.feature_names]
    np.testing.assert_array_equal(joblib.load(path).predict_proba(X), pipe.predict_proba(X))

def test_train_contender_registers_a_reproducible_version(spec, loop):
    contender = loop.contender
    mv = get_version(spec.name, contender.version, loop.settings.db_url)
    assert (mv.algorithm, mv.artifact_uri, mv.artifact_sha256) == (
        "logistic_regression", contender.artifact_uri, contender.artifact_sha256)
    # the holdout is the latest 20 % of 2017 (evaluation.holdout's default): 2017's other rows train
    assert mv.training_batch_ids == loop.dataset.train_batches == ["2015", "2016", "2017"]
    assert (mv.data_hash, mv.train_rows) == (loop.dataset.train_hash, 3000 + 1200)
    assert mv.spec_hash == spec_hash(spec)
    chosen = mv.hyperparameters
    assert chosen["algorithm"] == "logistic_regression" and chosen["max_iter"] == 300
    assert chosen["C"] in (0.1, 1.0) and chosen["random_state"] == 0
    assert mv.metrics["validation"] == contender.validation
    assert set(contender.validation) == {"logistic_regression(C=0.1)",
                                         "logistic_regression(C=1.0)"}
    assert mv.metrics["dataset_id"] == loop.dataset.dataset_id
    holdout = pd.read_parquet(loop.dataset.holdout_uri)
    proba = load_model(mv, loop.settings).predict_proba(holdout[spec.feature_names])[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()


def test_the_reproducibility_record_holds_what_a_rebuild_needs(spec, loop):
    from mlcore.provenance import lock_hash
    from mlcore.training import predictions_hash

    mv = get_version(spec.name, loop.contender.version, loop.settings.db_url)
    rec = mv.reproducibility
    assert rec["seed"] == 0 and rec["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert rec["params"] == {k: v for k, v in mv.hyperparameters.items()
                             if k not in ("algorithm", "random_state")}
    assert len(rec["config_hash"]) == 64 and rec["spec_hash"] == spec_hash(spec)
    assert rec["lock_hash"] == lock_hash() == hashlib.sha256(
        (Path(__file__).parents[2] / "uv.lock").read_bytes()).hexdigest()
    assert rec["libraries"]["scikit-learn"] and rec["libraries"]["python"].startswith("3.11")
    assert [b["batch_id"] for b in rec["batches"]] == ["2015", "2016", "2017"]
    assert {b["sha256"] for b in rec["batches"]} == {m.sha256 for m in loop.manifests.values()}
    assert rec["dataset"]["train_hash"] == loop.dataset.train_hash
    assert rec["feature_definitions_hash"] == spec.feature_definitions_hash
    assert rec["fit_seconds"] > 0 and rec["predict_rows_per_second"] > 1000
    holdout = pd.read_parquet(loop.dataset.holdout_uri)
    proba = load_model(mv, loop.settings).predict_proba(holdout[spec.feature_names])[:, 1]
    assert rec["holdout_predictions_sha256"] == predictions_hash(proba)


def test_reproduce_rebuilds_retrains_and_verifies_identical_predictions(spec, loop):
    from mlcore.training import reproduce_version

    result = reproduce_version(spec, loop.contender.version, loop.settings)
    assert result.verified, result
    assert (result.dataset_identical, result.predictions_identical,
            result.matches_registered, result.max_abs_diff) == (True, True, True, 0.0)
    assert result.rows == loop.dataset.holdout_rows == 300
    assert not list((loop.settings.home / "tmp").iterdir())  # the scratch rebuild is gone


def test_reproduce_refuses_a_version_without_a_record_or_with_changed_features(spec, loop):
    from mlcore.training import NotReproducible, reproduce_version

    changed = variant(spec, feature_ttl_days=30)
    with pytest.raises(NotReproducible, match="feature definitions changed"):
        reproduce_version(changed, loop.contender.version, loop.settings)
