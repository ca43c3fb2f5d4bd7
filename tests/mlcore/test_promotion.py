"""Evaluation and promotion, the stages: throughput timing, the fair holdout (by row key),
recorded decisions and their run cards, a checked or forced manual promotion, the backtest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from promotion_variant import variant
from sqlalchemy import select

from mlcore.model.evaluation import KEEP_TOO_CLOSE, KEEP_WORSE, REJECT_FLOOR
from mlcore.promotion import evaluate_contender
from mlcore.store.models import Evaluation
from mlcore.store.session import session_scope


def test_measure_throughput_interleaves_warm_passes_of_both_models_on_one_thread(spec):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    from mlcore.evaluation import measure_throughput
    from mlcore.model.targets import mark

    calls: list[tuple[str, int, int]] = []

    class Counted(LogisticRegression):
        def __init__(self, tag: str = "") -> None:
            super().__init__()
            self.tag = tag

        def predict_proba(self, X):
            threads = [i["num_threads"] for i in threadpool_info()]
            calls.append((self.tag, len(X), max(threads, default=1)))
            return super().predict_proba(X)

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    y = (X["a"] > 0).astype(int).to_numpy()
    models = {n: mark(Counted(n).fit(X, y), "binary", ["0", "1"]) for n in ("contender",
                                                                             "champion")}
    s = variant(spec, guardrails={"timing_repeats": 4, "timing_rows": 2500})
    out = measure_throughput(models, X, s)
    assert [c[0] for c in calls] == ["contender", "champion"] + [
        "contender", "champion", "champion", "contender"] * 2  # warm-up, then alternating
    assert [c[1] for c in calls[:2]] == [1000, 1000] and {c[1] for c in calls[2:]} == {2500}
    assert {c[2] for c in calls} == {1}  # one thread while timing
    for t in out.values():
        assert len(t["passes"]) == 4 and t["rows"] == 2500 and t["threads"] == 1
        assert t["p10"] <= t["rows_per_second"] <= t["p90"]
        assert t["spread"] == pytest.approx((t["p90"] - t["p10"]) / t["rows_per_second"])


def test_the_holdout_is_checked_by_row_key_against_both_models(spec, loop):
    from mlcore.evaluation import UnfairHoldout, check_fair_holdout
    from mlcore.model.registry import get_version

    mv = get_version(spec.name, loop.contender.version, loop.settings.db_url)
    holdout = pd.read_parquet(loop.dataset.holdout_uri)
    check_fair_holdout(spec, holdout, [mv], loop.settings)  # the latest 2017 rows: unseen
    leaked = pd.concat([holdout, pd.read_parquet(loop.dataset.train_uri).head(7)])
    with pytest.raises(UnfairHoldout, match=f"v{mv.version} trained on 7 of the 307"):
        check_fair_holdout(spec, leaked, [mv], loop.settings)


def test_rows_a_model_trained_on_are_left_out_and_too_few_left_is_refused(spec, loop):
    """A champion that trained on part of today's holdout (history loaded newest first) is
    judged with the contender on the rest; with too few rows left, nobody is judged."""
    from mlcore.evaluation import UnfairHoldout, unseen_holdout
    from mlcore.model.registry import get_version

    mv = get_version(spec.name, loop.contender.version, loop.settings.db_url)
    holdout = pd.read_parquet(loop.dataset.holdout_uri)
    same, seen = unseen_holdout(spec, holdout, [mv], loop.settings)
    assert seen == {} and same is holdout
    train = pd.read_parquet(loop.dataset.train_uri)
    mixed = pd.concat([holdout, train.head(250)], ignore_index=True)
    kept, seen = unseen_holdout(spec, mixed, [mv], loop.settings)
    assert seen == {mv.version: 250} and len(kept) == 300
    assert set(kept["id"]) == set(holdout["id"])
    strict = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(
        update={"min_holdout_rows": 301})})
    with pytest.raises(UnfairHoldout, match="only 300 rows neither trained on are left, fewer "
                                            "than evaluation.min_holdout_rows 301"):
        unseen_holdout(strict, mixed, [mv], loop.settings)


def test_evaluating_the_champion_against_itself_keeps_it_and_records_why(spec, loop):
    version = loop.contender.version
    out = evaluate_contender(spec, loop.dataset, version, loop.settings)

    assert out["promote"] is False and "too close to call" in out["reason"]
    assert (out["contender_version"], out["champion_version"]) == (version, version)
    assert (out["delta"], out["ci_low"], out["ci_high"]) == (0.0, 0.0, 0.0)
    with session_scope(loop.settings.db_url) as s:
        row = s.scalar(select(Evaluation).where(Evaluation.id == out["evaluation_id"]))
        assert (row.holdout_rows, row.holdout_batch_ids) == (300, ["2017"])
        assert row.holdout_hash == loop.dataset.holdout_hash
        assert row.contender_metrics["roc_auc"] == row.champion_metrics["roc_auc"] > 0.7
        assert row.promote is False and row.reason == out["reason"]
        assert row.outcome == KEEP_TOO_CLOSE and row.run_card_uri == out["run_card"]
        assert row.details["bootstrap_samples"] == 1000 and row.details["split"] == "time_slice"
        assert {r["column"] for r in row.details["slices"]} == {"SEX", "RAC1P"}
        assert row.thresholds["non_inferiority_margin"] == 0.0
        speed = row.details["throughput"]
        assert set(speed["timings"]) == {"contender", "champion"}
        assert len(speed["timings"]["contender"]["passes"]) == 5 and speed["ok"] is True


def test_the_run_card_is_written_small_and_names_the_decision(spec, loop):
    out = evaluate_contender(spec, loop.dataset, loop.contender.version, loop.settings)
    html = Path(out["run_card"])
    card = json.loads((html.parent / "run_card.json").read_text())
    assert html.is_relative_to(loop.settings.home / "reports")
    assert html.parent.name == f"evaluation={out['evaluation_id']}"
    assert html.stat().st_size + (html.parent / "run_card.json").stat().st_size < 1_000_000
    assert card["evaluation_id"] == out["evaluation_id"] and card["outcome"] == KEEP_TOO_CLOSE
    assert card["delta"] == 0.0 and card["ci"] == [0.0, 0.0]
    assert card["contender"]["curves"]["roc"]["fpr"][0] == 0.0 and card["champion"] is not None
    text = html.read_text()
    assert KEEP_TOO_CLOSE in text and text.count("<svg") == 4


def test_a_checked_promotion_applies_the_retrain_rules_and_force_skips_them(spec, loop):
    from mlcore.model.preprocessing import build_pipeline
    from mlcore.model.registry import alias_holder, alias_log, register_version
    from mlcore.promotion import promote_version, rollback
    from mlcore.training import save_artifact

    url, champion = loop.settings.db_url, loop.contender.version
    train = pd.read_parquet(loop.dataset.train_uri)
    worse = build_pipeline(spec, "logistic_regression").fit(train[["AGEP"] + spec.categorical]
                                                            .assign(SCHL=1, ESP=0, RELP=0),
                                                            train["employed"])
    uri, sha = save_artifact(worse, loop.settings, spec.name)
    version = register_version(
        spec, loop.settings, algorithm="logistic_regression", artifact_uri=uri,
        artifact_sha256=sha, hyperparameters={}, dataset=loop.dataset, train_rows=len(train),
        validation={}, timings={}, reproducibility={"dataset": loop.dataset.to_dict()})

    refused = promote_version(spec, version, "try it", loop.settings)
    assert refused["promoted"] is False and refused["outcome"] in (KEEP_WORSE, REJECT_FLOOR)
    assert refused["evaluation_id"] and Path(refused["run_card"]).is_file()
    assert alias_holder(spec.name, url) == champion

    forced = promote_version(spec, version, "incident 42", loop.settings, force=True)
    assert forced["promoted"] and alias_holder(spec.name, url) == version
    assert alias_log(spec.name, url)[-1]["reason"] == "incident 42 (forced, checks skipped)"
    assert rollback(spec.name, "restore the fixture's champion", url) == (version, champion)


def test_the_rolling_origin_backtest_refits_both_configurations_per_batch(spec, loop):
    """Off by default; with backtest_batches 2 the run card reports 2016 (fitted on 2015) and
    2017's earlier rows (fitted on 2015-16) for contender and champion, not part of the rule."""
    assert spec.evaluation.backtest_batches == 0
    s = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(
        update={"backtest_batches": 2})})
    out = evaluate_contender(s, loop.dataset, loop.contender.version, loop.settings)
    card = json.loads((Path(out["run_card"]).parent / "run_card.json").read_text())
    back = card["backtest"]
    assert [(b["batch_id"], b["fit_rows"], b["rows"]) for b in back] == [
        ("2016", 1500, 1500), ("2017", 3000, 1200)]
    for b in back:  # the champion is the same version: the same refit, the same metric
        assert 0.7 < b["contender"] == b["champion"] and b["delta"] == 0.0
    assert "Rolling-origin backtest" in Path(out["run_card"]).read_text()
    plain = evaluate_contender(spec, loop.dataset, loop.contender.version, loop.settings)
    assert json.loads((Path(plain["run_card"]).parent / "run_card.json").read_text())[
        "backtest"] == []
