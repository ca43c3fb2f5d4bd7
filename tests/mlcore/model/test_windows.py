"""Training windows as candidates (issue 16 item 2): each declared window trains every candidate
configuration, the best on the newest training rows wins and the record says why.

Real used-car weeks (600 rows each) whose price relation flips in the newest three weeks, so a
recent window must beat all history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlcore.config import TrainConfig
from mlcore.model.estimators import select_and_fit, window_rows
from mlcore.model.preprocessing import build_pipeline
from mlcore.model.splits import entity_bucket, newest_rows
from mlcore.problems import ProblemSpec, get_problem

ROOT = Path(__file__).resolve().parents[3]
ROWS, WEEKS, FLIPPED = 600, 5, 3
RIDGE = {"estimator": "sklearn.linear_model.Ridge", "preprocessing": "one_hot",
         "search": {"alpha": [0.1, 10.0]}}
WINDOWS = [{"name": "last_2", "last_batches": 2}, {"name": "recent", "half_life_days": 3.0},
           {"name": "tiny", "last_days": 0.001}]


def variant(spec: ProblemSpec, **changes) -> ProblemSpec:
    """The spec with some top-level sections replaced (validated again)."""
    return ProblemSpec.model_validate({**spec.model_dump(), **changes})


@pytest.fixture(scope="module")
def cars() -> ProblemSpec:
    """The used-car spec with one fast candidate (two grid points) and no windows."""
    return variant(get_problem("used_car_price", ROOT / "problems"), algorithms={"ridge": RIDGE})


@pytest.fixture(scope="module")
def windowed(cars) -> ProblemSpec:
    """The same with three windows declared (plus the implicit ``all``)."""
    return variant(cars, training={"windows": WINDOWS})


@pytest.fixture(scope="module")
def shifted(settings_factory, cars, tmp_path_factory):
    """Five weeks published, materialized and split; from the third week on the price is
    ``12,000 - price`` (the relation between features and target flips)."""
    from mlcore.datasets import build_dataset
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch

    settings, out = settings_factory("windows"), tmp_path_factory.mktemp("weeks")
    files = sorted((ROOT / "data" / "used_car_price").glob("*.parquet"))[:WEEKS]
    for i, f in enumerate(files):
        df = pd.read_parquet(f).head(ROWS)
        if i >= WEEKS - FLIPPED:
            df["price"] = (12_000.0 - df["price"]).clip(lower=100.0)
        df.to_parquet(out / f.name, index=False)
        batch = f.stem.rsplit("_", 1)[-1]
        ingest_batch(cars, str(out / f.name), batch, settings)
        materialize_batch(cars, batch, settings)
    dataset = build_dataset(cars, settings)
    return settings, dataset, pd.read_parquet(dataset.train_uri)


def test_the_training_part_carries_what_windows_need(cars, shifted):
    train = shifted[2]
    assert {cars.entity.key, "event_timestamp", "batch_id", "price"} <= set(train.columns)
    # every week trains (the holdout a slice of the newest), or all but the newest (held out)
    assert train["batch_id"].nunique() in (WEEKS, WEEKS - 1)


def test_a_recent_window_beats_all_history_and_the_record_says_why(windowed, shifted):
    train = shifted[2]
    trained = select_and_fit(windowed, train, TrainConfig())
    table = trained.window_scores
    assert list(table) == ["all", "last_2", "recent", "tiny"]  # implicit `all` first
    assert trained.window is not None and trained.window["name"] == "last_2"
    assert table["last_2"]["rmse"] < 0.8 * table["all"]["rmse"], table
    newest_two = sorted(train["batch_id"].unique())[-2:]
    assert trained.window["rows"] == table["last_2"]["rows"] == train["batch_id"].isin(
        newest_two).sum()
    assert table["all"]["rows"] == len(train) and table["last_2"]["fit_rows"] < len(train)
    assert set(trained.validation) == {f"{w}:ridge(alpha={a})" for w in ("all", "last_2", "recent")
                                       for a in (0.1, 10.0)}
    assert trained.why.startswith(f"window last_2 (last 2 batches, {trained.window['rows']:,} "
                                  f"rows) with ridge(alpha={trained.overrides['alpha']}): rmse ")
    assert "on the newest 20% of training rows" in trained.why and " vs all " in trained.why
    assert "tiny skipped (" in trained.why
    # the chosen model is the window's rows of the whole training part, refitted
    rows = train["batch_id"].isin(newest_two).to_numpy()
    again = build_pipeline(windowed, "ridge", 0, trained.overrides).fit(
        train[windowed.feature_names][rows], train["price"][rows])
    X = train[windowed.feature_names].head(200)
    np.testing.assert_array_equal(trained.pipeline.predict(X), again.predict(X))


def test_validation_is_the_newest_rows_and_never_trains_a_candidate(windowed, shifted):
    train = shifted[2]
    val = newest_rows(train, windowed.entity.key, 0.2)
    assert val.sum() == round(0.2 * len(train))
    assert train["event_timestamp"][val].min() >= train["event_timestamp"][~val].max()
    shuffled = train.sample(frac=1.0, random_state=4)  # the cut does not depend on row order
    again = newest_rows(shuffled, windowed.entity.key, 0.2)
    assert set(shuffled["id"][again]) == set(train["id"][val])


def test_a_window_too_small_is_skipped_with_its_reason(windowed, shifted):
    table = select_and_fit(windowed, shifted[2], TrainConfig()).window_scores
    assert table["tiny"]["skipped"].endswith("rows in the fit rows, fewer than 50")
    assert table["tiny"]["rmse"] is None and table["tiny"]["best_configuration"] is None
    assert all(table[w]["skipped"] is None for w in ("all", "last_2", "recent"))


def test_no_window_left_is_an_error_naming_the_problem(cars, shifted):
    only_tiny = variant(cars, training={"windows": [{"name": "all", "last_days": 0.001}]})
    with pytest.raises(ValueError, match=r"problem 'used_car_price': no training window .*"
                                         r"all: \d+ rows in the fit rows, fewer than 50"):
        select_and_fit(only_tiny, shifted[2], TrainConfig())


def test_a_classifier_window_with_one_class_is_skipped(cars, shifted):
    train = shifted[2].copy()  # the newest three weeks: one class (validation takes the newest
    newest = sorted(train["batch_id"].unique())[-3:]  # week, so last_2 fits on weeks 3 and 4)
    train["price"] = np.where(train["batch_id"].isin(newest), 1,
                              (train["price"] > 4000).astype(int))
    binary = variant(cars, target={"name": "price", "kind": "binary"}, metric={},
                     algorithms={"lr": {"estimator": "sklearn.linear_model.LogisticRegression",
                                        "params": {"max_iter": 500}}},
                     training={"windows": [{"name": "last_2", "last_batches": 2}]})
    trained = select_and_fit(binary, train, TrainConfig())
    assert trained.window_scores["last_2"]["skipped"] == "one class only in the fit rows"
    assert trained.window is not None and trained.window["name"] == "all"
    assert "nothing to compare" in trained.why  # one usable window, one configuration


def _half_life_weights(train: pd.DataFrame, half_life: float) -> np.ndarray:
    at = pd.to_datetime(train["event_timestamp"], utc=True)
    return 0.5 ** ((at.max() - at).dt.total_seconds().to_numpy() / 86400 / half_life)


def test_half_life_weights_reach_the_estimator(cars, shifted):
    train = shifted[2]
    spec = variant(cars, algorithms={"ridge": {**RIDGE, "search": {}, "params": {"alpha": 1.0}}},
                   training={"windows": [{"name": "all", "half_life_days": 3.0}]})
    trained = select_and_fit(spec, train, TrainConfig())
    assert trained.window == {"name": "all", "half_life_days": 3.0, "rows": len(train),
                              "weighted": True}
    assert trained.window_scores["all"]["effective_rows"] < 0.6 * len(train)
    X, y = train[spec.feature_names], train["price"]
    coef = trained.pipeline.named_steps["model"].coef_
    weighted = build_pipeline(spec, "ridge", 0).fit(
        X, y, model__sample_weight=_half_life_weights(train, 3.0))
    unweighted = build_pipeline(spec, "ridge", 0).fit(X, y)
    np.testing.assert_allclose(coef, weighted.named_steps["model"].coef_, rtol=1e-9)
    assert not np.allclose(coef, unweighted.named_steps["model"].coef_, rtol=1e-3)
    _, w = window_rows(spec.training.windows[0], train)
    np.testing.assert_allclose(w, _half_life_weights(train, 3.0), rtol=1e-12)
    assert w.max() == 1.0  # the newest row weighs 1


def test_no_windows_declared_fits_exactly_as_before(cars, shifted):
    """The old selection, written out: entity-hash validation, every grid point on the rest,
    the best refitted on all history."""
    train = shifted[2]
    trained = select_and_fit(cars, train, TrainConfig())
    X, y = train[cars.feature_names], train["price"].to_numpy()
    val = (entity_bucket(train[cars.entity.key], "validation") < 20).to_numpy()
    rmse = {}
    for alpha in (0.1, 10.0):
        fit = build_pipeline(cars, "ridge", 0, {"alpha": alpha}).fit(X[~val], y[~val])
        rmse[alpha] = float(np.sqrt(np.mean((fit.predict(X[val]) - y[val]) ** 2)))
    best = min(rmse, key=lambda a: rmse[a])
    old = build_pipeline(cars, "ridge", 0, {"alpha": best}).fit(X, y)
    assert (trained.window, trained.window_scores, trained.why) == (None, {}, "")
    assert set(trained.validation) == {"ridge(alpha=0.1)", "ridge(alpha=10.0)"}
    for alpha in rmse:
        assert trained.validation[f"ridge(alpha={alpha})"]["rmse"] == pytest.approx(rmse[alpha])
    assert trained.overrides == {"alpha": best}
    np.testing.assert_array_equal(trained.pipeline.predict(X), old.predict(X))


@pytest.mark.parametrize("windows, chosen", [
    (WINDOWS, "last_2"),
    ([{"name": "all", "half_life_days": 3.0}], "all"),
])
def test_reproduce_verifies_a_windowed_version(cars, shifted, windows, chosen):
    from mlcore.model.registry import get_version
    from mlcore.training import reproduce_version, train_contender

    settings, dataset, train = shifted
    spec = variant(cars, training={"windows": windows})
    contender = train_contender(spec, dataset, TrainConfig(), settings)
    mv = get_version(spec.name, contender.version, settings.db_url)
    rec = mv.reproducibility
    assert rec["window"]["name"] == chosen and rec["window_rows"] == mv.train_rows
    assert rec["window_why"].startswith(f"window {chosen} (")
    assert set(rec["windows"]) >= {"all"} and rec["selection"] == contender.validation
    result = reproduce_version(spec, contender.version, settings)
    assert result.verified, result
    assert result.max_abs_diff == 0.0


def test_an_estimator_without_sample_weight_trains_unweighted_with_a_note(cars, shifted,
                                                                         monkeypatch):
    import mlcore.model.estimators

    monkeypatch.setattr(mlcore.model.estimators, "_takes_weights", lambda estimator: False)
    train = shifted[2]
    spec = variant(cars, algorithms={"ridge": {**RIDGE, "search": {}, "params": {"alpha": 1.0}}},
                   training={"windows": [{"name": "all", "half_life_days": 3.0}]})
    trained = select_and_fit(spec, train, TrainConfig())
    assert trained.window is not None and trained.window["weighted"] is False
    assert trained.window_scores["all"]["notes"] == [
        "sklearn.linear_model.Ridge takes no sample_weight: trained unweighted"]
    plain = build_pipeline(spec, "ridge", 0).fit(train[spec.feature_names], train["price"])
    X = train[spec.feature_names].head(100)
    np.testing.assert_array_equal(trained.pipeline.predict(X), plain.predict(X))
