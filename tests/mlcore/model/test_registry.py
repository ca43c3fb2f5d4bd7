"""Registry on SQLite and PostgreSQL: versions, compare-and-set alias moves, history, rollback,
and artifact loading that refuses a tampered file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from registry_stub import register_stub, stub_dataset

from mlcore.data.curation import curate
from mlcore.model.preprocessing import build_pipeline
from mlcore.model.registry import (
    AliasConflict,
    ArtifactMissing,
    ArtifactTampered,
    ModelNotFound,
    alias_holder,
    alias_log,
    get_version,
    list_versions,
    load_model,
    move_alias,
)
from mlcore.problems import spec_hash
from mlcore.promotion import rollback
from mlcore.training import save_artifact


def register(spec, settings, uri: str = "/nowhere/model.joblib", sha: str = "0" * 64) -> int:
    return register_stub(
        spec, settings, artifact_uri=uri, artifact_sha256=sha, hyperparameters={"C": 1.0},
        validation={"logistic_regression": {"roc_auc": 0.8}}, timings={"fit_seconds": 0.1},
        dataset=stub_dataset(("2015", "2016"), (3000, 1500), holdout=("2017",),
                             method="newest_batch"))


def promote(spec, settings, expected, new, reason="better", actor="alice") -> None:
    move_alias(spec.name, expected=expected, new=new, reason=reason, url=settings.db_url,
               actor=actor)


def test_versions_are_numbered_per_problem_and_keep_their_lineage(spec, settings):
    assert [register(spec, settings) for _ in range(3)] == [1, 2, 3]
    mv = get_version(spec.name, 2, settings.db_url)
    assert (mv.problem, mv.version, mv.algorithm) == (spec.name, 2, "logistic_regression")
    assert mv.training_batch_ids == ["2015", "2016"]
    assert (mv.data_hash, mv.train_rows, mv.spec_hash) == ("a" * 64, 3000, spec_hash(spec))
    assert mv.metrics["dataset_id"] == "d" * 16 and mv.metrics["split"] == "newest_batch"
    assert mv.code_version
    assert [v["version"] for v in list_versions(spec.name, settings.db_url)] == [3, 2, 1]
    assert list_versions("other_problem", settings.db_url) == []


def test_an_unknown_version_is_not_found(spec, settings):
    with pytest.raises(ModelNotFound, match="version 9"):
        get_version(spec.name, 9, settings.db_url)


def test_first_promotion_sets_the_alias_and_logs_it(spec, settings):
    register(spec, settings)
    assert alias_holder(spec.name, settings.db_url) is None

    promote(spec, settings, None, 1, reason="first model", actor="alice")

    assert alias_holder(spec.name, settings.db_url) == 1
    [entry] = alias_log(spec.name, settings.db_url)
    assert (entry["alias"], entry["from"], entry["to"]) == ("champion", None, 1)
    assert (entry["action"], entry["actor"], entry["reason"]) == ("promote", "alice", "first model")
    assert list_versions(spec.name, settings.db_url)[0]["aliases"] == ["champion"]


def test_a_second_first_promotion_conflicts(spec, settings):
    for _ in range(2):
        register(spec, settings)
    promote(spec, settings, None, 1)
    with pytest.raises(AliasConflict):
        promote(spec, settings, None, 2)
    assert alias_holder(spec.name, settings.db_url) == 1
    assert len(alias_log(spec.name, settings.db_url)) == 1


@pytest.mark.parametrize("expected", [1, 3])
def test_compare_and_set_with_a_stale_expectation_changes_nothing(spec, settings, expected):
    for _ in range(3):
        register(spec, settings)
    promote(spec, settings, None, 1)
    promote(spec, settings, 1, 2)
    before = alias_log(spec.name, settings.db_url)

    with pytest.raises(AliasConflict, match=f"no longer version {expected}"):
        promote(spec, settings, expected, 3)

    assert alias_holder(spec.name, settings.db_url) == 2
    assert alias_log(spec.name, settings.db_url) == before


def test_moving_to_an_unregistered_version_is_refused(spec, settings):
    register(spec, settings)
    promote(spec, settings, None, 1)
    with pytest.raises(ModelNotFound):
        promote(spec, settings, 1, 7)
    assert alias_holder(spec.name, settings.db_url) == 1


def test_history_is_appended_with_actor_reason_and_action(spec, settings):
    for _ in range(2):
        register(spec, settings)
    promote(spec, settings, None, 1, reason="first", actor="alice")
    move_alias(spec.name, expected=1, new=2, reason="manual pick", url=settings.db_url,
               action="manual", actor="bob")
    log = alias_log(spec.name, settings.db_url)
    assert [(e["from"], e["to"], e["action"], e["actor"], e["reason"]) for e in log] == [
        (None, 1, "promote", "alice", "first"), (1, 2, "manual", "bob", "manual pick")]
    assert log[0]["at"] <= log[1]["at"]


def test_rollback_returns_to_the_previous_holder_and_is_recorded(spec, settings):
    for _ in range(2):
        register(spec, settings)
    promote(spec, settings, None, 1)
    promote(spec, settings, 1, 2)

    assert rollback(spec.name, "v2 misbehaves", settings.db_url, actor="carol") == (2, 1)

    assert alias_holder(spec.name, settings.db_url) == 1
    last = alias_log(spec.name, settings.db_url)[-1]
    assert (last["from"], last["to"], last["action"]) == (2, 1, "rollback")
    assert (last["actor"], last["reason"]) == ("carol", "v2 misbehaves")


def test_rollback_without_a_champion_is_not_found(spec, settings):
    register(spec, settings)
    with pytest.raises(ModelNotFound, match="no champion"):
        rollback(spec.name, "oops", settings.db_url)


def test_rollback_of_a_first_champion_has_no_previous_holder(spec, settings):
    register(spec, settings)
    promote(spec, settings, None, 1)
    with pytest.raises(ModelNotFound, match="no previous holder"):
        rollback(spec.name, "oops", settings.db_url)
    assert alias_holder(spec.name, settings.db_url) == 1


def test_a_second_rollback_goes_further_back(spec, settings):
    for _ in range(3):
        register(spec, settings)
    promote(spec, settings, None, 1)
    promote(spec, settings, 1, 2)
    promote(spec, settings, 2, 3)
    assert rollback(spec.name, "v3 bad", settings.db_url) == (3, 2)
    assert rollback(spec.name, "v2 bad too", settings.db_url) == (2, 1)


def test_aliases_are_per_problem(spec, settings):
    register(spec, settings)
    promote(spec, settings, None, 1)
    assert alias_holder("other_problem", settings.db_url) is None
    with pytest.raises(ModelNotFound):
        move_alias("other_problem", expected=None, new=1, reason="x", url=settings.db_url)


@pytest.fixture
def artifact(spec, slices, settings):
    """A real fitted pipeline saved by training.save_artifact and registered as v1."""
    frame = curate(pd.read_parquet(slices[2015]).head(300), spec)
    pipe = build_pipeline(spec, "logistic_regression").fit(frame[spec.feature_names],
                                                           frame["employed"])
    uri, sha = save_artifact(pipe, settings, spec.name)
    register(spec, settings, uri=uri, sha=sha)
    return pipe, frame, uri


def test_load_model_returns_the_registered_pipeline(spec, settings, artifact):
    pipe, frame, _ = artifact
    model = load_model(get_version(spec.name, 1, settings.db_url), settings)
    X = frame[spec.feature_names]
    np.testing.assert_array_equal(model.predict_proba(X), pipe.predict_proba(X))


@pytest.mark.parametrize("tamper", ["append", "flip", "delete"])
def test_load_model_refuses_a_tampered_artifact(spec, settings, artifact, tamper):
    path = Path(artifact[2])
    if tamper == "append":
        path.write_bytes(path.read_bytes() + b"\0")
    elif tamper == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    # "tampered" only when the bytes differ: a deleted file is "missing"
    with pytest.raises(ArtifactMissing if tamper == "delete" else ArtifactTampered, match="v1"):
        load_model(get_version(spec.name, 1, settings.db_url), settings)
