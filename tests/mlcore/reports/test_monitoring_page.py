"""Monitoring page: a hand-built store (SQLite and PostgreSQL) rendered to HTML + JSON; event-time
order, coverage and quarantine figures, decisions with their links, escaping, size, empty case."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_runcard import strict_json, without_svg  # the run card's page-test helpers

from mlcore.problems import ProblemNotFound
from mlcore.reports.monitoring_data import MAX_BATCHES
from mlcore.reports.monitoring_page import MAX_BYTES, MonitoringPage, write_monitoring_page
from mlcore.store.models import (
    Alias,
    AliasHistory,
    Batch,
    DriftReport,
    Evaluation,
    ModelVersion,
    PerformanceEstimate,
    PerformanceReport,
    RetrainRequest,
)
from mlcore.store.session import session_scope

PROBLEM = "census_employment"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# batch ID -> event year; inserted in this (non-event, non-alphabetical) order
EVENT_YEAR = {"charlie": 2017, "delta": 2015, "bravo": 2018, "alpha": 2016}
EVENT_ORDER = ["delta", "alpha", "charlie", "bravo"]
HOSTILE = "drift <script>alert('x')</script> & $x$"


def svgs(page: str) -> str:
    """The page's plots alone (their text is literal SVG ``<text>``)."""
    return "".join(re.findall(r"<svg.*?</svg>", page, flags=re.S))


def table_row(page: str, first_cell: str) -> str:
    """The <tr> of the batch table whose first cell is ``first_cell``."""
    found = re.findall(rf"<tr[^>]*><td>{re.escape(first_cell)}</td>.*?</tr>", without_svg(page))
    assert len(found) == 1, found
    return found[0]


def reports_dir(settings) -> Path:
    return settings.partition("reports", PROBLEM)


def batch_row(batch_id: str, i: int) -> Batch:
    year = EVENT_YEAR[batch_id]
    return Batch(problem=PROBLEM, batch_id=batch_id, source_uri=f"file:///data/{batch_id}",
                 sha256="0" * 64, row_count=1000 * (i + 1), schema={}, schema_hash="",
                 quarantine_count=50 * (i + 1) if batch_id != "alpha" else 0, state="published",
                 event_time_min=datetime(year, 1, 1, tzinfo=UTC),
                 event_time_max=datetime(year, 12, 31, tzinfo=UTC),
                 created_at=T0 + timedelta(minutes=i))


def drift_row(settings, batch_id: str, share: float, flagged: bool, **kw) -> DriftReport:
    html = settings.partition("reports", PROBLEM, batch_id) / "drift_v1.html"
    return DriftReport(problem=PROBLEM, batch_id=batch_id, model_version=1, drift_share=share,
                       drifted_columns=["AGEP"] if flagged else [], dataset_drift=flagged,
                       json_uri=str(html.with_suffix(".json")), html_uri=str(html), **kw)


def perf_row(batch_id: str, version: int, role: str, value: float | None, predicted: int,
             labelled: int) -> PerformanceReport:
    return PerformanceReport(problem=PROBLEM, batch_id=batch_id, model_version=version, role=role,
                             metric="roc_auc", value=value, predicted_rows=predicted,
                             matured_rows=min(predicted, 2 * labelled), labelled_rows=labelled)


def evaluation(settings, contender: int, champion: int | None, outcome: str, minutes: int,
               card: str | None = None) -> Evaluation:
    return Evaluation(
        problem=PROBLEM, contender_version=contender, champion_version=champion,
        holdout_batch_ids=["charlie"], holdout_hash="h" * 64, holdout_rows=3000,
        metric="roc_auc", contender_metrics={"roc_auc": 0.8 + contender / 100},
        champion_metrics={"roc_auc": 0.81} if champion else None,
        delta=0.004 if champion else None, ci_low=-0.001 if champion else None,
        ci_high=0.009 if champion else None, thresholds={}, promote=outcome == "promote",
        outcome=outcome, reason=f"{outcome} because", created_at=T0 + timedelta(minutes=minutes),
        run_card_uri=card)


def fill_store(settings) -> None:
    """Four batches (each with drift, two with challenger reports), three evaluations, two
    retrain requests, three alias moves; plus a performance report for a batch with no manifest."""
    with session_scope(settings.db_url) as s:
        s.add_all(batch_row(b, i) for i, b in enumerate(EVENT_YEAR))
        s.add_all([
            drift_row(settings, "delta", 0.1, False),
            drift_row(settings, "alpha", 0.2, False, details=["not", "a", "dict"]),
            drift_row(settings, "charlie", 0.75, True, details={
                "prediction": {"score": 0.31, "drifted": True},
                "segments": [{"value": "1", "drifted": True}, {"value": "2", "drifted": False}]}),
            drift_row(settings, "bravo", 0.3, False),
        ])
        s.add_all([
            perf_row("delta", 1, "champion", 0.81, 2000, 1600),    # 80.0%
            perf_row("alpha", 1, "champion", 0.79, 1000, 250),     # 25.0%
            perf_row("charlie", 1, "champion", 0.74, 4000, 1000),  # 25.0%
            perf_row("charlie", 2, "challenger", 0.78, 4000, 1000),
            perf_row("bravo", 1, "champion", None, 3000, 30),      # 1.0%, too few matured
            perf_row("bravo", 2, "challenger", None, 3000, 30),
            perf_row("zulu", 1, "champion", 0.7, 0, 0),            # no manifest, no rows
        ])
        base = reports_dir(settings)
        evals = [
            evaluation(settings, 1, None, "promote", 10,
                       str(base / "evaluation=1" / "run_card.html")),
            evaluation(settings, 2, 1, "reject: failed guardrail", 30,
                       (base / "evaluation=2" / "run_card.html").as_uri()),
            evaluation(settings, 3, 1, "keep: not better", 40, "/elsewhere/run_card.html"),
            evaluation(settings, 4, 1, "keep: not better", 41, "javascript:alert(1)"),
        ]
        s.add_all(evals)
        s.flush()
        s.add_all([
            RetrainRequest(problem=PROBLEM, trigger="drift", triggers=["drift"], reason=HOSTILE,
                           batch_id="charlie", state="trained", resolved_by_version=2,
                           created_at=T0 + timedelta(minutes=20)),
            RetrainRequest(problem=PROBLEM, trigger="performance",
                           triggers=["performance", "new_data"], reason="metric fell",
                           batch_id="bravo", state="pending",
                           created_at=T0 + timedelta(minutes=50)),
            AliasHistory(problem=PROBLEM, alias="champion", from_version=None, to_version=1,
                         action="promote", actor="test", reason="first",
                         evaluation_id=evals[0].id, created_at=T0 + timedelta(minutes=11)),
            AliasHistory(problem=PROBLEM, alias="champion", from_version=1, to_version=2,
                         action="promote", actor="test", reason="manual",
                         created_at=T0 + timedelta(minutes=60)),
            AliasHistory(problem=PROBLEM, alias="champion", from_version=2, to_version=1,
                         action="rollback", actor="test", reason="bad v2",
                         created_at=T0 + timedelta(minutes=70)),
            Alias(problem=PROBLEM, alias="champion", version=1),
        ])


@pytest.fixture
def written(settings) -> tuple[MonitoringPage, str, dict]:
    fill_store(settings)
    page = write_monitoring_page(PROBLEM, settings)
    return page, page.path.read_text(), strict_json(page.json_path.read_text())


def test_page_shows_batches_in_event_time_order_with_their_figures(written, settings, spec):
    page, text, data = written
    assert page.path == reports_dir(settings) / "monitoring.html"
    assert page.json_path == reports_dir(settings) / "monitoring.json"
    assert page.bytes == page.path.stat().st_size < MAX_BYTES
    assert sorted(p.name for p in page.path.parent.iterdir()) == [
        "monitoring.html", "monitoring.json"]  # no temp files
    assert text.count("<svg") == 6 and text.count("</svg>") == 6
    assert [b["batch_id"] for b in data["batches"]] == EVENT_ORDER + ["zulu"]
    html_only = without_svg(text)
    positions = [html_only.index(f"<td>{b}</td>") for b in EVENT_ORDER + ["zulu"]]
    assert positions == sorted(positions)
    ticks = [svgs(text).index(f">{b}</text>") for b in EVENT_ORDER]  # first plot's x axis
    assert ticks == sorted(ticks)
    coverage = {b["batch_id"]: b["label_coverage"] for b in data["batches"]}
    assert coverage == {"delta": 0.8, "alpha": 0.25, "charlie": 0.25, "bravo": 0.01,
                        "zulu": None}
    assert "<td>2000</td><td>2000</td><td>1600</td><td>80.0%</td>" in table_row(text, "delta")
    assert "<td>4000</td><td>2000</td><td>1000</td><td>25.0%</td>" in table_row(text, "charlie")
    assert "<td>1.0%</td>" in table_row(text, "bravo")
    assert "<td>too few matured labels (v1)</td>" in table_row(text, "bravo")
    assert "<td>0.78 (v2)</td>" in table_row(text, "charlie")  # challenger
    # quarantine rate = quarantined / rows read (row_count counts every row of the source)
    rates = {b["batch_id"]: b["quarantine_rate"] for b in data["batches"]}
    assert rates == {"charlie": 0.05, "delta": 0.05, "bravo": 0.05, "alpha": 0.0, "zulu": None}
    assert data["batches"][0]["published_rows"] == 1900  # delta: 2000 read, 100 quarantined
    assert "<td>5.0%</td>" in table_row(text, "delta") and "<td>0.0%</td>" in table_row(
        text, "alpha")
    assert data["drift_threshold"] == spec.drift.drift_share
    assert f"threshold ({spec.drift.drift_share:g})" in svgs(text)
    assert table_row(text, "charlie").startswith('<tr class="fail">')  # dataset drift flagged
    assert html_only.count('<tr class="fail"><td>') == 1 + 2  # charlie; reject and rollback rows
    charlie = data["batches"][2]["drift"]
    assert (charlie["prediction_drift"], charlie["segments"], charlie["segments_drifted"]) == (
        0.31, 2, 1)
    assert data["batches"][1]["drift"]["prediction_drift"] is None  # odd details: ignored


def test_decisions_link_run_cards_and_drift_reports(written, settings):
    _, text, data = written
    html_only = without_svg(text)
    kinds = [(d["source"], d["what"]) for d in data["decisions"]]
    assert kinds == [
        ("evaluation", "promote"), ("alias", "champion promote"),
        ("retrain_request", "retrain request (drift): trained"),
        ("evaluation", "reject: failed guardrail"), ("evaluation", "keep: not better"),
        ("evaluation", "keep: not better"),
        ("retrain_request", "retrain request (performance, new_data): pending"),
        ("alias", "champion promote"), ("alias", "champion rollback")]
    for outcome in ("promote", "reject: failed guardrail", "keep: not better",
                    "retrain request (drift): trained", "champion rollback"):
        assert f"<td>{outcome}</td>" in html_only
    assert "<td>evaluation 2</td><td>reject: failed guardrail</td>" in html_only
    assert "<td>alias move 3</td><td>champion rollback</td>" in html_only
    log = html_only[html_only.index("Decision log"):]
    assert log.index("champion rollback") < log.index("reject: failed guardrail")  # newest first
    # run cards under the home: relative to the page's folder (plain path or file: URI)
    assert html_only.count('<a href="evaluation=1/run_card.html">run card</a>') == 2  # + alias
    assert '<a href="evaluation=2/run_card.html">run card</a>' in html_only
    assert '<a href="file:///elsewhere/run_card.html">run card</a>' in html_only
    assert "javascript:" not in text
    assert '<a href="batch=charlie/drift_v1.html">drift report</a>' in html_only
    assert '<a href="batch=delta/drift_v1.html">v1</a>' in table_row(text, "delta")
    assert "<td>v2 vs v1</td>" in html_only and "<td>v2 \u2192 v1</td>" in html_only
    assert "<td>0.004 [-0.001, 0.009]</td>" in html_only
    plots = svgs(text)
    for lane in ("evaluation: promote", "evaluation: keep", "evaluation: reject",
                 "retrain request: drift", "retrain request: performance",
                 "retrain request: new_data", "champion: promote", "rollback"):
        assert f">{lane}</text>" in plots
    for legend in ("champion (matured labels)", "challenger (matured labels)",
                   "evaluation: contender (holdout)", "evaluation: champion (holdout)",
                   "dataset drift flagged", "quarantine rate (%)", "labelled / predicted"):
        assert f">{legend}</text>" in plots
    assert data["champion_version"] == 1 and "current champion v1" in html_only
    assert data["totals"] == {"batches": 5, "decisions": 9}


def test_one_timeline_shows_estimates_beside_realized_with_drift_retrains_and_promotions(
        settings):
    fill_store(settings)
    with session_scope(settings.db_url) as s:
        for v, trained, held in ((1, ["delta"], ["alpha"]), (2, ["delta", "alpha"], ["charlie"])):
            s.add(ModelVersion(
                problem=PROBLEM, version=v, algorithm="lr", hyperparameters={},
                artifact_uri="/x", artifact_sha256="0" * 64, training_batch_ids=trained,
                data_hash="0" * 64, train_rows=10, metrics={}, code_version="x", timings={},
                spec_hash="0" * 64, reproducibility={"dataset": {"holdout_batches": held}},
                created_at=T0 + timedelta(minutes=v)))
        s.add_all([PerformanceEstimate(
            problem=PROBLEM, batch_id=b, model_version=1, role="champion", metric="roc_auc",
            estimate=e, ci_low=e - 0.02, ci_high=e + 0.02, rows=1000, method="cbpe", realized=r)
            for b, e, r in (("delta", 0.8, 0.81), ("alpha", 0.79, 0.79),
                            ("charlie", 0.75, 0.74))])
        s.add(PerformanceEstimate(problem=PROBLEM, batch_id="bravo", model_version=1,
                                  role="champion", metric="roc_auc", rows=3000, method="none",
                                  reason="not estimated: no reference set"))
    page = write_monitoring_page(PROBLEM, settings)
    text, data = page.path.read_text(), strict_json(page.json_path.read_text())
    by = {b["batch_id"]: b["estimate"]["champion"] for b in data["batches"]}
    assert (by["charlie"]["estimate"], by["charlie"]["ci_low"], by["charlie"]["realized"]) == (
        0.75, 0.73, 0.74)
    assert by["bravo"]["estimate"] is None
    assert by["bravo"]["reason"] == "not estimated: no reference set"
    assert [(e["kind"], e["version"], e["batches"]) for e in data["model_events"]] == [
        ("retrain", 1, ["delta", "alpha"]), ("retrain", 2, ["delta", "alpha", "charlie"]),
        ("promotion", 1, ["delta", "alpha"]), ("promotion", 2, ["delta", "alpha", "charlie"]),
        ("rollback", 1, ["delta", "alpha"])]
    timeline = re.findall(r"<svg.*?</svg>", text, flags=re.S)[0]  # the first plot
    for legend in ("champion: estimated (before labels)", "champion: realized (matured labels)",
                   "95% interval", "dataset drift", "retrain", "promoted champion", "rollback"):
        assert f">{legend}</text>" in timeline, legend
    assert ">v1</text>" in timeline and ">v2</text>" in timeline
    assert "Performance timeline: roc_auc estimated before labels" in without_svg(text)


def test_text_is_escaped_and_the_page_is_offline(written):
    _, text, data = written
    assert "<script" not in text
    assert "drift &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; $x$" in text
    assert HOSTILE in [d["reason"] for d in data["decisions"]]
    assert "src=" not in text and "<link" not in text
    urls = set(re.findall(r"https?://[^\"' <>]+", text))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def test_rewriting_follows_the_store(written, settings):
    page, _, _ = written
    with session_scope(settings.db_url) as s:
        s.add(Batch(problem=PROBLEM, batch_id="echo", source_uri="file:///e", sha256="0" * 64,
                    row_count=10, schema={}, schema_hash="", quarantine_count=0,
                    state="published", event_time_min=datetime(2014, 6, 1, tzinfo=UTC),
                    created_at=T0 + timedelta(hours=5)))
    again = write_monitoring_page(PROBLEM, settings)
    data = strict_json(again.json_path.read_text())
    assert [b["batch_id"] for b in data["batches"]][:2] == ["echo", "delta"]  # earliest event
    assert sorted(p.name for p in page.path.parent.iterdir()) == [
        "monitoring.html", "monitoring.json"]


def test_empty_problem_renders_a_page_that_says_so(settings):
    page = write_monitoring_page(PROBLEM, settings)
    text = page.path.read_text()
    assert "No monitoring data yet for census_employment" in text
    assert "<svg" not in text
    data = strict_json(page.json_path.read_text())
    assert data["totals"] == {"batches": 0, "decisions": 0}
    assert data["batches"] == [] and data["decisions"] == [] and data["champion_version"] is None


def test_unknown_or_invalid_problem_is_refused(sqlite_settings):
    with pytest.raises(ProblemNotFound):
        write_monitoring_page("no_such_problem", sqlite_settings)
    with pytest.raises(ValueError, match="invalid problem name"):
        write_monitoring_page("../etc", sqlite_settings)
    assert not (sqlite_settings.home / "reports").exists()


def test_a_long_history_stays_under_the_size_limit(sqlite_settings):
    n = MAX_BATCHES + 250
    with session_scope(sqlite_settings.db_url) as s:
        for i in range(n):
            s.add(Batch(problem=PROBLEM, batch_id=f"batch-{i:04d}-{'x' * 40}",
                        source_uri="file:///x", sha256="0" * 64, row_count=10_000 + i,
                        schema={}, schema_hash="", quarantine_count=i % 97, state="published",
                        event_time_min=T0 + timedelta(days=i), created_at=T0))
            s.add(drift_row(sqlite_settings, f"batch-{i:04d}-{'x' * 40}", (i % 10) / 10,
                            i % 10 >= 5))
            s.add(perf_row(f"batch-{i:04d}-{'x' * 40}", 1, "champion", 0.8, 1000, i % 1000))
            s.add(RetrainRequest(problem=PROBLEM, trigger="schedule", reason="r" * 5000,
                                 state="trained", created_at=T0 + timedelta(hours=i)))
    page = write_monitoring_page(PROBLEM, sqlite_settings)
    text = page.path.read_text()
    assert page.bytes < MAX_BYTES
    assert f"{MAX_BATCHES} of {n} batches" in text
    data = strict_json(page.json_path.read_text())
    assert data["batches"][-1]["batch_id"].startswith(f"batch-{n - 1:04d}")  # the newest shown
    assert len(data["batches"]) == MAX_BATCHES
    assert max(len(d["reason"]) for d in data["decisions"]) <= 500


def test_the_page_links_back_to_the_view_and_the_airflow_run(settings, monkeypatch):
    """Served at <base>/batchloop/reports/problem=<p>/monitoring.html: two levels up is the
    view; written by a task of the problem, it also links that DAG run."""
    fill_store(settings)
    for var in [v for v in os.environ if v.startswith("AIRFLOW_CTX_")]:
        monkeypatch.delenv(var)
    text = write_monitoring_page(PROBLEM, settings).path.read_text()
    assert f"<a href='../../problems/{PROBLEM}'>← {PROBLEM} in the Batchloop view</a>" in text
    assert "Airflow run" not in text
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", f"{PROBLEM}__monitor_model")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__1")
    text = write_monitoring_page(PROBLEM, settings).path.read_text()
    assert (f"<a href='../../../dags/{PROBLEM}__monitor_model/runs/manual__1'>Airflow run "
            "manual__1</a>") in text
