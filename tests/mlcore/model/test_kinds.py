"""Column kinds and target kinds (issue 13): specs, validation, curation, encoding, metrics and
pipelines for string/int/bool categories, booleans, timestamps, nullable inputs, and binary,
multiclass and regression targets."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from mlcore.columns import category_values, label_key, parse_bool, vocabulary_codes
from mlcore.data.curation import curate
from mlcore.data.target_coding import local_coder
from mlcore.data.validation import row_violations, validate_rows
from mlcore.model.metrics import compute_metrics, metric, paired_bootstrap
from mlcore.model.preprocessing import build_pipeline, missing_values_plan
from mlcore.model.targets import predict
from mlcore.problems import ProblemSpec

NOW = datetime(2030, 1, 1, tzinfo=UTC)

SPEC = """
name: toy
entity: {name: thing, key: id}
event_time: {column: at, kind: timestamp}
target: {name: y, kind: binary, positive: "yes"}
features:
  - {name: colour, kind: categorical, values: [red, green, "0 - 20K €"]}
  - {name: size, kind: numeric, min: 0, nullable: true}
  - {name: flag, kind: boolean}
  - {name: seen, kind: timestamp, parts: [hour, day_of_week, month]}
  - {name: grade, kind: categorical, values: [1, 2, 3], unknown: other}
algorithms:
  lr: {estimator: sklearn.linear_model.LogisticRegression, preprocessing: one_hot}
  hgb: {estimator: sklearn.ensemble.HistGradientBoostingClassifier, preprocessing: ordinal,
        params: {max_iter: 20}}
promotion: {min_metric: 0.5}
"""


def toy(**changes) -> ProblemSpec:
    data = yaml.safe_load(SPEC)
    data.update(changes)
    return ProblemSpec.model_validate(data)


def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "0 - 20K €"], n)
    size = rng.normal(10, 3, n).clip(0)
    size[::10] = np.nan
    y = np.where((colour == "red") ^ (rng.random(n) < 0.2), "yes", "no")
    return pd.DataFrame({
        "id": np.arange(n),
        "at": [f"2024-03-{1 + i % 28:02d} {i % 24:02d}:00:00" for i in range(n)],
        "colour": colour, "size": size, "flag": rng.choice(["true", "False", "YES", "0"], n),
        "seen": pd.date_range("2024-01-01", periods=n, freq="7h").astype(str),
        "grade": rng.choice([1, 2, 3], n), "y": y})


# ------------------------------------------------------------------------------- spec checks

@pytest.mark.parametrize("change, needle", [
    ({"metric": {"name": "rmse"}}, "allowed: roc_auc"),
    ({"metric": {"name": "roc_auc", "direction": "minimize"}}, "is to maximize"),
    ({"target": {"name": "y", "kind": "regression"}}, "not a regressor"),
    ({"target": {"name": "y", "kind": "multiclass", "positive": "a"}}, "binary targets only"),
    ({"target": {"name": "y", "kind": "binary", "classes": ["a", "b", "c"]}}, "exactly 2"),
    ({"features": [{"name": "c", "kind": "categorical", "values": ["a", 1]}]}, "mix types"),
    ({"features": [{"name": "t", "kind": "timestamp"}]}, "needs its parts"),
    ({"features": [{"name": "b", "kind": "boolean", "values": [True]}]}, "categorical features"),
])
def test_a_spec_that_does_not_fit_its_kinds_is_refused_saying_what_is_allowed(change, needle):
    with pytest.raises(ValueError, match=needle):
        toy(**change)


def test_metric_direction_is_implied_and_each_kind_has_a_default():
    assert (toy().metric.name, toy().metric.direction) == ("roc_auc", "maximize")
    regression = toy(target={"name": "y", "kind": "regression"}, algorithms={
        "r": {"estimator": "sklearn.linear_model.Ridge"}})
    assert (regression.metric.name, regression.metric.direction) == ("rmse", "minimize")
    multi = toy(target={"name": "y", "kind": "multiclass"}, metric={"name": "f1_macro"})
    assert multi.metric.direction == "maximize"


def test_timestamp_features_expand_into_their_parts_as_numeric_model_columns():
    spec = toy()
    assert spec.inputs == ["colour", "size", "flag", "seen", "grade"]
    assert spec.feature_names == ["colour", "size", "flag", "seen_hour", "seen_day_of_week",
                                  "seen_month", "grade"]
    assert spec.categorical == ["colour", "flag", "grade"]
    assert spec.numeric == ["size", "seen_hour", "seen_day_of_week", "seen_month"]


# ------------------------------------------------------------------------- matching values

def test_labels_match_whatever_their_scalar_type():
    assert [label_key(v) for v in (3, 3.0, np.int64(3), "3", True, " red ")] == [
        "3", "3", "3", "3", "true", "red"]
    # YAML reads yes/no as booleans: a boolean vocabulary also matches their text forms
    codes = vocabulary_codes(pd.Series(["yes", "NO", "true", 0, None, "maybe"]), [False, True])
    assert codes.tolist()[:4] == [1.0, 0.0, 1.0, 0.0] and np.isnan(codes[4:]).all()
    assert parse_bool(pd.Series(["Y", "f", 1, "x", None])).tolist() == [True, False, True, None,
                                                                         None]


def test_unknown_other_keeps_a_value_of_the_vocabulary_type():
    got = category_values(pd.Series([1, 2.0, 7, "8", "x", None]), [1, 2, 3], "int")
    assert got.tolist() == [1, 2, 7, 8, None, None]
    assert category_values(pd.Series([" red", "blue"]), ["red"], "str").tolist() == ["red",
                                                                                      "blue"]


# ------------------------------------------------------------------------------- validation

def _rules(df: pd.DataFrame, spec: ProblemSpec) -> dict[int, set[str]]:
    _, v = row_violations(df, spec, NOW)
    return {int(r): set(g["rule"]) for r, g in v.groupby("row_number")}


def test_each_kind_quarantines_its_own_bad_values_and_lets_declared_nulls_through():
    df = frame(8)
    df.loc[0, "size"] = np.nan          # nullable: data, not a bad row
    df.loc[1, "colour"] = "blue"         # outside the vocabulary
    df.loc[2, "flag"] = "perhaps"        # not a boolean
    df.loc[3, "seen"] = "not a time"     # not a timestamp
    df.loc[4, "grade"] = 9               # unknown, but `unknown: other`: kept
    df.loc[5, "y"] = "maybe"             # a label outside the two
    df.loc[6, "flag"] = None             # a missing non-nullable boolean
    df.loc[7, "size"] = "big"            # present but not a number
    assert _rules(df, toy()) == {1: {"colour_not_allowed"}, 2: {"flag_invalid"},
                                 3: {"seen_invalid"}, 5: {"target_invalid"},
                                 6: {"flag_missing"}, 7: {"size_not_finite"}}
    strict = toy(features=[{"name": "colour", "kind": "categorical", "values": ["red"]},
                           {"name": "size", "kind": "numeric"}, {"name": "flag", "kind": "boolean"},
                           {"name": "seen", "kind": "timestamp", "parts": ["hour"]},
                           {"name": "grade", "kind": "categorical", "values": [1, 2, 3]}])
    rules = _rules(df.iloc[[0, 4]].reset_index(drop=True), strict)
    assert rules[0] >= {"size_not_finite"} and "grade_not_allowed" in rules[1]


def test_curated_rows_keep_real_types_and_encode_the_target():
    spec = toy()
    df = frame(50)
    df.loc[3, "grade"] = 7  # unknown: other
    out = curate(validate_rows(df, spec, "b1", NOW).valid, spec)
    assert out["colour"].map(type).eq(str).all() and out["flag"].dtype == bool
    assert out["grade"].tolist()[3] == 7 and out["size"].isna().sum() == 5
    assert out["seen_hour"].tolist()[:3] == [0.0, 7.0, 14.0]
    assert set(out["y"]) == {0, 1} and (out["y"] == (df["y"] == "yes")).all()


@pytest.mark.parametrize("labels, positive, want", [
    ([0, 1, 1, 0], None, [0, 1, 1, 0]),
    ([True, False, True, True], None, [1, 0, 1, 1]),
    (["no", "yes", "yes", "no"], "yes", [0, 1, 1, 0]),
    (["cat", "dog", "dog", "cat"], "cat", [1, 0, 0, 1]),
])
def test_binary_targets_take_any_two_labels(labels, positive, want):
    spec = toy(target={"name": "y", "kind": "binary", "positive": positive})
    assert local_coder(spec, pd.Series(labels)).encode(pd.Series(labels)).tolist() == want


def test_multiclass_classes_are_learnt_sorted_or_declared_in_order():
    learnt = toy(target={"name": "y", "kind": "multiclass"}, metric={"name": "log_loss"})
    coder = local_coder(learnt, pd.Series(["b", "a", "c", "a"]))
    assert coder.class_names == ["a", "b", "c"]
    assert coder.encode(pd.Series(["c", "a", "z"])).tolist()[:2] == [2.0, 0.0]
    declared = toy(target={"name": "y", "kind": "multiclass", "classes": ["c", "b", "a"]},
                   metric={"name": "log_loss"})
    assert local_coder(declared, pd.Series(["a"])).encode(pd.Series(["a", "c"])).tolist() == [
        2.0, 0.0]


# -------------------------------------------------------------------------------- pipelines

@pytest.mark.parametrize("algorithm, how", [("lr", "imputed"), ("hgb", "passed as NaN")])
def test_nullable_numerics_reach_every_estimator_and_the_choice_is_recorded(algorithm, how):
    spec = toy()
    data = curate(validate_rows(frame(), spec, "b1", NOW).valid, spec)
    assert missing_values_plan(spec, spec.algorithms[algorithm])["size"].startswith(how)
    pipe = build_pipeline(spec, algorithm, seed=0).fit(data[spec.feature_names], data["y"])
    from mlcore.model.targets import mark

    p = predict(mark(pipe, "binary", ["no", "yes"]), data[spec.feature_names])
    assert p.shape == (len(data),) and np.isfinite(p).all()
    assert metric("roc_auc", data["y"].to_numpy(), p) > 0.7


def test_string_categories_and_integer_codes_give_the_same_model(spec, slices):
    """The census spec with SEX and MAR decoded to their labels: bit-identical predictions."""
    sex = {1: "male", 2: "female"}
    mar = {1: "married", 2: "widowed", 3: "divorced", 4: "separated", 5: "never married"}
    raw = pd.read_parquet(slices[2015])
    data = spec.model_dump()
    for f in data["features"]:
        if f["name"] in ("SEX", "MAR"):
            f["values"] = [(sex if f["name"] == "SEX" else mar)[v] for v in f["values"]]
    decoded = ProblemSpec.model_validate(data)
    text = raw.assign(SEX=raw["SEX"].astype(int).map(sex), MAR=raw["MAR"].astype(int).map(mar))
    a = curate(validate_rows(raw, spec, "ints", NOW).valid, spec)
    b = curate(validate_rows(text, decoded, "strings", NOW).valid, decoded)
    assert b["SEX"].map(type).eq(str).all() and len(a) == len(b) == len(raw)
    for algorithm in ("logistic_regression", "hist_gradient_boosting"):
        fit_a = build_pipeline(spec, algorithm, 3).fit(a[spec.feature_names], a["employed"])
        fit_b = build_pipeline(decoded, algorithm, 3).fit(b[spec.feature_names], b["employed"])
        assert np.array_equal(fit_a.predict_proba(a[spec.feature_names]),
                              fit_b.predict_proba(b[spec.feature_names])), algorithm


# ---------------------------------------------------------------------------------- metrics

def _data(kind: str, n: int = 600, seed: int = 1):
    rng = np.random.default_rng(seed)
    if kind == "binary":
        y = rng.integers(0, 2, n)
        return y, np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    if kind == "multiclass":
        y = rng.integers(0, 3, n)
        p = rng.random((n, 3)) + np.eye(3)[y]
        return y, p / p.sum(axis=1, keepdims=True)
    y = rng.normal(100, 20, n)
    return y, y + rng.normal(0, 5, n)


SKLEARN = {
    ("binary", "roc_auc"): lambda y, p, w: skm.roc_auc_score(y, p, sample_weight=w),
    ("binary", "pr_auc"): lambda y, p, w: skm.average_precision_score(y, p, sample_weight=w),
    ("binary", "log_loss"): lambda y, p, w: skm.log_loss(y, p, sample_weight=w),
    ("binary", "brier"): lambda y, p, w: skm.brier_score_loss(y, p, sample_weight=w),
    ("binary", "accuracy"): lambda y, p, w: skm.accuracy_score(y, p >= 0.5, sample_weight=w),
    ("binary", "f1"): lambda y, p, w: skm.f1_score(y, p >= 0.5, sample_weight=w),
    ("multiclass", "log_loss"): lambda y, p, w: skm.log_loss(y, p, sample_weight=w),
    ("multiclass", "accuracy"): lambda y, p, w: skm.accuracy_score(y, p.argmax(1),
                                                                   sample_weight=w),
    ("multiclass", "f1_macro"): lambda y, p, w: skm.f1_score(y, p.argmax(1), average="macro",
                                                             sample_weight=w),
    ("multiclass", "roc_auc_ovr"): lambda y, p, w: skm.roc_auc_score(
        y, p, multi_class="ovr", average="macro", sample_weight=w),
    ("regression", "rmse"): lambda y, p, w: skm.root_mean_squared_error(y, p, sample_weight=w),
    ("regression", "mae"): lambda y, p, w: skm.mean_absolute_error(y, p, sample_weight=w),
    ("regression", "r2"): lambda y, p, w: skm.r2_score(y, p, sample_weight=w),
    ("regression", "mape"): lambda y, p, w: skm.mean_absolute_percentage_error(
        y, p, sample_weight=w),
}


@pytest.mark.parametrize("kind, name", sorted(SKLEARN))
def test_every_metric_agrees_with_scikit_learn_with_and_without_weights(kind, name):
    y, p = _data(kind)
    w = np.random.default_rng(2).integers(0, 4, len(y)).astype(float)
    assert metric(name, y, p, kind) == pytest.approx(SKLEARN[kind, name](y, p, None), rel=1e-6)
    assert metric(name, y, p, kind, w) == pytest.approx(SKLEARN[kind, name](y, p, w), rel=1e-6)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_paired_bootstrap_of_any_kind_is_seeded_and_brackets_the_delta(kind):
    y, good = _data(kind)
    _, poor = _data(kind, seed=7)
    poor = (good + poor) / 2
    name = {"binary": "log_loss", "multiclass": "roc_auc_ovr", "regression": "mae"}[kind]
    low, high = paired_bootstrap(y, good, poor, name, 200, 0.95, seed=3, kind=kind)
    delta = metric(name, y, good, kind) - metric(name, y, poor, kind)
    assert low <= delta <= high and low < high
    assert paired_bootstrap(y, good, poor, name, 200, 0.95, seed=3, kind=kind) == (low, high)
    assert set(compute_metrics(y, good, kind)) == set(
        {"binary": ["roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "f1"],
         "multiclass": ["log_loss", "accuracy", "f1_macro", "roc_auc_ovr"],
         "regression": ["rmse", "mae", "r2", "mape"]}[kind])


def test_nullable_text_and_booleans_reach_both_feature_stores_as_missing(tmp_path, monkeypatch):
    """Strings and bools keep their Feast types and their missing values, offline and online."""
    import os
    from pathlib import Path

    from mlcore.config import Settings
    from mlcore.feast.online import online_feature_rows as rows_of
    from mlcore.feast.store import apply_definitions, feature_store
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.store.session import upgrade

    for var in ("MLCORE_PROBLEMS_DIR", "MLCORE_HOME"):  # Feast's env, restored afterwards
        monkeypatch.setenv(var, os.environ.get(var, "unset"))
        if os.environ[var] == "unset":
            monkeypatch.delenv(var)
    root = Path(__file__).resolve().parents[3]
    data = yaml.safe_load(SPEC)
    data["features"][0].update(nullable=True)  # colour
    data["features"][2].update(nullable=True)  # flag
    (tmp_path / "problems").mkdir()
    (tmp_path / "problems" / "toy.yaml").write_text(yaml.safe_dump(data))
    spec = ProblemSpec.model_validate(data)
    settings = Settings(home=tmp_path / "home", problems_dir=tmp_path / "problems",
                        feature_repo=root / "feature_repo")
    settings.home.mkdir()
    upgrade(settings.db_url)
    apply_definitions(settings)
    df = frame(40)
    df.loc[[1, 2], "colour"] = None
    df.loc[[2, 3], "flag"] = None
    df["at"] = "2024-03-01 00:00:00"
    df.to_parquet(tmp_path / "b1.parquet")
    assert ingest_batch(spec, str(tmp_path / "b1.parquet"), "b1", settings).quarantine_count == 0
    materialize_batch(spec, "b1", settings)
    types = {f.name: str(f.dtype) for f in
             feature_store(settings).get_feature_view(spec.feature_view).features}
    assert (types["colour"], types["flag"], types["grade"]) == ("String", "Bool", "Int64")
    offline = pd.read_parquet(settings.partition("features", spec.name, "b1"))
    assert offline["colour"].isna().tolist()[:4] == [False, True, True, False]
    got = rows_of(spec, [0, 1, 2, 3], settings)
    cols = spec.feature_names
    assert [r[cols.index("colour")] for r in got] == [df.at[0, "colour"], None, None,
                                                      df.at[3, "colour"]]
    flags = [r[cols.index("flag")] for r in got]
    assert flags[2:] == [None, None] and all(isinstance(f, int) for f in flags[:2])


def test_a_reference_profile_with_integer_codes_compares_with_text_categories(spec, slices,
                                                                              tmp_path):
    """Profiles written before categories were kept as text still judge drift (no mismatch)."""
    import hashlib
    from types import SimpleNamespace

    from mlcore.model.drift import check_columns, comparable, stattests
    from mlcore.monitoring import _reference

    old = curate(pd.read_parquet(slices[2015]), spec)[spec.feature_names]  # int64 codes
    old.assign(prediction=0.5).to_parquet(tmp_path / "reference.parquet")
    data = (tmp_path / "reference.parquet").read_bytes()
    mv = SimpleNamespace(version=1, reproducibility={"reference_profile": {
        "uri": str(tmp_path / "reference.parquet"), "sha256": hashlib.sha256(data).hexdigest()}})
    reference, source = _reference(spec, mv, None, None, "b")
    assert source["source"] == "profile"
    current = comparable(curate(pd.read_parquet(slices[2016]), spec), spec)
    tests = {c: stattests(spec)[c] for c in spec.feature_names}
    check_columns(reference, current, tests, "b")  # same kinds on both sides: no failure


def test_a_first_batch_with_only_the_positive_label_fixes_no_classes(sqlite_settings, tmp_path):
    """Binary classes learnt from data need two labels: until a batch has them nothing is fixed
    (no stand-in for the unseen label is stored)."""
    from mlcore.data.target_coding import stored_classes
    from mlcore.ingestion import ingest_batch

    spec = toy()
    df = frame(60)
    df["y"] = "yes"
    df.to_parquet(tmp_path / "b1.parquet")
    m = ingest_batch(spec, str(tmp_path / "b1.parquet"), "b1", sqlite_settings, now=NOW)
    assert (m.published_rows, m.quarantine_count) == (60, 0)
    assert stored_classes(spec.name, sqlite_settings.db_url) is None
    df["y"] = ["yes", "no"] * 30
    df["id"] += 1000
    df.to_parquet(tmp_path / "b2.parquet")
    ingest_batch(spec, str(tmp_path / "b2.parquet"), "b2", sqlite_settings, now=NOW)
    assert stored_classes(spec.name, sqlite_settings.db_url) == ["no", "yes"]


# ------------------------------------------------------------------ fast paths of the batch read

def test_year_end_event_times_are_exact_at_the_edges_of_the_range():
    """Years become Dec 31 UTC by table look-up: whole years 1678..2261 only, whatever the type."""
    from mlcore.data.parsing import event_time

    spec = toy(event_time={"column": "at", "kind": "year_end"})
    raw = pd.Series([2015, 1678, 2261, 1677, 2262, 2015.5, np.nan, -3])
    got = event_time(raw, spec)
    assert str(got.dtype) == "datetime64[ns, UTC]"
    want = ["2015-12-31", "1678-12-31", "2261-12-31"]
    assert [t.strftime("%Y-%m-%d") for t in got[:3]] == want
    assert got[3:].isna().all()
    text = event_time(pd.Series(["2016", " 2017 ", "20x6", None], dtype=object), spec)
    assert [None if pd.isna(t) else t.year for t in text] == [2016, 2017, None, None]
    coded = event_time(pd.Series(["2018", "2016", None], dtype="category"), spec)
    assert [None if pd.isna(t) else t.year for t in coded] == [2018, 2016, None]


def test_dictionary_text_whose_dictionaries_differ_by_row_group_curates_like_plain_text(
        tmp_path, sqlite_settings):
    """Parquet hands each row group its own dictionary (int8 codes for a few values, int16 past
    127): the curated file is one schema and the same values as from plain text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlcore.data.io import read_curated
    from mlcore.ingestion import ingest_batch
    from mlcore.store.catalog import get_batch

    spec = toy(corrections="supersede")  # the same rows as two batches: not a duplicate
    df = frame(400)
    many = pd.Categorical(df["colour"], categories=[*sorted(set(df["colour"])),
                                                    *(f"x{i}" for i in range(300))])
    small = pa.Table.from_pandas(df.iloc[:200].assign(
        colour=pd.Categorical(df["colour"].iloc[:200])), preserve_index=False)
    big = pa.Table.from_pandas(df.iloc[200:].assign(colour=many[200:]), preserve_index=False)
    with pq.ParquetWriter(tmp_path / "coded.parquet", small.schema) as writer:
        writer.write_table(small)
        writer.write_table(big.cast(small.schema))
    df.to_parquet(tmp_path / "plain.parquet")
    for batch in ("coded", "plain"):
        manifest = ingest_batch(spec, str(tmp_path / f"{batch}.parquet"), batch, sqlite_settings)
        assert manifest.quarantine_count == 0
    coded, plain = (read_curated(get_batch(spec.name, b, sqlite_settings.db_url))
                    for b in ("coded", "plain"))
    pd.testing.assert_frame_equal(coded, plain)
    assert coded["colour"].tolist() == df["colour"].tolist()


@pytest.mark.parametrize("labels", [[True, False, True, None], [1, 0, 1, None],
                                    ["yes", "no", "YES", "maybe"], [1.0, 0.0, 1.0, np.nan]])
def test_a_boolean_target_in_any_form_encodes_each_row(labels):
    """A binary target without declared classes reads booleans in their usual forms; anything
    else (missing, 'maybe') is NaN: a quarantined row, not a silent class."""
    from mlcore.data.target_coding import TargetCoder

    for positive_true, want in ((True, [1.0, 0.0, 1.0]), (False, [0.0, 1.0, 0.0])):
        got = TargetCoder("binary", None, positive_true=positive_true).encode(pd.Series(labels))
        assert got[:3].tolist() == want and np.isnan(got[3])
    coded = TargetCoder("binary", None).encode(pd.Series(labels).astype(str).astype("category"))
    assert coded[:3].tolist() == [1.0, 0.0, 1.0]
