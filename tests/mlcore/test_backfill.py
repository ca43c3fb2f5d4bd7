"""Backfill: the pure planner per policy, done-state on SQLite and PostgreSQL, the runner's no-op
re-run, failed-then-fixed reprocessing, and batch IDs that must never reach a path or SQL."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from mlcore.backfill import (
    BackfillConfig,
    PlanItem,
    StageState,
    last_status,
    ledger_path,
    load_state,
    plan,
    plan_backfill,
    record_attempt,
    run_backfill,
    run_stage,
)
from mlcore.batches import BatchNotFound, InvalidBatchId
from mlcore.data.integrity import fingerprint
from mlcore.ingestion import ingest_batch
from mlcore.store.models import Alias, Batch, DriftReport, Materialization, Prediction
from mlcore.store.session import session_scope

DATA = Path(__file__).resolve().parents[2] / "data" / "census_ma_employment"
EVIL = ["../../etc/passwd", "a; rm -rf /", "x' OR '1'='1", "/etc/passwd", "A" * 10_240]


def year_end(year: int) -> datetime:
    return datetime(year, 12, 31, tzinfo=UTC)


# --- the pure planner -------------------------------------------------------------------------

STATE = StageState(published={"2015": year_end(2015), "2016": year_end(2016),
                              "2017": year_end(2017)},
                   done=frozenset({"2015", "2017"}),
                   last_status={"2015": "ok", "2016": "failed", "2017": "failed"})


@pytest.mark.parametrize("policy, expected", [
    ("missing", [("2015", "skip", "already done"), ("2016", "run", "not done yet"),
                 ("2017", "skip", "already done")]),
    ("failed", [("2015", "skip", "did not fail last time (last attempt: ok)"),
                ("2016", "run", "failed last time"), ("2017", "run", "failed last time")]),
    ("all", [("2015", "run", "policy all"), ("2016", "run", "policy all"),
             ("2017", "run", "policy all")]),
])
def test_planner_applies_the_policy(policy, expected):
    items = plan_backfill(["2015", "2016", "2017"], policy, "given", STATE)
    assert [(i.batch_id, i.action, i.reason) for i in items] == expected


def test_failed_policy_skips_a_batch_never_attempted():
    state = StageState({"2015": year_end(2015)}, frozenset(), {})
    assert plan_backfill(["2015"], "failed", "given", state) == [
        PlanItem("2015", "skip", "did not fail last time (last attempt: none)")]


@pytest.mark.parametrize("order, expected", [
    ("given", ["2017", "b", "2015", "a", "2016"]),
    ("event_time", ["b", "2015", "a", "2016", "2017"]),  # b, 2015, a tie: given order kept
])
def test_planner_orders_by_event_time_and_keeps_ties_in_given_order(order, expected):
    state = StageState({"2015": year_end(2015), "2016": year_end(2016), "2017": year_end(2017),
                        "a": year_end(2015), "b": year_end(2015)}, frozenset(), {})
    items = plan_backfill(["2017", "b", "2015", "a", "2016"], "all", order, state)
    assert [i.batch_id for i in items] == expected


def test_planner_rejects_invalid_and_unpublished_ids_first_and_drops_duplicates():
    items = plan_backfill(["2016", "../x", "2099", "2016", "2015"], "missing", "given", STATE)
    assert [(i.batch_id, i.action) for i in items] == [
        ("../x", "reject"), ("2099", "reject"), ("2016", "run"), ("2015", "skip")]
    assert "invalid batch id '../x'" in items[0].reason
    assert items[1].reason == "batch '2099' is not published"


# --- config (the DAG's Params) ----------------------------------------------------------------

def test_backfill_config_has_the_params_bounds():
    cfg = BackfillConfig.from_params({"stage": "score", "batch_ids": ["2015", "2016"],
                                      "policy": "failed", "max_active": 8})
    assert (cfg.stage, cfg.batch_ids, cfg.policy, cfg.order, cfg.max_active) == (
        "score", ("2015", "2016"), "failed", "given", 8)
    with pytest.raises(ValidationError):  # frozen
        cfg.stage = "monitor"


@pytest.mark.parametrize("params", [
    {"stage": "train", "batch_ids": ["2015"]},
    {"stage": "score", "batch_ids": []},
    {"stage": "score", "batch_ids": [f"b{i}" for i in range(501)]},
    {"stage": "score", "batch_ids": ["../etc"]},
    {"stage": "score", "batch_ids": ["2015"], "policy": "some"},
    {"stage": "score", "batch_ids": ["2015"], "max_active": 0},
    {"stage": "score", "batch_ids": ["2015"], "max_active": 9},
])
def test_backfill_config_refuses_out_of_bounds_values(params):
    with pytest.raises(ValidationError):
        BackfillConfig.from_params(params)


# --- state read from the store (SQLite and PostgreSQL) ----------------------------------------

def add_batch(session, batch_id: str, year: int, state: str = "published") -> None:
    session.add(Batch(problem="census_employment", batch_id=batch_id, source_uri="file:///x",
                      sha256="0" * 64, row_count=10, schema_hash="1" * 64, schema={},
                      quarantine_count=0, state=state, event_time_min=year_end(year),
                      event_time_max=year_end(year)))


def test_done_state_per_stage_follows_the_champion(spec, settings):
    p, url = spec.name, settings.db_url
    with session_scope(url) as s:
        for i, b in enumerate(("2015", "2016", "2017")):
            add_batch(s, b, 2015 + i)
        add_batch(s, "bad", 2015, state="rejected")
        part = settings.partition("features", p, "2015")
        part.mkdir(parents=True)
        pd.DataFrame({"x": range(10)}).to_parquet(part / "part-0.parquet")
        s.add(Materialization(problem=p, batch_id="2015", feature_view="fv",
                              offline_uri=str(part), rows=10, window_start=year_end(2015),
                              window_end=year_end(2015), files=fingerprint(part)))
        s.add_all([Prediction(problem=p, batch_id=b, entity_key=str(k), model_version=v,
                              score=0.5) for b, v in (("2015", 1), ("2016", 2)) for k in range(3)])
        s.add(DriftReport(problem=p, batch_id="2017", model_version=2, drift_share=0.1,
                          drifted_columns=[], dataset_drift=False, json_uri="j", html_uri="h"))
    ids = ["2015", "2016", "2017", "bad", "2099"]

    state = load_state(p, "materialize", ids, settings)
    assert set(state.published) == {"2015", "2016", "2017"}
    assert state.published["2016"] == year_end(2016)  # UTC-aware on both stores
    assert state.done == {"2015"}
    assert load_state(p, "score", ids, settings).done == frozenset()  # no champion yet
    with session_scope(url) as s:
        s.add(Alias(problem=p, alias="champion", version=2))
    assert load_state(p, "score", ids, settings).done == {"2016"}
    assert load_state(p, "monitor", ids, settings).done == {"2017"}

    items = plan(spec, "score", ["2017", "2015", "bad", "2016"], settings, "missing", "event_time")
    assert [(i.batch_id, i.action) for i in items] == [
        ("bad", "reject"), ("2015", "run"), ("2016", "skip"), ("2017", "run")]


def test_ledger_keeps_the_latest_status_per_batch(spec, sqlite_settings):
    settings = sqlite_settings
    record_attempt(settings, spec.name, "score", "2015", "boom")
    record_attempt(settings, spec.name, "score", "2016", None)
    record_attempt(settings, spec.name, "score", "2015", None)
    path = ledger_path(settings, spec.name, "score")
    assert path == settings.home / "backfill" / f"problem={spec.name}" / "score.jsonl"
    with path.open("a") as fh:
        fh.write('{"batch_id": "2017", "sta')  # a torn line from a crash
    lines = [json.loads(x) for x in path.read_text().splitlines()[:3]]
    assert [(e["batch_id"], e["status"], e["error"]) for e in lines] == [
        ("2015", "failed", "boom"), ("2016", "ok", None), ("2015", "ok", None)]
    assert all(datetime.fromisoformat(e["at"]).tzinfo for e in lines)
    assert last_status(settings, spec.name, "score") == {"2015": "ok", "2016": "ok"}
    assert last_status(settings, spec.name, "monitor") == {}


# --- the runner, for real ---------------------------------------------------------------------

def small(slices, year: int, folder: Path, rows: int = 300) -> str:
    path = folder / f"small_{year}.parquet"
    pd.read_parquet(slices[year]).head(rows).to_parquet(path, index=False)
    return str(path)


def snapshot(settings, problem: str) -> dict:
    """What materializing writes: offline files, online store, rows; with times and ids."""
    files = {str(p): p.stat().st_mtime_ns for p in (settings.home / "features").rglob("*")}
    online = settings.home / "feast" / "online_store.db"
    with session_scope(settings.db_url) as s:
        rows = sorted((m.batch_id, m.id, m.created_at) for m in s.scalars(
            select(Materialization).where(Materialization.problem == problem)))
    ledger = ledger_path(settings, problem, "materialize")
    return {"files": files, "online": online.stat().st_mtime_ns, "rows": rows,
            "ledger": ledger.read_bytes()}


def test_rerun_under_missing_is_a_verified_no_op(spec, slices, settings, tmp_path):
    for year in (2015, 2016):
        ingest_batch(spec, small(slices, year, tmp_path), str(year), settings)

    first = run_backfill(spec, "materialize", ["2015", "2016"], settings)
    assert [(o.batch_id, o.status) for o in first.outcomes] == [("2015", "ok"), ("2016", "ok")]
    assert not first.failed
    before = snapshot(settings, spec.name)
    assert [r[0] for r in before["rows"]] == ["2015", "2016"] and len(before["files"]) >= 4

    again = run_backfill(spec, "materialize", ["2015", "2016"], settings, policy="missing")
    assert [(o.status, o.detail) for o in again.outcomes] == [("skipped", "already done")] * 2
    assert again.to_dict()["counts"] == {"ok": 0, "skipped": 2, "failed": 0}
    assert snapshot(settings, spec.name) == before  # no file, row or ledger line rewritten

    forced = run_backfill(spec, "materialize", ["2016"], settings, policy="all")
    assert [o.status for o in forced.outcomes] == ["ok"]
    after = snapshot(settings, spec.name)
    assert after["rows"][0] == before["rows"][0] and after["rows"][1] != before["rows"][1]
    assert len(after["ledger"].splitlines()) == 3


def test_a_failed_batch_is_redone_alone_under_the_failed_policy(spec, slices, settings,
                                                                tmp_path):
    for year in (2015, 2016, 2017):
        ingest_batch(spec, small(slices, year, tmp_path, rows=200), str(year), settings)
    curated = settings.partition("curated", spec.name, "2016")
    shutil.move(curated, tmp_path / "away")  # break 2016: its curated files are gone

    first = run_backfill(spec, "materialize", ["2015", "2016", "2017"], settings, max_workers=2)
    status = {o.batch_id: o for o in first.outcomes}
    assert (status["2015"].status, status["2017"].status) == ("ok", "ok"), first.to_dict()
    assert status["2016"].status == "failed" and not status["2016"].bad_input
    assert "DataDamaged" in status["2016"].error and "is missing" in status["2016"].error
    assert first.failed and not first.bad_input
    assert last_status(settings, spec.name, "materialize") == {
        "2015": "ok", "2016": "failed", "2017": "ok"}

    shutil.move(tmp_path / "away", curated)  # fixed
    retry = run_backfill(spec, "materialize", ["2015", "2016", "2017"], settings,
                         policy="failed")
    assert [(o.batch_id, o.status) for o in retry.outcomes] == [
        ("2015", "skipped"), ("2016", "ok"), ("2017", "skipped")]
    assert not retry.failed
    with session_scope(settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Materialization)) == 3
    again = run_backfill(spec, "materialize", ["2016"], settings, policy="failed")
    assert [o.status for o in again.outcomes] == ["skipped"]


def tree(root: Path, skip: Path | None = None) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if skip is None or not p.is_relative_to(skip)}


@pytest.mark.parametrize("evil", EVIL, ids=["traversal", "shell", "sql", "absolute", "10kb"])
def test_bad_batch_ids_are_named_and_touch_nothing(spec, slices, sqlite_settings, tmp_path,
                                                   monkeypatch, evil):
    settings = sqlite_settings
    ingest_batch(spec, small(slices, 2015, tmp_path), "2015", settings)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    outside, inside = tree(tmp_path, skip=settings.home), tree(settings.home)

    result = run_backfill(spec, "score", [evil, "2099", "2015"], settings)

    bad = {o.batch_id: o for o in result.outcomes if o.bad_input}
    assert set(bad) == {evil, "2099"} and result.bad_input
    assert repr(evil) in bad[evil].error and "'2099'" in bad["2099"].error
    assert all(o.status == "failed" for o in bad.values())
    [tried] = [o for o in result.outcomes if o.batch_id == "2015"]  # the others went on
    assert tried.status == "failed" and "no champion" in tried.error and not tried.bad_input
    assert tree(tmp_path, skip=settings.home) == outside and os.listdir(cwd) == []
    assert tree(settings.home) - inside == {"backfill", f"backfill/problem={spec.name}",
                                            f"backfill/problem={spec.name}/score.jsonl"}
    assert last_status(settings, spec.name, "score") == {"2015": "failed"}
    with pytest.raises(InvalidBatchId, match="invalid batch id"):
        run_stage(spec, "score", evil, settings)


def test_run_stage_refuses_an_unpublished_batch_and_records_nothing(spec, sqlite_settings):
    with pytest.raises(BatchNotFound, match="'2099'"):
        run_stage(spec, "materialize", "2099", sqlite_settings)
    assert not ledger_path(sqlite_settings, spec.name, "materialize").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"max_workers": 0}, "max_workers"), ({"max_workers": 9}, "max_workers"),
    ({"policy": "some"}, "unknown policy"), ({"order": "random"}, "unknown order"),
])
def test_runner_refuses_bad_knobs(spec, sqlite_settings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_backfill(spec, "score", ["2015"], sqlite_settings, **kwargs)
    with pytest.raises(ValueError, match="between 1 and 500"):
        run_backfill(spec, "score", [], sqlite_settings)


@pytest.fixture(scope="module")
def late(spec, loop, tmp_path_factory) -> str:
    """600 further real 2018 rows (ids unseen by the loop), unlabelled, as batch ``bf2018``."""
    path = tmp_path_factory.mktemp("late") / "late.parquet"
    rows = pd.read_parquet(DATA / "employment_2018.parquet").tail(600)
    rows.drop(columns=["employed"]).to_parquet(path, index=False)
    ingest_batch(spec, str(path), "bf2018", loop.settings)
    return "bf2018"


def test_score_then_monitor_with_the_champion_and_rerun_as_no_ops(spec, loop, late):
    settings, version = loop.settings, loop.contender.version
    for stage in ("materialize", "score", "monitor"):
        result = run_backfill(spec, stage, [late], settings)
        assert [o.status for o in result.outcomes] == ["ok"], result.to_dict()
    with session_scope(settings.db_url) as s:
        preds = s.execute(select(func.count(), func.max(Prediction.id)).where(
            Prediction.batch_id == late, Prediction.model_version == version)).one()
        [report] = s.scalars(select(DriftReport).where(DriftReport.batch_id == late))
    assert preds[0] == 600 and report.model_version == version
    reports = {p: p.stat().st_mtime_ns for p in Path(report.json_uri).parent.iterdir()}

    for stage in ("materialize", "score", "monitor"):
        again = run_backfill(spec, stage, [late], settings)
        assert [(o.status, o.detail) for o in again.outcomes] == [("skipped", "already done")]
    with session_scope(settings.db_url) as s:
        assert s.execute(select(func.count(), func.max(Prediction.id)).where(
            Prediction.batch_id == late, Prediction.model_version == version)).one() == preds
        [same] = s.scalars(select(DriftReport).where(DriftReport.batch_id == late))
    assert (same.id, same.created_at) == (report.id, report.created_at)
    assert {p: p.stat().st_mtime_ns for p in Path(report.json_uri).parent.iterdir()} == reports


def test_event_time_order_comes_from_the_manifests(spec, loop, late):
    items = plan(spec, "materialize", [late, "2017", "2015", "2016"], loop.settings,
                 "all", "event_time")
    assert [i.batch_id for i in items] == ["2015", "2016", "2017", late]
