"""Evaluation: the promotion rule's four cases, metric orientation, the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from mlcore.evaluation import compare, compute_metrics, decide, evaluate_contender, paired_bootstrap
from mlcore.problems import ProblemSpec
from mlcore.store.models import Evaluation
from mlcore.store.session import session_scope


def variant(spec, metric=None, **promotion) -> ProblemSpec:
    data = spec.model_dump()
    data["promotion"] = {**data["promotion"], **promotion}
    if metric is not None:
        data["metric"] = metric
    return ProblemSpec.model_validate(data)


@pytest.fixture(scope="module")
def loss_spec(spec) -> ProblemSpec:
    """Minimize log loss; the floor is the highest loss a first model may have."""
    return variant(spec, metric={"name": "log_loss", "direction": "minimize"}, min_metric=0.5)


def synthetic(n: int = 600, seed: int = 0):
    """Labels, a sharp model and a near-random one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.clip(0.8 * y + 0.1 + rng.normal(0, 0.1, n), 0.01, 0.99)
    poor = np.clip(0.5 + 0.05 * (y - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)
    return y, good, poor


@pytest.mark.parametrize("contender, champion, ci, promote, words", [
    (0.80, None, None, True, "no champion yet"),
    (0.75, None, None, True, "no champion yet"),
    (0.70, None, None, False, "misses the floor"),
    (0.86, 0.80, (0.03, 0.09), True, "beats champion"),
    (0.78, 0.84, (-0.09, -0.03), False, "worse than"),
    (0.81, 0.80, (-0.01, 0.03), False, "too close to call"),
    (0.80, 0.81, (-0.04, 0.02), False, "too close to call"),
    (0.70, 0.60, (0.05, 0.15), False, "misses the floor"),
], ids=["no-baseline-above-floor", "no-baseline-at-floor", "no-baseline-below-floor", "better",
        "worse", "within-tolerance-better", "within-tolerance-worse", "better-but-below-floor"])
def test_decide_maximize(spec, contender, champion, ci, promote, words):
    d = decide(spec, contender, champion, ci)
    assert d.promote is promote
    assert words in d.reason
    assert (d.metric, d.contender, d.champion) == ("roc_auc", contender, champion)
    if champion is not None and words != "misses the floor":
        assert d.delta == pytest.approx(contender - champion)
        assert (d.ci_low, d.ci_high) == ci
        assert "champion kept" in d.reason or promote


def test_a_clear_win_smaller_than_the_threshold_keeps_the_champion(spec):
    d = decide(variant(spec, min_improvement=0.02), 0.81, 0.80, (0.002, 0.018))
    assert d.promote is False and "too close to call" in d.reason
    assert decide(variant(spec, min_improvement=0.02), 0.83, 0.80, (0.02, 0.04)).promote


@pytest.mark.parametrize("contender, champion, ci, promote, delta, words", [
    (0.40, None, None, True, None, "no champion yet"),
    (0.60, None, None, False, None, "misses the floor"),
    (0.30, 0.40, (0.05, 0.15), True, 0.10, "beats champion"),
    (0.45, 0.40, (-0.08, -0.02), False, -0.05, "worse than"),
    (0.39, 0.40, (-0.02, 0.04), False, 0.01, "too close to call"),
], ids=["no-baseline-under-max-loss", "no-baseline-over-max-loss", "lower-loss-wins",
        "higher-loss-loses", "within-tolerance"])
def test_decide_minimize_orients_delta_so_positive_is_better(loss_spec, contender, champion, ci,
                                                             promote, delta, words):
    d = decide(loss_spec, contender, champion, ci)
    assert d.promote is promote and words in d.reason
    assert d.delta == (None if delta is None else pytest.approx(delta))


def test_paired_bootstrap_of_identical_predictions_is_zero():
    y, good, _ = synthetic(300)
    assert paired_bootstrap(y, good, good, "roc_auc", 50, 0.95) == (0.0, 0.0)


def test_paired_bootstrap_brackets_the_true_delta_and_is_seeded():
    y, good, poor = synthetic()
    low, high = paired_bootstrap(y, good, poor, "roc_auc", 200, 0.95, seed=1)
    point = compute_metrics(y, good)["roc_auc"] - compute_metrics(y, poor)["roc_auc"]
    assert 0 < low < point < high
    assert paired_bootstrap(y, good, poor, "roc_auc", 200, 0.95, seed=1) == (low, high)
    narrow = paired_bootstrap(y, good, poor, "roc_auc", 200, 0.6, seed=1)
    assert low <= narrow[0] <= narrow[1] <= high


def test_compute_metrics_on_perfect_predictions():
    y = np.array([0, 1, 1, 0, 1])
    m = compute_metrics(y, y.astype(float))
    assert (m["roc_auc"], m["accuracy"]) == (1.0, 1.0)
    assert m["log_loss"] < 1e-5


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy"])
def test_compare_promotes_a_much_better_model_and_keeps_a_much_worse_one(spec, metric):
    s = variant(spec, metric={"name": metric, "direction": "maximize"}, min_metric=0.5)
    y, good, poor = synthetic()
    win = compare(s, y, good, poor)
    assert win.promote and win.delta > 0 and win.ci_low > 0
    lose = compare(s, y, poor, good)
    assert not lose.promote and "worse than" in lose.reason
    assert lose.delta < 0 and lose.ci_high < 0


def test_compare_orients_a_minimized_metric(loss_spec):
    y, good, poor = synthetic()
    win = compare(loss_spec, y, good, poor)
    assert win.promote and win.contender < win.champion
    assert win.delta > 0 and 0 < win.ci_low <= win.delta <= win.ci_high
    lose = compare(variant(loss_spec, min_metric=1.0), y, poor, good)
    assert not lose.promote and "worse than" in lose.reason and lose.ci_high < 0


def test_compare_without_a_champion_uses_the_floor_only(spec):
    y, good, poor = synthetic()
    assert compare(spec, y, good, None).promote
    d = compare(spec, y, poor, None)
    assert not d.promote and d.contender < 0.75


def test_evaluating_the_champion_against_itself_keeps_it_and_records_why(spec, loop):
    version = loop.contender.version
    out = evaluate_contender(spec, loop.dataset, version, loop.settings)

    assert out["promote"] is False and "too close to call" in out["reason"]
    assert (out["contender_version"], out["champion_version"]) == (version, version)
    assert (out["delta"], out["ci_low"], out["ci_high"]) == (0.0, 0.0, 0.0)
    with session_scope(loop.settings.db_url) as s:
        row = s.scalar(select(Evaluation).where(Evaluation.id == out["evaluation_id"]))
        assert (row.holdout_rows, row.holdout_batch_ids) == (1500, ["2017"])
        assert row.holdout_hash == loop.dataset.holdout_hash
        assert row.contender_metrics["roc_auc"] == row.champion_metrics["roc_auc"] > 0.7
        assert row.promote is False and row.reason == out["reason"]
