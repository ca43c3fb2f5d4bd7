"""Training sets built from Feast: the batches they hold, their holdout, their parts (the split
rules themselves: tests/mlcore/model/test_splits.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from mlcore.batches import BatchNotFound
from mlcore.datasets import build_dataset, labelled_batches
from mlcore.model.splits import (
    NotEnoughData,
    entity_bucket,
    frame_hash,
    load_part,
)
from mlcore.spec_rules import EvaluationRule

LATEST_BATCH = EvaluationRule(holdout="latest_batch")


def test_the_latest_slice_of_the_newest_batch_is_held_out_and_the_rest_trains(loop):
    """The default: the contender trains on 80 % of the newest batch too (it sees the newest
    regime); the census batches have one event time each, so the slice is cut by key hash."""
    ref = loop.dataset
    assert (ref.train_batches, ref.holdout_batches, ref.method, ref.holdout) == (
        ["2015", "2016", "2017"], ["2017"], "time_slice", "0.2")
    train = pd.read_parquet(ref.train_uri)
    holdout = pd.read_parquet(ref.holdout_uri)
    assert (len(train), len(holdout)) == (ref.train_rows, ref.holdout_rows) == (4200, 300)
    assert set(train["batch_id"]) == {"2015", "2016", "2017"}
    assert set(holdout["batch_id"]) == {"2017"} and ref.left_out_rows == 0
    assert not set(train["id"]) & set(holdout["id"])
    assert train["id"].is_unique and holdout["id"].is_unique
    assert ref.holdout_from is not None and pd.Timestamp(ref.holdout_from).year == 2017


def test_latest_batch_holds_out_the_whole_newest_batch(spec, loop):
    ref = build_dataset(spec.model_copy(update={"evaluation": LATEST_BATCH}), loop.settings)
    assert (ref.train_batches, ref.holdout_batches, ref.method) == (
        ["2015", "2016"], ["2017"], "newest_batch")
    assert (ref.train_rows, ref.holdout_rows) == (3000, 1500)
    assert ref.dataset_id != loop.dataset.dataset_id


def test_dataset_parts_carry_features_target_and_recorded_hashes(spec, loop):
    ref = loop.dataset
    for uri, expected in ((ref.train_uri, ref.train_hash), (ref.holdout_uri, ref.holdout_hash)):
        part = pd.read_parquet(uri)
        assert {"id", "event_timestamp", "employed", *spec.feature_names} <= set(part.columns)
        assert part[spec.feature_names].notna().all().all()
        assert frame_hash(part) == expected
        pd.testing.assert_frame_equal(load_part(uri, expected), part)


def test_dataset_labels_match_the_curated_batches(spec, loop):
    holdout = pd.read_parquet(loop.dataset.holdout_uri).set_index("id")
    curated = pd.read_parquet(loop.manifests[2017].curated_uri).set_index("id")
    curated = curated.loc[holdout.index]
    assert holdout["employed"].sort_index().tolist() == curated["employed"].sort_index().tolist()
    assert holdout["AGEP"].sort_index().tolist() == curated["AGEP"].sort_index().tolist()


def test_rebuilding_gives_the_same_dataset(spec, loop):
    again = build_dataset(spec, loop.settings, until="2017")
    assert again == loop.dataset


def test_until_cuts_the_batches_and_one_batch_holds_out_by_entity_hash(spec, loop):
    ref = build_dataset(spec.model_copy(update={"evaluation": LATEST_BATCH}), loop.settings,
                        until="2015")
    assert (ref.method, ref.train_batches, ref.holdout_batches) == ("entity_hash", ["2015"],
                                                                   ["2015"])
    assert ref.dataset_id != loop.dataset.dataset_id
    train, holdout = pd.read_parquet(ref.train_uri), pd.read_parquet(ref.holdout_uri)
    assert len(train) + len(holdout) == 1500
    assert not set(train["id"]) & set(holdout["id"])
    assert 0.15 < len(holdout) / 1500 < 0.25
    assert (entity_bucket(holdout["id"]) < 20).all()


def test_until_an_unknown_batch_is_not_found(spec, loop):
    with pytest.raises(BatchNotFound, match="'2030'"):
        labelled_batches(spec, loop.settings, until="2030")


def test_no_labelled_batch_is_not_enough_data(spec, sqlite_settings):
    with pytest.raises(NotEnoughData):
        build_dataset(spec, sqlite_settings)
