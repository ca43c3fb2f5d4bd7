"""``mlcore problem draft``: a spec drafted from a sample loads unchanged, validates every row of
its own sample, and guesses kinds, target, metric and floor as documented in ``mlcore.draft``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlcore.cli import main
from mlcore.config import get_settings
from mlcore.data.profile import widen
from mlcore.data.validation import validate_rows
from mlcore.draft import default_name, draft_yaml, read_sample
from mlcore.problems import NAME_PATTERN, ProblemSpec, load_problem_file

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
CENSUS = DATA / "census_ma_employment" / "employment_2015.parquet"
CREDIT = DATA / "credit_card_segment" / "credit_card_segment_2020-05.parquet"
CARS = DATA / "used_car_price" / "used_car_price_week_2017-01-24.parquet"


def drafted(df: pd.DataFrame, tmp_path: Path, *, target: str, key: str, time: str,
            name: str = "sample") -> tuple[str, ProblemSpec]:
    """The draft's text, and the spec loaded back from a file holding it (as an operator would)."""
    text, _ = draft_yaml(df, target=target, key=key, time=time, name=name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return text, load_problem_file(path)


def kinds(spec: ProblemSpec) -> dict[str, str]:
    return {f.name: f.kind for f in spec.features}


def assert_validates(df: pd.DataFrame, spec: ProblemSpec) -> None:
    result = validate_rows(df, spec, "sample")
    assert result.violations.empty, result.violations.groupby("rule").size().to_dict()
    assert len(result.valid) == len(df)


# ---- the three real datasets --------------------------------------------------------------------

def test_census_draft_is_binary_on_year_ends(tmp_path):
    df = read_sample(CENSUS)
    text, spec = drafted(df, tmp_path, target="employed", key="id", time="year",
                         name=default_name(CENSUS))
    assert_validates(df, spec)
    assert spec.name == "employment_2015"
    assert (spec.entity.key, spec.entity.dtype) == ("id", "int64")
    assert (spec.event_time.column, spec.event_time.kind) == ("year", "year_end")
    assert spec.target.kind == "binary" and spec.target.positive == 1
    assert spec.target.classes == (0, 1)
    assert spec.metric_name == "roc_auc" and spec.direction == "maximize"
    assert spec.promotion.min_metric == 0.55
    found = kinds(spec)
    assert "year" not in found  # a plain year is constant within a batch: no feature
    assert found.pop("AGEP") == "numeric"
    assert set(found.values()) == {"categorical"} and len(found) == 15
    age = spec.feature("AGEP")
    assert (age.min, age.max) == (0, 104)  # seen 0..94, widened by 9.4 and rounded up
    # category columns keep their type (text), sorted by value: "2" before "10"
    schooling = spec.feature("SCHL").values
    assert schooling[:3] == ("0", "1", "2") and len(schooling) == 25
    assert spec.promotion.guardrails.slices == {"SEX": 0.05} and spec.drift.segments == ("SEX",)
    assert {c.estimator for c in spec.algorithms.values()} == {
        "sklearn.linear_model.LogisticRegression",
        "sklearn.ensemble.HistGradientBoostingClassifier"}
    assert text.startswith("# DRAFT") and "# review" in text


def test_credit_draft_is_multiclass_with_the_prior_as_floor(tmp_path):
    df = read_sample(CREDIT)
    _, spec = drafted(df, tmp_path, target="y_true", key="id", time="timestamp")
    assert_validates(df, spec)
    assert spec.event_time.kind == "timestamp" and spec.entity.dtype == "int64"
    assert spec.target.kind == "multiclass"
    assert spec.target.classes == ("highstreet_card", "prepaid_card", "upmarket_card")
    assert spec.metric_name == "log_loss" and spec.direction == "minimize"
    prior = df["y_true"].value_counts(normalize=True).to_numpy()
    assert spec.promotion.min_metric == pytest.approx(-(prior * np.log(prior)).sum(), abs=1e-4)
    assert kinds(spec) == {
        "acq_channel": "categorical", "app_behavioral_score": "numeric",
        "requested_credit_limit": "categorical",  # 10 integer values in 14,643 rows
        "app_channel": "categorical", "credit_bureau_score": "numeric",
        "stated_income": "numeric", "is_customer": "boolean", "timestamp": "timestamp"}
    assert spec.feature("app_channel").values == ("mobile", "store", "web")
    assert spec.feature("requested_credit_limit").values[0] == 300  # ints stay ints
    assert spec.feature("timestamp").parts == ("hour", "day_of_week")  # the event time's cycles
    assert spec.feature("app_behavioral_score").min < df["app_behavioral_score"].min()


def test_used_car_draft_is_regression_with_the_std_as_floor(tmp_path):
    df = read_sample(CARS)
    text, spec = drafted(df, tmp_path, target="price", key="id", time="timestamp")
    assert_validates(df, spec)
    assert spec.target.kind == "regression" and spec.target.classes is None
    assert spec.metric_name == "rmse" and spec.direction == "minimize"
    assert spec.promotion.min_metric == pytest.approx(df["price"].std(ddof=0), rel=1e-3)
    assert {c.estimator for c in spec.algorithms.values()} == {
        "sklearn.linear_model.Ridge", "sklearn.ensemble.HistGradientBoostingRegressor"}
    assert kinds(spec) == {
        "car_age": "numeric", "km_driven": "numeric", "price_new": "numeric",
        "accident_count": "numeric", "door_count": "numeric",  # float columns stay numeric
        "fuel": "categorical", "transmission": "categorical", "timestamp": "timestamp"}
    assert spec.feature("fuel").values == ("diesel", "electric", "gas")
    assert 'values: ["diesel", "electric", "gas"]' in text  # vocabularies: text always quoted
    bound = next(iter(spec.promotion.guardrails.slices.values()))
    assert bound == pytest.approx(0.05 * spec.promotion.min_metric, rel=0.05)


# ---- synthetic frames ---------------------------------------------------------------------------

@pytest.fixture
def sample_csv(tmp_path) -> Path:
    """200 rows: a nullable number, YAML-trap text categories, bools, dates, free text."""
    rng = np.random.default_rng(7)
    n = 200
    df = pd.DataFrame({
        "cust": [f"C{i:04d}" for i in range(n)],
        "when": pd.date_range("2021-03-01", periods=n, freq="37min").strftime("%Y-%m-%d %H:%M:%S"),
        "income": rng.normal(50, 10, n).round(2),
        "switch": rng.choice(["on", "off", "yes", "no", "1", "a: b"], n),
        "member": rng.choice([True, False], n),
        "flag_text": rng.choice(["true", "false"], n),
        "signup": pd.date_range("2019-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "note": [f"free text {i}" for i in range(n)],
        "label": rng.choice(["yes", "no"], n, p=[0.3, 0.7]),
    })
    df.loc[[3, 50, 99], "income"] = np.nan
    path = tmp_path / "Sample Export-2021.csv"
    df.to_csv(path, index=False)
    return path


def test_csv_with_missing_values_text_traps_and_bools(sample_csv, tmp_path):
    df = read_sample(sample_csv)
    text, spec = drafted(df, tmp_path, target="label", key="cust", time="when",
                         name=default_name(sample_csv))
    assert_validates(df, spec)
    assert spec.name == "sample_export_2021" and spec.entity.dtype == "string"
    assert spec.target.kind == "binary"
    assert spec.target.positive == "yes" and spec.target.classes == ("no", "yes")
    assert 'positive: "yes"' in text  # quoted: YAML would read a bare yes as True
    income = spec.feature("income")
    assert income.kind == "numeric" and income.nullable and income.min == 0
    assert "# income: seen" in text and "; 3 missing" in text
    switch = spec.feature("switch")
    assert switch.kind == "categorical" and not switch.nullable
    assert set(switch.values) == {"on", "off", "yes", "no", "1", "a: b"}
    assert all(isinstance(v, str) for v in switch.values)
    assert spec.feature("member").kind == "boolean"
    assert spec.feature("flag_text").kind == "boolean"  # read as bools by pandas' CSV parser
    signup = spec.feature("signup")
    assert signup.kind == "timestamp" and signup.parts == ("day_of_week", "month")  # hour: 0
    assert "note" not in kinds(spec)  # free text: left out, and then tolerated
    assert spec.validation.extra_columns == "ignore" and "note (200 distinct" in text


@pytest.mark.parametrize("labels, positive", [
    (["stay"] * 80 + ["leave"] * 20, "leave"),  # no conventional label: the minority
    (["Yes"] * 80 + ["No"] * 20, "Yes"),  # yes, however common
    ([1] * 80 + [0] * 20, 1),
])
def test_binary_positive(tmp_path, labels, positive):
    df = pd.DataFrame({"id": range(100), "year": 2020, "x": np.arange(100.0), "y": labels})
    _, spec = drafted(df, tmp_path, target="y", key="id", time="year")
    assert spec.target.positive == positive and type(spec.target.positive) is type(positive)
    assert_validates(df, spec)


def test_boolean_target_and_true_false_text_feature(tmp_path):
    df = pd.DataFrame({"id": range(60), "ts": pd.date_range("2022-01-01", periods=60, freq="h"),
                       "opt_in": ["True", "false", "TRUE"] * 20,
                       "y": [True, False, False] * 20})
    text, spec = drafted(df, tmp_path, target="y", key="id", time="ts")
    assert spec.event_time.kind == "timestamp"  # a timestamp column, not text
    assert spec.feature("opt_in").kind == "boolean"
    assert spec.target.positive is True and spec.target.classes == (False, True)
    assert_validates(df, spec)


@pytest.mark.parametrize("labels, kind", [
    (np.arange(120) % 4, "multiclass"),  # a few integer labels
    (np.arange(120) % 60, "regression"),  # many integers
    (np.arange(120) % 4 + 0.5, "regression"),  # floats, even a few of them
    ([f"k{i % 30}" for i in range(120)], "multiclass"),  # text is never a regression
])
def test_target_kind(tmp_path, labels, kind):
    df = pd.DataFrame({"id": range(120), "year": 2019, "x": np.linspace(0, 1, 120),
                       "y": labels})
    _, spec = drafted(df, tmp_path, target="y", key="id", time="year")
    assert spec.target.kind == kind
    assert_validates(df, spec)


def test_integer_columns_with_few_values_are_categorical(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"id": range(400), "year": "2018", "y": rng.integers(0, 2, 400),
                       "doors": rng.choice([2, 3, 5], 400),  # 3 values: categories
                       "visits": np.arange(400) % 90,  # 90 values: a quantity
                       "score": rng.normal(-3, 1, 400)})
    _, spec = drafted(df, tmp_path, target="y", key="id", time="year")
    assert spec.event_time.kind == "year_end"  # years as text
    assert spec.feature("doors").values == (2, 3, 5)
    assert spec.feature("visits").kind == "numeric" and spec.feature("visits").min == 0
    score = spec.feature("score")
    assert score.min < df["score"].min() and score.max > df["score"].max() and score.min < 0
    assert_validates(df, spec)


def test_widen():
    assert widen(16, 94) == (0, 102)  # 10 % of the range, floor 0 for non-negative values
    assert widen(-7.7, 7.7) == (-10, 10)
    assert widen(5, 5) == (0, 5.5)
    assert widen(-3, -3) == (-3.3, -2.7)
    assert widen(0.12, 0.18) == (0, 0.186)


def test_default_name():
    assert default_name(CREDIT) == "credit_card_segment_2020_05"
    assert default_name("2020 Sales-Report.csv") == "sales_report"
    assert default_name("__.parquet") == "problem"
    long = default_name("a" * 30 + "-" + "b" * 30 + ".csv")
    assert len(long) <= 48 and pd.Series([long]).str.fullmatch(NAME_PATTERN[1:-1]).all()


# ---- refusals -----------------------------------------------------------------------------------

def small() -> pd.DataFrame:
    return pd.DataFrame({"id": [1, 2, 3, 4], "t": ["2021-01-01"] * 4, "x": [1.0, 2, 3, 4],
                         "y": [0, 1, 0, 1]})


@pytest.mark.parametrize("roles, match", [
    ({"target": "nope"}, "--target column 'nope'"),
    ({"key": "nope"}, "--key column 'nope'"),
    ({"time": "nope"}, "--time column 'nope'"),
    ({"key": "y"}, "three different columns"),
])
def test_refuses_roles_that_are_not_columns(roles, match):
    args = {"target": "y", "key": "id", "time": "t", **roles}
    with pytest.raises(ValueError, match=match):
        draft_yaml(small(), name="x", **args)


@pytest.mark.parametrize("change, match", [
    ({"id": [1, 1, 3, 4]}, "key column 'id' has duplicates within the same time"),
    ({"id": [1, None, 3, 4]}, "key column 'id' has 1 missing"),
    ({"t": ["2021-01-01", "soon", "2021-01-01", "2021-01-01"]}, "time column 't' holds neither"),
    ({"y": [1, 1, 1, 1]}, "target column 'y' has 1 distinct"),
])
def test_refuses_unusable_values(change, match):
    with pytest.raises(ValueError, match=match):
        draft_yaml(small().assign(**change), target="y", key="id", time="t", name="x")


def test_a_key_may_repeat_at_different_times(tmp_path):
    df = small().assign(id=[1, 1, 2, 2], t=["2021-01-01", "2021-01-02"] * 2)
    _, spec = drafted(df, tmp_path, target="y", key="id", time="t")
    assert_validates(df, spec)


def test_refuses_a_bad_name_and_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="problem name 'Bad-Name'"):
        draft_yaml(small(), target="y", key="id", time="t", name="Bad-Name")
    garbage = tmp_path / "x.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        read_sample(garbage)
    with pytest.raises(ValueError, match="unsupported file type"):
        read_sample(tmp_path / "x.json")


# ---- the CLI ------------------------------------------------------------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()

    def run(*argv: str) -> SimpleNamespace:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return SimpleNamespace(code=code, out=out, err=err)

    yield run
    get_settings.cache_clear()


def test_cli_writes_the_draft(cli, tmp_path):
    out = tmp_path / "drafts" / "cars.yaml"
    args = ["problem", "draft", str(CARS), "--target", "price", "--key", "id",
            "--time", "timestamp", "--name", "cars", "--out", str(out)]
    first = cli(*args)
    assert first.code == 0, first.err
    assert f"wrote {out}" in first.out and "17143 of 17143 sample rows pass" in first.out
    spec = load_problem_file(out)
    assert spec.name == "cars" and spec.target.kind == "regression"

    again = cli(*args)  # never over an existing file ...
    assert again.code == 2 and "exists" in again.err
    forced = cli(*args, "--force")  # ... unless told
    assert forced.code == 0 and load_problem_file(out).model_dump() == spec.model_dump()


def test_cli_prints_the_draft_and_refuses_clearly(cli, tmp_path):
    printed = cli("problem", "draft", str(CREDIT), "--target", "y_true", "--key", "id",
                  "--time", "timestamp")
    assert printed.code == 0 and printed.out.startswith("# DRAFT")
    assert "name: credit_card_segment_2020_05" in printed.out
    assert "multiclass target y_true" in printed.err
    missing = cli("problem", "draft", str(CREDIT), "--target", "label", "--key", "id",
                  "--time", "timestamp")
    assert missing.code == 2 and "--target column 'label'" in missing.err
    absent = cli("problem", "draft", str(tmp_path / "none.csv"), "--target", "y", "--key", "id",
                 "--time", "t")
    assert absent.code == 2 and "not a readable CSV file" in absent.err
