"""The bounded-memory paths the scale curve needed (benchmarks/BENCHMARKS.md, scale curve):
the point-in-time join split into entity-hash buckets, the streamed drift sample, and
``predict_proba`` in chunks. Each must give exactly what the one-piece path gives; the bucket
and chunk sizes are shrunk so that 1,500-row batches take the split paths."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlcore import scoring
from mlcore.data.io import read_curated
from mlcore.feast import bounded
from mlcore.feast.bounded import point_in_time_features
from mlcore.feast.retrieval import FeatureRetrievalError, historical_features
from mlcore.model.reference import sample_rows as _sample
from mlcore.model.registry import get_version, load_model
from mlcore.monitoring import sample_curated
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


def _curated_folder(root, rows: int) -> SimpleNamespace:
    """A Batch-like curated folder: three files of small row groups, plus files readers skip."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"id": np.arange(rows), "x": rng.normal(size=rows),
                          "c": rng.choice(["a", "b", "c"], size=rows)})
    root.mkdir()
    for i, part in enumerate(np.array_split(np.arange(rows), 3)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False),
                       root / f"part-{i}.parquet", row_group_size=97)
    (root / "_SUCCESS").write_text("")
    return SimpleNamespace(batch_id="b", problem="p", files=None, curated_uri=str(root))


@pytest.mark.parametrize("rows, seed", [(150, 0), (999, 3), (1000, 1), (5000, 0)])
def test_streamed_sample_is_dataframe_sample_of_the_whole_batch(tmp_path, rows, seed):
    batch = _curated_folder(tmp_path / "curated", 1000)
    want = _sample(read_curated(batch), rows, seed)
    got = sample_curated(batch, rows, seed)
    pd.testing.assert_frame_equal(got, want)
    assert len(got) == min(rows, 1000)


def test_chunked_predict_is_bit_identical_to_one_call(spec, loop, monkeypatch):
    from mlcore.model import evaluation

    batch = get_batch(spec.name, "2017", loop.settings.db_url)
    frame = read_curated(batch)
    model = load_model(get_version(spec.name, loop.contender.version, loop.settings.db_url),
                       loop.settings)
    whole = scoring._predict(model, frame, spec.feature_names)

    calls: list[int] = []
    real = evaluation.predict_proba
    monkeypatch.setattr(scoring, "predict_proba",
                        lambda m, x: calls.append(len(x)) or real(m, x))
    monkeypatch.setattr(scoring, "_PREDICT_ROWS", 400)
    chunked = scoring._predict(model, frame, spec.feature_names)

    assert calls == [400, 400, 400, 300]
    np.testing.assert_array_equal(chunked, whole)


def test_streamed_sample_reads_a_single_file_batch(tmp_path):
    """A curated URI may be one file (the bucketed join once listed folders only and returned
    no rows for it: the no-features test above caught that)."""
    folder = _curated_folder(tmp_path / "curated", 600)
    single = tmp_path / "one.parquet"
    read_curated(folder).to_parquet(single, index=False)
    batch = SimpleNamespace(batch_id="b", problem="p", files=None, curated_uri=str(single))
    pd.testing.assert_frame_equal(sample_curated(batch, 100, 2),
                                  _sample(read_curated(batch), 100, 2))
