"""Splits and dataset identity: the split plan, stable entity buckets, frame hashes, the
time-slice holdout, and a dataset part's recorded hash."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from mlcore.model.splits import (
    DatasetRef,
    NotEnoughData,
    entity_bucket,
    frame_hash,
    load_part,
    plan_split,
    time_slice,
)
from mlcore.spec_rules import EvaluationRule

LATEST_BATCH = EvaluationRule(holdout="latest_batch")


@pytest.mark.parametrize("batch_ids, rule, train, holdout, method", [
    (["2015"], None, ("2015",), ("2015",), "time_slice"),
    (["2015", "2016"], None, ("2015", "2016"), ("2016",), "time_slice"),
    (["2015", "2016"], EvaluationRule(holdout="14d"), ("2015", "2016"), ("2016",), "time_slice"),
    (["2015"], LATEST_BATCH, ("2015",), ("2015",), "entity_hash"),
    (["2015", "2016"], LATEST_BATCH, ("2015",), ("2016",), "newest_batch"),
    (["2015", "2016", "2017"], LATEST_BATCH, ("2015", "2016"), ("2017",), "newest_batch"),
])
def test_plan_split(batch_ids, rule, train, holdout, method):
    plan = plan_split(batch_ids, rule)
    assert (plan.train_batches, plan.holdout_batches, plan.method) == (train, holdout, method)


def test_plan_split_without_batches_is_not_enough_data():
    with pytest.raises(NotEnoughData):
        plan_split([])


def test_entity_bucket_is_stable_across_row_order_and_index():
    keys = pd.Series(range(1000, 3000), dtype="int64")
    shuffled = keys.sample(frac=1.0, random_state=1).reset_index(drop=True)
    by_key = dict(zip(keys, entity_bucket(keys), strict=True))
    assert dict(zip(shuffled, entity_bucket(shuffled), strict=True)) == by_key
    assert entity_bucket(keys).between(0, 99).all()


def test_entity_bucket_keeps_the_series_index():
    keys = pd.Series([5, 6, 7], index=[10, 20, 30])
    assert entity_bucket(keys).index.tolist() == [10, 20, 30]


def test_entity_bucket_is_salted_by_purpose_and_roughly_uniform():
    keys = pd.Series(range(20_000), dtype="int64")
    holdout, validation = entity_bucket(keys, "holdout"), entity_bucket(keys, "validation")
    assert (holdout != validation).mean() > 0.9
    for buckets in (holdout, validation):
        assert 0.18 < (buckets < 20).mean() < 0.22
    # the validation slice is not the holdout slice again
    overlap = ((holdout < 20) & (validation < 20)).mean()
    assert 0.02 < overlap < 0.06


def test_frame_hash_sees_values_and_column_names():
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    assert frame_hash(df) == frame_hash(df.copy())
    assert frame_hash(df) != frame_hash(df.assign(b=[0.5, 1.25]))
    assert frame_hash(df) != frame_hash(df.rename(columns={"b": "c"}))
    assert frame_hash(df) != frame_hash(df.iloc[::-1])


def _rows(batch: str, start: str, hours: int, keys: range) -> pd.DataFrame:
    return pd.DataFrame({"id": list(keys), "batch_id": batch, "event_timestamp": pd.date_range(
        start, periods=len(keys), freq=f"{hours}h", tz="UTC")})


def test_time_slice_by_fraction_holds_out_the_latest_rows_and_trains_on_older_ones(spec):
    frame = pd.concat([_rows("a", "2020-01-01", 1, range(100)),
                       _rows("b", "2020-01-05", 1, range(100, 200))], ignore_index=True)
    frame = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)  # order is irrelevant
    split = time_slice(frame, "b", spec)
    held, train = frame[split.held], frame[split.train]
    assert len(held) == 20 and set(held["batch_id"]) == {"b"}
    assert len(train) == 180 and train["event_timestamp"].max() < held["event_timestamp"].min()
    assert split.holdout_from == held["event_timestamp"].min().isoformat()


def test_time_slice_breaks_ties_of_one_moment_by_key_the_same_way_every_time(spec):
    frame = pd.DataFrame({"id": range(1000), "batch_id": "a",
                          "event_timestamp": pd.Timestamp("2020-12-31", tz="UTC")})
    split = time_slice(frame, "a", spec)
    again = time_slice(frame.iloc[::-1].reset_index(drop=True), "a", spec)
    assert split.held.sum() == 200 and split.train.sum() == 800
    assert set(frame["id"][split.held]) == set(frame["id"][::-1].reset_index(drop=True)[again.held])


def test_time_slice_by_duration_and_overlapping_batches_leave_newer_rows_out(spec):
    rule = spec.model_copy(update={"evaluation": EvaluationRule(holdout="24h")})
    frame = pd.concat([_rows("a", "2020-01-01", 1, range(100)),  # until 01-05 03:00
                       _rows("b", "2020-01-04", 1, range(100, 148))], ignore_index=True)
    split = time_slice(frame, "b", rule)
    assert split.held.sum() == 25  # 01-05 23:00 back to 01-04 23:00, inclusive
    cut = pd.Timestamp(split.holdout_from)
    left = frame[~split.held & ~split.train]
    assert set(left["batch_id"]) == {"a"} and (left["event_timestamp"] >= cut).all()
    assert (frame[split.train]["event_timestamp"] < cut).all()


def test_a_holdout_taking_every_row_is_not_enough_data(spec):
    rule = spec.model_copy(update={"evaluation": EvaluationRule(holdout="30d")})
    with pytest.raises(NotEnoughData, match="no labelled row is older than the holdout cut"):
        time_slice(_rows("a", "2020-01-01", 1, range(50)), "a", rule)


def test_a_tiny_newest_micro_batch_widens_the_holdout_to_older_batches(spec):
    # a stream's batches: 3,000 + 1,100 events of one moment, then a 5-event tail sealed by the
    # clock. The newest alone would hold 1 row out (min_holdout_rows 200): the slice takes the
    # tail and the batch before it, and the yearly-sized batches alone are never widened.
    when = "2016-12-31"
    frame = pd.concat([_rows("s1", when, 1, range(3000)), _rows("s2", when, 1, range(3000, 4100)),
                       _rows("s3", when, 1, range(4100, 4105))], ignore_index=True)
    frame["event_timestamp"] = pd.Timestamp(when, tz="UTC")
    split = time_slice(frame, ("s1", "s2", "s3"), spec)
    assert split.held.sum() == round(0.2 * 1105)  # rows of one moment: split by key hash
    assert set(frame["batch_id"][split.held]) == set(split.holdout_batches) <= {"s2", "s3"}
    assert not (split.held & split.train).any() and split.train.sum() > 2000
    big = pd.concat([_rows("a", "2020-01-01", 1, range(2000)),
                     _rows("b", "2020-04-01", 1, range(2000, 3000))], ignore_index=True)
    alone = time_slice(big, ("a", "b"), spec)
    assert alone.holdout_batches == ("b",) and alone.held.sum() == 200


def test_load_part_detects_a_modified_file(loop, tmp_path):
    ref = loop.dataset
    copy = tmp_path / "train.parquet"
    shutil.copy(ref.train_uri, copy)
    assert len(load_part(str(copy), ref.train_hash)) == ref.train_rows
    frame = pd.read_parquet(copy)
    frame.loc[0, "employed"] = 1 - frame.loc[0, "employed"]
    frame.to_parquet(copy, index=False)
    with pytest.raises(ValueError, match="changed"):
        load_part(str(copy), ref.train_hash)


def test_dataset_ref_round_trips_through_a_dict(loop):
    assert DatasetRef.from_dict({**loop.dataset.to_dict(), "extra": 1}) == loop.dataset
