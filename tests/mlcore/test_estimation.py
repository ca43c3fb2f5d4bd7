"""Performance before labels: CBPE (binary, multiclass) and DLE (regression) estimates from the
model's own outputs, on real data run through mlcore (ingest, materialize, train on the first
batch, score the later ones, labels): close to the realized metric with no shift, moving the
right way under covariate shift, intervals that cover; storage beside the realized value (both
stores), the cache, and every "not estimated" path."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlcore.config import TrainConfig
from mlcore.datasets import build_dataset
from mlcore.estimation import (
    Estimate,
    attach_realized,
    cache_path,
    estimate_batch,
    estimate_history,
    fitted_estimator,
    latest_estimate,
    record_estimate,
)
from mlcore.feast.bounded import point_in_time_features
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.labels import ingest_labels, measure_performance
from mlcore.model.evaluation import predict_proba
from mlcore.model.metrics import metric
from mlcore.model.performance import PerformanceEstimator
from mlcore.model.registry import CHALLENGER, get_version, load_model, move_alias
from mlcore.problems import get_problem
from mlcore.scoring import score_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import PerformanceEstimate
from mlcore.store.session import session_scope
from mlcore.training import train_contender

ROOT = Path(__file__).resolve().parents[2]
LATER = datetime(2100, 1, 1, tzinfo=UTC)
# problem -> (folder, files used, rows sampled per file, candidate, largest |estimate -
# realized|: absolute, relative for regression). The first file (training, and its holdout the
# reference set) gets FIRST_ROWS times as many rows: the reference's own sampling error is most
# of the estimate's error (about 0.006 ROC AUC at 3,600 reference rows).
KINDS = {"census_employment": ("census_ma_employment", 4, 6000, "logistic_regression", 0.02),
         "credit_card_segment": ("credit_card_segment", 3, 3000, "logistic_regression", 0.05),
         "used_car_price": ("used_car_price", 3, 3000, "ridge", 0.10)}
FIRST_ROWS = 3


def run_loop(problem: str, settings, rows: int | None = None, files: int | None = None,
             algorithm: str | None = None) -> SimpleNamespace:
    """Ingest and materialize seeded samples of the real batch files, train on the first, make
    it champion, then score each later batch (score_batch stores the estimate) and measure it on
    its labels (the realized value lands beside the estimate)."""
    folder, n_files, n_rows, algo, _ = KINDS[problem]
    spec = get_problem(problem, ROOT / "problems")
    paths: dict[str, Path] = {}
    for f in sorted((ROOT / "data" / folder).glob("*.parquet"))[:files or n_files]:
        frame = pd.read_parquet(f)
        rows_wanted = (n_rows if rows is None else rows) * (1 if paths else FIRST_ROWS)
        if rows_wanted:
            frame = frame.sample(min(rows_wanted, len(frame)), random_state=0)
        batch = f.stem.rsplit("_", 1)[-1]
        paths[batch] = settings.home.parent / f.name
        frame.to_parquet(paths[batch], index=False)
        ingest_batch(spec, str(paths[batch]), batch, settings)
        materialize_batch(spec, batch, settings)
    first, *later = paths
    dataset = build_dataset(spec, settings, until=first)
    version = train_contender(spec, dataset, TrainConfig(algorithm=algorithm or algo),
                              settings).version
    move_alias(problem, expected=None, new=version, reason="first", url=settings.db_url)
    scored = {}
    for b in later:
        scored[b] = score_batch(spec, b, settings)
        ingest_labels(spec, str(paths[b]), b, settings)
        measure_performance(spec, b, settings, as_of=LATER)
    mv = get_version(problem, version, settings.db_url)
    return SimpleNamespace(spec=spec, settings=settings, mv=mv, model=load_model(mv, settings),
                           later=later, scored=scored, paths=paths)


@pytest.fixture(scope="module", params=list(KINDS))
def loop(request, settings_factory):
    return run_loop(request.param, settings_factory(f"est_{request.param}"))


def labelled_frame(loop, batch_id: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A scored batch's point-in-time features, encoded labels and the champion's outputs."""
    frame = point_in_time_features(loop.spec, [get_batch(loop.spec.name, batch_id,
                                                         loop.settings.db_url)], loop.settings)
    return (frame, frame[loop.spec.target.name].to_numpy(dtype="float64"),
            predict_proba(loop.model, frame[loop.spec.feature_names]))


def tolerance(loop, realized: float) -> float:
    bound = KINDS[loop.spec.name][4]
    return bound * realized if loop.spec.target.kind == "regression" else bound


def test_with_no_shift_the_estimate_is_close_to_the_realized_metric(loop):
    history = estimate_history(loop.spec.name, loop.settings.db_url)
    assert [h["batch_id"] for h in history] == loop.later
    for h in history:
        assert h["method"] == ("dle" if loop.spec.target.kind == "regression" else "cbpe")
        assert h["role"] == "champion" and h["metric"] == loop.spec.metric.name
        assert h["realized"] is not None and h["error"] == h["realized"] - h["estimate"]
        assert abs(h["error"]) <= tolerance(loop, h["realized"]), h
        assert h["ci_low"] < h["estimate"] < h["ci_high"]
    for b, result in loop.scored.items():  # what scoring returned is what was stored
        (est,) = result.estimates
        assert est["estimate"] == next(h["estimate"] for h in history if h["batch_id"] == b)


def shifted(frame: pd.DataFrame, spec, seed: int = 0) -> np.ndarray:
    """Rows kept with a probability rising with the first numeric feature: covariates shift,
    the label given the features does not (the selection never looks at the label)."""
    col = frame[spec.numeric[0]].to_numpy(dtype="float64")
    rank = pd.Series(col).rank(pct=True).fillna(0.5).to_numpy()
    return np.random.default_rng(seed).random(len(frame)) < rank ** 3


def test_under_covariate_shift_the_estimate_moves_the_way_the_metric_does(loop):
    spec, kind = loop.spec, loop.spec.target.kind
    estimator, _ = fitted_estimator(spec, loop.mv, loop.model, loop.settings)
    frame, y, p = labelled_frame(loop, loop.later[-1])
    keep = shifted(frame, spec)
    X = frame[spec.feature_names]
    before = (estimator.estimate(X, p), metric(spec.metric.name, y, p, kind))
    after = (estimator.estimate(X[keep], p[keep]),
             metric(spec.metric.name, y[keep], p[keep], kind))
    real_move, est_move = after[1] - before[1], after[0] - before[0]
    assert abs(real_move) > 0.2 * tolerance(loop, before[1])  # the shift does change the metric
    assert np.sign(est_move) == np.sign(real_move), (before, after)
    assert abs(after[0] - after[1]) <= 2 * tolerance(loop, after[1])


def test_the_interval_contains_the_realized_value_most_of_the_time(loop):
    spec, kind = loop.spec, loop.spec.target.kind
    estimator, _ = fitted_estimator(spec, loop.mv, loop.model, loop.settings)
    frame, y, p = labelled_frame(loop, loop.later[0])
    X, rng, hits, n = frame[spec.feature_names], np.random.default_rng(1), 0, 40
    for _ in range(n):
        rows = np.sort(rng.choice(len(frame), 500, replace=False))
        value = estimator.estimate(X.iloc[rows], p[rows])
        low, high, _se = estimator.interval(value, len(rows))
        hits += low <= metric(spec.metric.name, y[rows], p[rows], kind) <= high
    assert hits / n >= 0.8, f"{hits}/{n} chunks of 500 rows inside the interval"


def test_census_demo_estimate_within_0_02_of_realized_roc_auc_on_every_batch(settings_factory):
    """The issue's acceptance criterion: census, trained on 2015, 2016-2018 scored (no real
    drift): |estimated - realized ROC AUC| <= 0.02 on every batch. Seeded samples here (18,000
    rows of 2015, 6,000 of each later year); the full files (~69k rows a year) under ``-m slow``
    below."""
    run = run_loop("census_employment", settings_factory("census_acceptance"))
    check_census(run)


@pytest.mark.slow
def test_census_demo_full_size_estimate_within_0_02(settings_factory):
    check_census(run_loop("census_employment", settings_factory("census_full"), rows=0))


def check_census(run) -> None:
    history = estimate_history(run.spec.name, run.settings.db_url)
    assert [h["batch_id"] for h in history] == ["2016", "2017", "2018"]
    for h in history:
        print(f"{h['batch_id']} rows {h['rows']} estimate {h['estimate']:.4f} "
              f"[{h['ci_low']:.4f}, {h['ci_high']:.4f}] realized {h['realized']:.4f} "
              f"error {h['error']:+.4f}")
        assert h["metric"] == "roc_auc" and abs(h["error"]) <= 0.02, h


# --- shadow scoring, storage, cache, "not estimated" ---------------------------------------------

@pytest.fixture(scope="module")
def census(settings_factory):
    return run_loop("census_employment", settings_factory("est_census"), rows=1500, files=3)


def test_a_shadow_challenger_is_estimated_too_and_latest_estimate_serves_the_policy(census):
    spec, settings = census.spec, census.settings
    dataset = build_dataset(spec, settings, until="2016")
    challenger = train_contender(spec, dataset, TrainConfig(algorithm="logistic_regression"),
                                 settings).version
    move_alias(spec.name, expected=None, new=challenger, reason="shadow", url=settings.db_url,
               alias=CHALLENGER)
    result = score_batch(spec, "2017", settings)
    assert [(e["model_version"], e["role"]) for e in result.estimates] == [
        (census.mv.version, "champion"), (challenger, "challenger")]
    assert all(e["estimate"] is not None and e["reason"] is None for e in result.estimates)
    stored = {(h["batch_id"], h["model_version"]): h
              for h in estimate_history(spec.name, settings.db_url)}
    # re-scoring replaced the champion's 2017 estimate and kept its realized value
    assert stored[("2017", census.mv.version)]["realized"] is not None
    assert stored[("2017", challenger)]["realized"] is None  # its labels not measured yet
    measure_performance(spec, "2017", settings, as_of=LATER)
    assert latest_estimate(spec.name, challenger, settings.db_url)["batch_id"] == "2017"
    latest = latest_estimate(spec.name, census.mv.version, settings.db_url)
    assert set(latest) >= {"batch_id", "metric", "estimate", "ci_low", "ci_high"}
    assert latest["batch_id"] == "2017" and latest["metric"] == "roc_auc"
    assert latest_estimate(spec.name, 999, settings.db_url) is None
    realized = {h["model_version"]: h["realized"]
                for h in estimate_history(spec.name, settings.db_url) if h["batch_id"] == "2017"}
    assert realized[challenger] is not None


def test_the_fitted_estimator_is_cached_verified_and_deterministic(census, monkeypatch):
    spec, settings, mv = census.spec, census.settings, census.mv
    first, key = fitted_estimator(spec, mv, census.model, settings)
    path = cache_path(spec, mv, key, settings)
    assert path.is_file() and path.with_suffix(".sha256").is_file()
    assert path.is_relative_to(settings.home / "estimators")

    def no_refit(*args, **kwargs):
        raise AssertionError("refitted although cached")

    with monkeypatch.context() as m:
        m.setattr(PerformanceEstimator, "fit", no_refit)
        again, _ = fitted_estimator(spec, mv, census.model, settings)
    assert again.unit_sd_ == first.unit_sd_
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # damaged: refitted, same result
    refitted, _ = fitted_estimator(spec, mv, census.model, settings)
    assert refitted.unit_sd_ == first.unit_sd_
    p = np.linspace(0.01, 0.99, 300)
    assert refitted.estimate(None, p) == first.estimate(None, p)


def _scored_frame(census, batch_id="2016"):
    frame, _, p = labelled_frame(census, batch_id)
    return frame, p


@pytest.mark.parametrize("damage, needle", [
    ("no_record", "no dataset record with a holdout"),
    ("missing_file", "is gone"),
    ("changed_file", "changed since it was built"),
])
def test_no_reference_set_means_not_estimated_with_the_reason(census, tmp_path, damage, needle):
    spec, settings, mv = census.spec, census.settings, census.mv
    record = dict(mv.reproducibility)
    dataset = dict(record["dataset"])
    if damage == "no_record":
        record.pop("dataset")
    elif damage == "missing_file":
        dataset["holdout_uri"] = str(tmp_path / "gone.parquet")
    else:
        copy = tmp_path / "holdout.parquet"
        pd.read_parquet(dataset["holdout_uri"]).head(200).to_parquet(copy)
        dataset["holdout_uri"] = str(copy)
    if damage != "no_record":
        record["dataset"] = dataset
    fake = SimpleNamespace(**{c: getattr(mv, c) for c in ("problem", "version",
                                                          "artifact_sha256")},
                           reproducibility=record)
    fake.artifact_sha256 = "f" * 64  # its own cache key: never served from the real cache
    frame, p = _scored_frame(census)
    result = estimate_batch(spec, "2016", fake, "champion", census.model, frame, p, settings)
    assert result.estimate is None and result.method == "none"
    assert result.reason.startswith("not estimated: ") and needle in result.reason


def test_a_metric_that_cannot_be_estimated_says_why(census):
    spec = census.spec.model_copy(update={"metric": census.spec.metric.model_copy(
        update={"name": "r2"})})
    frame, p = _scored_frame(census)
    result = estimate_batch(spec, "2016", census.mv, "champion", census.model, frame, p,
                            census.settings)
    assert result.estimate is None and "not estimated: R2 needs the variance" in result.reason


def test_an_estimator_failure_never_fails_scoring(census, monkeypatch, caplog):
    import mlcore.estimation as estimation

    def broken(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(estimation, "estimate_batch", broken)
    result = score_batch(census.spec, "2016", census.settings)
    assert result.rows == 1500
    est = result.estimates[0]  # the champion's (a shadow challenger's follows, if any)
    assert est["estimate"] is None
    assert est["reason"] == ("not estimated: the estimator failed (RuntimeError: calibration "
                             "exploded)")
    assert "calibration exploded" in caplog.text
    stored = next(h for h in estimate_history(census.spec.name, census.settings.db_url)
                  if h["batch_id"] == "2016" and h["model_version"] == census.mv.version)
    assert stored["reason"] == est["reason"] and stored["realized"] is not None


# --- the table on both stores --------------------------------------------------------------------

def test_estimates_and_realized_values_join_in_the_store(db_url):
    from mlcore.store.models import Batch, PerformanceReport

    def estimate(batch_id, version, value):
        return Estimate("p", batch_id, version, "champion", "roc_auc", value,
                        None if value is None else value - 0.01,
                        None if value is None else value + 0.01, 1000,
                        "cbpe" if value is not None else "none",
                        None if value is not None else "not estimated: test")

    with session_scope(db_url) as s:
        for i, b in enumerate(("b1", "b2")):
            s.add(Batch(problem="p", batch_id=b, source_uri="x", sha256="0" * 64, row_count=1,
                        schema={}, schema_hash="0", state="published",
                        event_time_max=datetime(2020 + i, 1, 1, tzinfo=UTC)))
        # labels of b1 measured before its estimate was stored
        s.add(PerformanceReport(problem="p", batch_id="b1", model_version=1, role="champion",
                                metric="roc_auc", value=0.80, predicted_rows=1000,
                                matured_rows=1000, labelled_rows=1000))
    record_estimate(estimate("b2", 1, 0.75), db_url)
    record_estimate(estimate("b1", 1, 0.81), db_url)
    record_estimate(estimate("b1", 2, None), db_url)
    record_estimate(estimate("b1", 1, 0.82), db_url)  # replaced, not duplicated
    with session_scope(db_url) as s:
        attach_realized(s, "p", "b2", 1, "roc_auc", 0.70)
        assert s.query(PerformanceEstimate).count() == 3
    rows = {(h["batch_id"], h["model_version"]): h for h in estimate_history("p", db_url)}
    assert [(h["batch_id"], h["model_version"]) for h in estimate_history("p", db_url)] == [
        ("b1", 1), ("b1", 2), ("b2", 1)]
    assert rows[("b1", 1)]["realized"] == 0.80
    assert math.isclose(rows[("b1", 1)]["error"], 0.80 - 0.82)
    assert rows[("b2", 1)]["realized"] == 0.70 and rows[("b2", 1)]["realized_at"]
    assert rows[("b1", 2)]["estimate"] is None and rows[("b1", 2)]["error"] is None
    assert latest_estimate("p", 1, db_url) == {"batch_id": "b2", "metric": "roc_auc",
                                               "estimate": 0.75, "ci_low": 0.74,
                                               "ci_high": 0.76, "rows": 1000}
    assert latest_estimate("p", 2, db_url) is None  # only a "not estimated" row
