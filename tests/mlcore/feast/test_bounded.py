"""The point-in-time join split into entity-hash buckets (``mlcore.feast.bounded``, the scale
curve in benchmarks/BENCHMARKS.md) gives exactly what Feast's join in one piece gives; the bucket
size is shrunk so that 1,500-row batches take the split path."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from mlcore.data.io import read_curated
from mlcore.feast import bounded
from mlcore.feast.bounded import point_in_time_features
from mlcore.feast.retrieval import FeatureRetrievalError, historical_features
from mlcore.store.catalog import get_batch


@pytest.fixture
def buckets(monkeypatch) -> list[int]:
    """Buckets of at most 700 rows; records how many entity rows each Feast join was given."""
    calls: list[int] = []
    real = bounded._join_bucket

    def counting(store, view, refs, entity_file, has_offline_rows):
        out = real(store, view, refs, entity_file, has_offline_rows)
        calls.append(out[1])
        return out

    monkeypatch.setattr(bounded, "PIT_BUCKET_ROWS", 700)
    monkeypatch.setattr(bounded, "_join_bucket", counting)
    return calls


@pytest.mark.parametrize("with_target", [True, False])
def test_bucketed_join_equals_feasts_join_in_one_piece(spec, loop, buckets, with_target):
    batches = [get_batch(spec.name, b, loop.settings.db_url) for b in ("2017", "2015", "2016")]
    want = historical_features(spec, batches, loop.settings, with_target)
    assert buckets == []  # the one-piece reference did not go through the buckets

    got = point_in_time_features(spec, batches, loop.settings, with_target)

    # at least ceil(4500 / 700) buckets (more when other tests materialized more offline rows)
    assert len(buckets) >= 7 and sum(buckets) == 4500
    pd.testing.assert_frame_equal(got, want)
    assert got["batch_id"].tolist() == ["2017"] * 1500 + ["2015"] * 1500 + ["2016"] * 1500


def test_bucketed_join_leaves_no_temporary_files(spec, loop, buckets):
    batches = [get_batch(spec.name, "2015", loop.settings.db_url)]
    point_in_time_features(spec, batches, loop.settings)
    assert buckets and not list((loop.settings.home / "tmp").iterdir())


def test_bucketed_join_names_the_batch_when_a_row_has_no_features(spec, loop, buckets,
                                                                  tmp_path):
    rows = read_curated(get_batch(spec.name, "2015", loop.settings.db_url), ["id"])
    when = [pd.Timestamp("2015-12-31", tz="UTC")] * len(rows)
    when[5] = pd.Timestamp("2015-12-30", tz="UTC")  # before its features existed
    path = tmp_path / "probe.parquet"
    pd.DataFrame({"id": rows["id"], "event_timestamp": when}).to_parquet(path, index=False)
    probe = SimpleNamespace(batch_id="probe", problem="p", files=None, curated_uri=str(path))

    with pytest.raises(FeatureRetrievalError, match="batches probe .* 1 of 1500 rows"):
        point_in_time_features(spec, [probe], loop.settings, with_target=False)
    assert len(buckets) > 1
