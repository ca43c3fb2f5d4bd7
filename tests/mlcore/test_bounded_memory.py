"""The bounded-memory paths the scale curve needed (benchmarks/BENCHMARKS.md, scale curve):
the streamed drift sample and ``predict_proba`` in chunks (the bucketed point-in-time join:
tests/mlcore/feast/test_bounded.py). Each must give exactly what the one-piece path gives; the
chunk sizes are shrunk so that 1,500-row batches take the split paths."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlcore import scoring
from mlcore.data.io import read_curated
from mlcore.model.reference import sample_rows as _sample
from mlcore.model.registry import get_version, load_model
from mlcore.monitoring import sample_curated
from mlcore.store.catalog import get_batch


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
