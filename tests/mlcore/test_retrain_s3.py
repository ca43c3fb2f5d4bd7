"""Retrain with ``MLCORE_HOME=s3://bucket/prefix`` against a real S3 API server (moto's
standalone server, its own process): the training set built from the S3 features and put under
``datasets/``, the contender's artifact and reference profile put under ``artifacts/`` with the
SHA-256 recorded, ``load_model`` fetching and verifying it (a flipped byte or a missing object
refused, naming the URI), and the model predicting as a folder-home model trained on the same
data does."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from s3_server import S3Server, folder_home, s3_home, s3_server

from mlcore.config import Settings, TrainConfig
from mlcore.datasets import build_dataset
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.reference import read_reference_profile
from mlcore.model.registry import (
    ArtifactIntegrityError,
    ArtifactMissing,
    ArtifactTampered,
    get_version,
    load_model,
    move_alias,
)
from mlcore.training import train_contender

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig(algorithm="logistic_regression")


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def s3_settings(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """An S3 home (a fresh prefix), a SQLite store and Feast's embedded state outside it."""
    return s3_home(server, monkeypatch, tmp_path, feast_local=True, chdir=True)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return folder_home(tmp_path)


def retrain(spec, slices, settings):
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
        materialize_batch(spec, str(year), settings)
    dataset = build_dataset(spec, settings)
    return dataset, train_contender(spec, dataset, CFG, settings)


def no_s3_folder(tmp_path: Path) -> None:
    made = [p for p in tmp_path.rglob("s3:*")] + [p for p in Path.cwd().glob("s3:*")]
    assert not made, made


def test_retrain_on_s3_matches_a_folder_home(s3_settings, local_settings, spec, slices,
                                             tmp_path):
    ds3, c3 = retrain(spec, slices, s3_settings)
    dloc, cloc = retrain(spec, slices, local_settings)
    home = s3_settings.store_home()
    # the training set: on the bucket under datasets/, the same content as the folder home's
    prefix = home.uri("datasets", f"problem={spec.name}", f"dataset={ds3.dataset_id}")
    assert (ds3.train_uri, ds3.holdout_uri) == (f"{prefix}/train.parquet",
                                                f"{prefix}/holdout.parquet")
    assert ds3.dataset_id == dloc.dataset_id
    assert (ds3.train_hash, ds3.holdout_hash, ds3.train_rows, ds3.holdout_rows) == (
        dloc.train_hash, dloc.holdout_hash, dloc.train_rows, dloc.holdout_rows)
    assert ds3.train_rows + ds3.holdout_rows == 3000
    # the artifact: an object under artifacts/, its recorded SHA-256 = the object's
    mv = get_version(spec.name, c3.version, s3_settings.db_url)
    art = home.uri("artifacts", f"problem={spec.name}", f"sha256={c3.artifact_sha256[:16]}",
                   "model.joblib")
    assert mv.artifact_uri == c3.artifact_uri == art and home.exists(art)
    assert mv.artifact_sha256 == c3.artifact_sha256 == home.sha256(art)
    # beside it the reference profile, read back and checked by monitoring's reader
    profile = mv.reproducibility["reference_profile"]
    assert home.exists(art.rsplit("/", 1)[0] + "/reference.parquet")
    frame, where = read_reference_profile(spec, mv, profile, "2016")
    assert len(frame) == profile["rows"] and where["sha256"] == profile["sha256"]
    # the loaded model predicts as the folder home's (same data, algorithm, seed)
    X = pd.read_parquet(dloc.holdout_uri)[spec.feature_names].head(200)
    got = load_model(mv, s3_settings).predict_proba(X)
    want = load_model(get_version(spec.name, cloc.version, local_settings.db_url),
                      local_settings).predict_proba(X)
    np.testing.assert_array_equal(got, want)
    assert mv.artifact_sha256 == cloc.artifact_sha256  # the same bytes, in fact
    # an alias move checks the object too (with or without settings)
    move_alias(spec.name, expected=None, new=c3.version, reason="t", url=s3_settings.db_url,
               actor="tests", settings=s3_settings)
    # nothing staged left behind, nothing written to a local folder named "s3:"
    assert not [u for u in home.find(home.uri()) if "/." in u.split(home.uri(), 1)[1]
                and "/.attempts/" not in u]
    no_s3_folder(tmp_path)
    assert not any(p.name.startswith(f"mlcore-{k}-{os.getpid()}-")
                   for k in ("artifact", "dataset", "reference")
                   for p in Path(tempfile.gettempdir()).glob("mlcore-*"))


def test_a_tampered_or_missing_s3_artifact_is_refused_naming_the_uri(s3_settings, spec, slices,
                                                                    tmp_path):
    _, c3 = retrain(spec, slices, s3_settings)
    mv = get_version(spec.name, c3.version, s3_settings.db_url)
    home, uri = s3_settings.store_home(), mv.artifact_uri
    data = bytearray(home.open(uri).read())
    assert hashlib.sha256(data).hexdigest() == mv.artifact_sha256
    data[len(data) // 2] ^= 0xFF
    with home.open(uri, "wb") as fh:
        fh.write(bytes(data))
    with pytest.raises(ArtifactTampered, match=f"{uri} does not match its registered SHA-256"):
        load_model(mv, s3_settings)
    for settings in (s3_settings, None):  # an alias never goes to it
        with pytest.raises(ArtifactIntegrityError, match=uri):
            move_alias(spec.name, expected=None, new=c3.version, reason="t",
                       url=s3_settings.db_url, actor="tests", settings=settings)
    home.rm(uri)
    with pytest.raises(ArtifactMissing, match=f"{uri} is missing"):
        load_model(mv, s3_settings)
    # a URI outside <home>/artifacts/ is refused before any read
    mv.artifact_uri = home.uri("datasets", "..", "artifacts", "x.joblib")
    with pytest.raises(ArtifactTampered, match="is outside"):
        load_model(mv, s3_settings)
    no_s3_folder(tmp_path)


def test_reproduce_on_s3_rebuilds_locally_and_verifies(s3_settings, spec, slices, tmp_path):
    from mlcore.training import reproduce_version

    _, c3 = retrain(spec, slices, s3_settings)
    before = set(s3_settings.store_home().find(s3_settings.store_home().uri()))
    got = reproduce_version(spec, c3.version, s3_settings)
    assert got.verified, got
    assert got.rows > 0 and got.max_abs_diff == 0.0
    assert set(s3_settings.store_home().find(s3_settings.store_home().uri())) == before
    assert not list(Path(tempfile.gettempdir()).glob(f"mlcore-reproduce-{os.getpid()}-*"))
    no_s3_folder(tmp_path)


def test_the_contender_is_judged_on_the_s3_holdout(s3_settings, local_settings, spec, slices):
    """Evaluation reads the frozen holdout and the contender's training rows (the fair-holdout
    check) from the bucket: the same holdout and scores as on a folder home; with its training
    rows gone the contender cannot be judged, and the error names the object."""
    from mlcore.evaluation import UnfairHoldout, assess_contender

    ds3, c3 = retrain(spec, slices, s3_settings)
    dloc, cloc = retrain(spec, slices, local_settings)
    got = assess_contender(spec, ds3, c3.version, s3_settings)
    want = assess_contender(spec, dloc, cloc.version, local_settings)
    assert got.holdout == want.holdout and got.holdout["rows"] > 0
    np.testing.assert_array_equal(got.p_new, want.p_new)
    np.testing.assert_array_equal(got.y, want.y)
    s3_settings.store_home().rm(ds3.train_uri)
    with pytest.raises(UnfairHoldout, match=ds3.train_uri):
        assess_contender(spec, ds3, c3.version, s3_settings)


def test_an_evaluation_on_s3_records_its_run_card_in_the_bucket(s3_settings, spec, slices):
    """The promotion stage's evaluation: decided and recorded, its run card put under
    ``reports/problem=<p>/evaluation=<id>/`` and the recorded URI that object's."""
    from mlcore.promotion import evaluate_contender

    ds3, c3 = retrain(spec, slices, s3_settings)
    got = evaluate_contender(spec, ds3, c3.version, s3_settings)
    home = s3_settings.store_home()
    card = home.uri("reports", f"problem={spec.name}", f"evaluation={got['evaluation_id']}",
                    "run_card.html")
    assert got["run_card"] == card and home.exists(card) and home.size(card) > 0
    no_s3_folder(Path.cwd())


def test_scoring_on_s3_matches_a_folder_home_with_its_estimate(s3_settings, local_settings,
                                                                spec, slices, tmp_path):
    """Scoring reads the S3 features and the champion's S3 artifact; its pre-label estimate is
    fitted on the holdout read from the bucket (cached under MLCORE_LOCAL_DIR): the same
    predictions' mean and estimate as on a folder home."""
    from mlcore.scoring import score_batch

    results = []
    for settings in (s3_settings, local_settings):
        _, contender = retrain(spec, slices, settings)
        move_alias(spec.name, expected=None, new=contender.version, reason="t",
                   url=settings.db_url, actor="tests", settings=settings)
        results.append(score_batch(spec, "2016", settings))
    got, want = results
    assert (got.rows, got.mean_score) == (want.rows, want.mean_score) and got.rows > 0
    [est], [ref] = got.estimates, want.estimates
    assert est["estimate"] is not None, est
    assert (est["estimate"], est["ci_low"], est["ci_high"]) == (
        ref["estimate"], ref["ci_low"], ref["ci_high"])
    assert list((tmp_path / "local" / "estimators").rglob("*.joblib"))  # the local cache
    no_s3_folder(tmp_path)
