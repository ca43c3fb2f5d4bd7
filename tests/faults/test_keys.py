"""Entity keys are exact or refused: integer keys never go through float64 (CSV included),
keys that do not fit int64 are quarantined (never wrapped), string keys are kept as written."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from one_feature_problem import one_feature_spec
from sqlalchemy import select

from mlcore.data.io import read_curated
from mlcore.data.label_files import clean_labels, read_labels
from mlcore.ingestion import ingest_batch
from mlcore.problems import ProblemSpec
from mlcore.store.catalog import get_batch
from mlcore.store.models import QuarantinedRow
from mlcore.store.session import session_scope

BIG = 2**53 + 1  # 9007199254740993: float64 turns it into ...992


def key_spec(dtype: str = "int64") -> ProblemSpec:
    return one_feature_spec("keys", dtype)


def write_csv(path, keys: list[str]) -> str:
    """A CSV written by hand: key cells exactly as given ('' is an empty cell)."""
    lines = ["id,at,size,y"] + [f"{k},2024-03-01 00:00:00,{i % 7},{'yes' if i % 2 else 'no'}"
                                for i, k in enumerate(keys)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def quarantine(settings, spec) -> dict[int, tuple[str, str]]:
    with session_scope(settings.db_url) as s:
        rows = s.scalars(select(QuarantinedRow).where(QuarantinedRow.problem == spec.name))
        return {r.row_number: (r.rule, r.reason) for r in rows}


def curated_ids(settings, spec, batch_id: str) -> list:
    return read_curated(get_batch(spec.name, batch_id, settings.db_url))["id"].tolist()


def test_csv_keys_above_2_53_with_an_empty_cell_stay_exact(settings, tmp_path):
    spec = key_spec()
    keys = [str(BIG + 2 * i) for i in range(20)]
    keys[5] = ""
    m = ingest_batch(spec, write_csv(tmp_path / "b.csv", keys), "b", settings)
    assert (m.published_rows, m.quarantine_count) == (19, 1)
    assert curated_ids(settings, spec, "b") == [int(k) for k in keys if k]
    assert quarantine(settings, spec) == {5: ("entity_key_missing", "id is null")}


def test_parquet_int_keys_above_2_53_with_a_null_stay_exact(settings, tmp_path):
    spec = key_spec()
    keys = [BIG + 2 * i for i in range(20)]
    table = pa.table({"id": pa.array(keys[:3] + [None] + keys[4:], pa.int64()),
                      "at": ["2024-03-01 00:00:00"] * 20, "size": [1.0] * 20,
                      "y": ["yes", "no"] * 10})
    pq.write_table(table, tmp_path / "b.parquet")
    m = ingest_batch(spec, str(tmp_path / "b.parquet"), "b", settings)
    assert (m.published_rows, m.quarantine_count) == (19, 1)
    assert curated_ids(settings, spec, "b") == keys[:3] + keys[4:]


def test_keys_outside_int64_are_quarantined_not_wrapped(settings, tmp_path):
    spec = key_spec()
    keys = [str(i) for i in range(1, 21)]
    keys[2] = str(2**63)  # one above int64 max
    keys[4] = str(-(2**63) - 1)
    keys[6] = str(2**63 - 1)  # the bounds themselves are keys
    keys[8] = str(-(2**63))
    keys[10], keys[12] = "1.5", "abc"
    m = ingest_batch(spec, write_csv(tmp_path / "b.csv", keys), "b", settings)
    assert (m.published_rows, m.quarantine_count) == (16, 4)
    ids = curated_ids(settings, spec, "b")
    assert ids == [int(k) for i, k in enumerate(keys) if i not in (2, 4, 10, 12)]
    assert -(2**63) in ids and 2**63 - 1 in ids
    found = quarantine(settings, spec)
    assert sorted(found) == [2, 4, 10, 12]
    assert {rule for rule, _ in found.values()} == {"entity_key_invalid"}
    assert found[2][1] == f"id '{2**63}' is outside the int64 range [{-(2**63)}, {2**63 - 1}]"
    assert "outside the int64 range" in found[4][1] and str(-(2**63) - 1) in found[4][1]
    assert found[10][1] == "id '1.5' is not an integer"
    assert found[12][1] == "id 'abc' is not an integer"


def test_negative_and_signed_keys_are_exact(settings, tmp_path):
    spec = key_spec()
    keys = [str(-BIG - 2 * i) for i in range(10)] + ["+7", " 8 ", "-0", ""]
    m = ingest_batch(spec, write_csv(tmp_path / "b.csv", keys), "b", settings)
    assert (m.published_rows, m.quarantine_count) == (13, 1)  # the empty one
    assert curated_ids(settings, spec, "b") == [-BIG - 2 * i for i in range(10)] + [7, 8, 0]


def test_a_float_key_is_valid_only_when_exact(settings, tmp_path):
    spec = key_spec()
    keys = [float(i) for i in range(10)] + [2.0**53, 2.0**53 + 2, 0.5]
    pd.DataFrame({"id": keys, "at": "2024-03-01 00:00:00", "size": 1.0,
                  "y": ["yes", "no", "yes"] * 4 + ["no"]}).to_parquet(tmp_path / "b.parquet")
    m = ingest_batch(spec, str(tmp_path / "b.parquet"), "b", settings)
    assert (m.published_rows, m.quarantine_count) == (11, 2)
    assert curated_ids(settings, spec, "b") == list(range(10)) + [2**53]
    found = quarantine(settings, spec)
    assert "float beyond 2**53" in found[11][1] and "not an integer" in found[12][1]


def test_string_keys_keep_unicode_and_leading_zeros(settings, tmp_path):
    spec = key_spec("string")
    keys = ["007", "7", "0007", "ключ-1", "キー", "ümlaut", "00", "1e3", str(2**64), "-0"]
    m = ingest_batch(spec, write_csv(tmp_path / "b.csv", keys), "b", settings)
    assert (m.published_rows, m.quarantine_count) == (10, 0)
    assert curated_ids(settings, spec, "b") == keys
    labels = tmp_path / "labels.csv"
    labels.write_text("id,y\n" + "".join(f"{k},yes\n" for k in keys), encoding="utf-8")
    got = clean_labels(read_labels(labels, spec, "b"), spec, "b")
    assert got["entity_key"].tolist() == keys


def test_label_keys_above_2_53_match_exactly(tmp_path):
    """A regression guard (all-valid integer CSVs were already exact)."""
    spec = key_spec()
    labels = tmp_path / "labels.csv"
    keys = [BIG + 2 * i for i in range(5)] + [2**63 - 1]
    labels.write_text("id,y\n" + "".join(f"{k},yes\n" for k in keys))
    got = clean_labels(read_labels(labels, spec, "b"), spec, "b")
    assert got["entity_key"].tolist() == [str(k) for k in keys]


@pytest.mark.parametrize("bad", [str(2**63), "", "1.5"])
def test_a_label_key_that_does_not_fit_refuses_the_file(tmp_path, bad):
    from mlcore.data.label_files import LabelsRejected

    spec = key_spec()
    labels = tmp_path / "labels.csv"
    labels.write_text(f"id,y\n{BIG},yes\n{bad},no\n")
    with pytest.raises(LabelsRejected, match="1 rows have id missing or not a valid int64"):
        clean_labels(read_labels(labels, spec, "b"), spec, "b")
