"""Materialize holds one chunk, not the batch: the chunked write equals the one-piece one."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlcore import features
from mlcore.feast.online import online_features
from mlcore.features import materialize_batch, write_offline_chunks
from mlcore.ingestion import ingest_batch
from tests.mlcore.feast.test_sqlite_online import table_dump


def _materialized(settings, spec, source) -> tuple:
    ingest_batch(spec, str(source), "b", settings)
    result = materialize_batch(spec, "b", settings)
    offline = pd.read_parquet(result.offline_uri)
    online = online_features(spec, offline["id"].tolist(), settings)
    return result, offline, online, table_dump(settings, spec)


def test_chunked_materialize_equals_one_piece(settings_factory, spec, slices, monkeypatch):
    whole = _materialized(settings_factory("one_piece"), spec, slices[2016])
    monkeypatch.setattr(features, "CHUNK_ROWS", 97)  # 16 chunks of the 1,500 rows
    chunked = _materialized(settings_factory("chunked"), spec, slices[2016])
    for a, b in zip(whole, chunked, strict=True):
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b)
        elif isinstance(a, list):  # the online table, byte for byte
            assert a == b and len(a) == 1500  # one wide row per entity
    assert (whole[0].rows, whole[0].window_start, whole[0].window_end) == (
        chunked[0].rows, chunked[0].window_start, chunked[0].window_end) == (
        1500, whole[0].window_start, whole[0].window_end)
    assert pq.ParquetFile(f"{chunked[0].offline_uri}/part-0.parquet").num_row_groups == 16


def test_chunks_with_their_own_dictionaries_write_plain_text(tmp_path):
    """Text columns arrive dictionary-encoded, each chunk with its own dictionary."""
    ts = [datetime(2020, 1, d, tzinfo=UTC) for d in (3, 1, 9, 2)]
    chunks = [pa.table({"event_timestamp": pa.array(ts[:2], pa.timestamp("us", tz="UTC")),
                        "c": pa.array(["a", "b"]).dictionary_encode()}),
              pa.table({"event_timestamp": pa.array(ts[2:], pa.timestamp("us", tz="UTC")),
                        "c": pa.array(["z", None]).dictionary_encode()})]
    dest = tmp_path / "features" / "problem=p" / "batch=b"
    record, rows, (low, high) = write_offline_chunks(iter(chunks), dest)
    back = pq.read_table(dest)
    assert back.column("c").to_pylist() == ["a", "b", "z", None]
    assert back.schema.field("c").type == pa.string()
    assert (rows, low, high) == (4, ts[1], ts[2]) and record["part-0.parquet"]["rows"] == 4
    with pytest.raises(ValueError, match="no rows"):
        write_offline_chunks(iter([]), tmp_path / "features" / "problem=p" / "batch=e")
    assert not (tmp_path / "features" / "problem=p" / "batch=e").exists()
