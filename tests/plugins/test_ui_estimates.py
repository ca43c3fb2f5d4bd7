"""The Batchloop view's problem index and champion card show the champion's newest metric
estimated before labels (``mlcore.estimation.latest_estimate``); rendered without a live
Airflow."""

from __future__ import annotations

from registry_stub import register_stub

from mlcore.estimation import Estimate, record_estimate
from mlcore.model.registry import move_alias
from mlcore.problems import get_problem


def _register(settings) -> int:
    return register_stub(get_problem("census_employment", settings.problems_dir), settings,
                         batches=("b0",))


def test_the_index_shows_the_champions_newest_estimate(sqlite_settings):
    from batchloop_airflow.ui.page import index_data, render_index

    url = sqlite_settings.db_url
    rows = {r["problem"]: r for r in index_data(sqlite_settings)}
    assert rows["census_employment"]["estimate"] is None  # no champion yet
    assert render_index(list(rows.values())).count("<td>—</td>") >= 3

    version = _register(sqlite_settings)
    move_alias("census_employment", expected=None, new=version, reason="t", url=url)
    assert "not estimated yet" in render_index(index_data(sqlite_settings))
    for batch, value in (("b1", 0.81), ("b2", 0.79)):
        record_estimate(Estimate("census_employment", batch, version, "champion", "roc_auc",
                                 value, value - 0.01, value + 0.01, 1000, "cbpe"), url)
    record_estimate(Estimate("census_employment", "b3", version, "champion", "roc_auc", None,
                             None, None, 1000, "none", "not estimated: test"), url)
    rows = {r["problem"]: r for r in index_data(sqlite_settings)}
    assert rows["census_employment"]["estimate"]["estimate"] == 0.79  # newest with a value
    page = render_index(list(rows.values()))
    assert "Champion&#x27;s estimated metric" in page or "Champion's estimated metric" in page
    assert ('roc_auc <span class="num">0.7900</span> <span class="nowrap muted">[0.7800, '
            "0.8000]</span> on b2") in page


def test_the_champion_card_shows_its_newest_estimate(sqlite_settings, monkeypatch):
    from pathlib import Path

    import batchloop_airflow.ui.cockpit as cockpit
    from batchloop_airflow.ui.page import problem_data, render_problem

    monkeypatch.setattr(cockpit, "attention_data", lambda spec, settings: {})
    monkeypatch.setattr(cockpit, "render_attention", lambda *args: "")
    url = sqlite_settings.db_url
    spec = get_problem("census_employment", sqlite_settings.problems_dir)
    version = _register(sqlite_settings)
    move_alias(spec.name, expected=None, new=version, reason="t", url=url)
    record_estimate(Estimate(spec.name, "b1", version, "champion", "roc_auc", 0.81, 0.8, 0.82,
                             1000, "cbpe"), url)
    data = problem_data(spec, sqlite_settings)
    assert data["estimates"] == {version: {"batch_id": "b1", "metric": "roc_auc",
                                           "estimate": 0.81, "ci_low": 0.8, "ci_high": 0.82,
                                           "rows": 1000}}
    page = render_problem(data, Path(sqlite_settings.home), spec,
                          {"csrf": "t", "can": {"rerun": False, "models": False}})
    assert 'estimated before labels: roc_auc <span class="num">0.8100</span>' in page
