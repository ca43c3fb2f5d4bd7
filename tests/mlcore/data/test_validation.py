"""Batch validation: row rules with names and 0-based row numbers, whole-batch rejection."""

from __future__ import annotations

import pandas as pd
import pytest

from mlcore.batches import BatchRejected
from mlcore.data.validation import required_columns, validate_rows
from mlcore.problems import ProblemSpec


@pytest.fixture
def spec(spec):
    """The census spec with the bad-row tolerance lifted: these tests look at single rows.

    The batch-level decision (tolerance, critical rules) is tested with the real spec below.
    """
    return ProblemSpec.model_validate({**spec.model_dump(),
                                       "validation": {"max_bad_row_share": 0.99}})


def frame(spec, n: int = 5) -> pd.DataFrame:
    """``n`` valid raw rows: ids 100.., year 2015, every feature at an allowed value."""
    data: dict[str, list] = {"id": list(range(100, 100 + n)), "year": [2015] * n}
    for feat in spec.features:
        data[feat.name] = [35.0] * n if feat.kind == "numeric" else [feat.values[-1]] * n
    data["employed"] = [i % 2 for i in range(n)]
    return pd.DataFrame(data)


def with_value(df: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    df[column] = df[column].astype(object)
    df.loc[row, column] = value
    return df


def test_a_clean_batch_is_all_valid(spec):
    result = validate_rows(frame(spec), spec, "b1")
    assert len(result.valid) == 5
    assert result.violations.empty and result.quarantined_rows == 0


@pytest.mark.parametrize("column, value, rule", [
    ("AGEP", 121.0, "AGEP_out_of_range"),
    ("AGEP", -1.0, "AGEP_out_of_range"),
    ("AGEP", None, "AGEP_not_finite"),
    ("AGEP", "old", "AGEP_not_finite"),
    ("AGEP", float("inf"), "AGEP_not_finite"),
    ("AGEP", float("nan"), "AGEP_not_finite"),
    ("SCHL", 25, "SCHL_not_allowed"),
    ("SEX", 3, "SEX_not_allowed"),
    ("SEX", "x", "SEX_not_allowed"),
    ("MAR", 1.5, "MAR_not_allowed"),
    ("RAC1P", None, "RAC1P_not_allowed"),
    ("id", None, "entity_key_missing"),
    ("year", None, "event_time_invalid"),
    ("year", "soon", "event_time_invalid"),
    ("year", 2200, "event_time_in_future"),
    ("employed", 2, "target_invalid"),
    ("employed", -1, "target_invalid"),
    ("employed", None, "target_invalid"),
])
def test_one_bad_value_quarantines_that_row_under_its_rule(spec, column, value, rule):
    df = with_value(frame(spec), 2, column, value)
    result = validate_rows(df, spec, "b1")
    assert result.violations[["row_number", "rule"]].values.tolist() == [[2, rule]]
    assert result.quarantined_rows == 1
    assert result.valid["id"].tolist() == [100, 101, 103, 104]


def test_string_categories_as_read_from_parquet_are_accepted(spec):
    df = frame(spec)
    df["SCHL"] = pd.Categorical(["16", "21", "1", "24", "0"])
    assert len(validate_rows(df, spec, "b1").valid) == 5


def test_duplicate_entity_and_event_time_quarantine_every_occurrence(spec):
    df = frame(spec)
    df.loc[3, "id"] = 101
    result = validate_rows(df, spec, "b1")
    assert sorted(result.violations["row_number"]) == [1, 3]
    assert set(result.violations["rule"]) == {"duplicate_entity_event_time"}
    assert result.valid["id"].tolist() == [100, 102, 104]


def test_the_same_entity_at_two_event_times_is_not_a_duplicate(spec):
    df = frame(spec)
    df.loc[3, "id"], df.loc[3, "year"] = 101, 2016
    assert validate_rows(df, spec, "b1").violations.empty


def test_bad_row_share_over_the_tolerance_rejects_with_every_reason(spec):
    strict = ProblemSpec.model_validate({**spec.model_dump(),
                                         "validation": {"max_bad_row_share": 0.2}})
    df = with_value(with_value(frame(spec, 8), 1, "AGEP", 500.0), 2, "SEX", 7)
    assert len(validate_rows(with_value(frame(spec, 8), 1, "AGEP", 500.0), strict, "ok").valid) == 7
    with pytest.raises(BatchRejected, match=r"batch 'b9'.*2 of 8 rows \(25.0%\).*"
                                            r"AGEP_out_of_range=1, SEX_not_allowed=1"):
        validate_rows(df, strict, "b9")


def test_a_critical_rule_rejects_even_one_bad_row(spec):
    critical = ProblemSpec.model_validate({**spec.model_dump(), "validation": {
        "max_bad_row_share": 0.99, "critical_rules": ["target_invalid"]}})
    with pytest.raises(BatchRejected, match="critical rules fired: target_invalid"):
        validate_rows(with_value(frame(spec), 0, "employed", 5), critical, "b1")


def test_undeclared_columns_reject_the_batch_unless_ignored(spec):
    with pytest.raises(BatchRejected, match=r"batch 'b1': undeclared columns \['surprise'\]"):
        validate_rows(frame(spec).assign(surprise=1), spec, "b1")
    lenient = ProblemSpec.model_validate({**spec.model_dump(), "validation": {
        "max_bad_row_share": 0.99, "extra_columns": "ignore"}})
    assert len(validate_rows(frame(spec).assign(surprise=1), lenient, "b1").valid) == 5


def test_row_number_is_the_input_position_not_the_index_label(spec):
    df = frame(spec)
    df.index = [50, 40, 30, 20, 10]
    result = validate_rows(with_value(df, 20, "AGEP", 500.0), spec, "b1")
    assert result.violations["row_number"].tolist() == [3]


def test_a_row_breaking_two_rules_is_reported_twice_and_counted_once(spec):
    df = with_value(with_value(frame(spec), 4, "SEX", 7), 4, "employed", 9)
    result = validate_rows(df, spec, "b1")
    assert sorted(result.violations["rule"]) == ["SEX_not_allowed", "target_invalid"]
    assert set(result.violations["row_number"]) == {4}
    assert result.quarantined_rows == 1
    assert all(result.violations["reason"].str.len() > 0)


@pytest.mark.parametrize("column", ["id", "year", "AGEP", "SCHL", "RAC1P"])
def test_a_missing_required_column_rejects_the_batch_naming_batch_and_column(spec, column):
    df = frame(spec).drop(columns=[column])
    with pytest.raises(BatchRejected, match=column) as exc:
        validate_rows(df, spec, "b-missing")
    assert "'b-missing'" in str(exc.value)


def test_required_columns_are_key_event_time_and_features_without_the_target(spec):
    assert required_columns(spec) == ["id", "year", *spec.feature_names]


def test_an_empty_batch_is_rejected(spec):
    with pytest.raises(BatchRejected, match="no rows"):
        validate_rows(frame(spec).iloc[:0], spec, "b-empty")


def test_a_batch_whose_every_row_is_bad_is_rejected(spec):
    df = frame(spec)
    df["AGEP"] = 999.0
    with pytest.raises(BatchRejected, match="every one of 5 rows") as exc:
        validate_rows(df, spec, "b-bad")
    assert "'b-bad'" in str(exc.value)


def test_the_target_column_is_optional(spec):
    result = validate_rows(frame(spec).drop(columns=["employed"]), spec, "unlabelled")
    assert len(result.valid) == 5 and result.violations.empty
    assert "employed" not in result.valid.columns


@pytest.mark.parametrize("year", [99999, -5, 2015.5])
def test_a_year_that_is_not_a_calendar_year_is_quarantined(spec, year):
    result = validate_rows(with_value(frame(spec), 1, "year", year), spec, "b1")
    assert result.violations[["row_number", "rule"]].values.tolist() == [[1, "event_time_invalid"]]


@pytest.mark.parametrize("key", ["abc", 1.5])
def test_a_key_that_is_not_an_int64_is_quarantined(spec, key):
    df = with_value(frame(spec), 1, "id", key)
    df.loc[0, "id"] = 1
    result = validate_rows(df, spec, "b1")
    assert 1 in set(result.violations["row_number"])
    assert key not in result.valid["id"].tolist()


@pytest.fixture
def ts_spec(spec):
    """The census spec with a timestamp event-time column ``ts`` instead of a year."""
    return ProblemSpec.model_validate({**spec.model_dump(),
                                       "event_time": {"column": "ts", "kind": "timestamp"}})


def test_a_timestamp_event_time_quarantines_unparseable_values(ts_spec):
    df = frame(ts_spec).drop(columns=["year"])
    df["ts"] = ["2020-01-01 00:00:00", "2020-06-01 12:30:00", "not a date", None,
                "2020-02-30 00:00:00"]
    result = validate_rows(df, ts_spec, "b1")
    assert result.violations[["row_number", "rule"]].values.tolist() == [
        [2, "event_time_invalid"], [3, "event_time_invalid"], [4, "event_time_invalid"]]


def test_a_timestamp_event_time_accepts_every_iso_8601_shape(ts_spec):
    df = frame(ts_spec, n=3).drop(columns=["year"])
    df["ts"] = ["2020-01-01", "2020-06-01 12:00:00+02:00", "2020-03-01T08:00:00Z"]
    result = validate_rows(df, ts_spec, "b1")
    assert result.violations.empty and len(result.valid) == 3


# The fast paths (profile-guided, see benchmarks/BENCHMARKS.md) must quarantine exactly what the
# plain row-by-row versions would.

@pytest.mark.parametrize("values", [
    pd.Series(["1", "2", "x", None, "2", "3.5"], dtype="category"),
    pd.Series([1, 2, 3, 2]),
    pd.Series([1.5, float("inf"), None, 3.0]),
    pd.Series(["4", 5, "five", None, 6.25], dtype=object),
    pd.Series([True, False]),
])
def test_numeric_matches_row_by_row_parsing(values):
    from mlcore.data.parsing import numeric

    expected = pd.to_numeric(values.astype("object"), errors="coerce").astype("float64")
    pd.testing.assert_series_equal(numeric(values), expected, check_names=False)


def test_duplicate_mask_matches_pandas_duplicated():
    import numpy as np

    from mlcore.data.validation import duplicate_mask

    rng = np.random.default_rng(0)
    keys = pd.Series(rng.integers(0, 300, 2000).astype("float64"))
    keys[rng.integers(0, 2000, 50)] = np.nan
    times = pd.Series(pd.to_datetime(rng.choice(["2015-12-31", "2016-12-31"], 2000), utc=True))
    times[rng.integers(0, 2000, 30)] = pd.NaT
    pairs = pd.DataFrame({"k": keys, "t": times})
    expected = (pairs.duplicated(keep=False) & pairs.notna().all(axis=1)).to_numpy()
    assert (duplicate_mask(keys, times) == expected).all() and expected.any()
