"""Drift reports people open: the JSON report carries the plot data (shared bins, category
counts), the labels, the history of earlier batches and the links; the HTML page is a pure
function of it, with one plot per feature, the spec's descriptions, readable numbers, no machine
path and nothing loaded from outside. Real drift runs in the shared ``loop`` home (``drep_*``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urljoin

import numpy as np
import pandas as pd
import pytest

from mlcore.ingestion import ingest_batch
from mlcore.model.drift import PREDICTION
from mlcore.monitoring import detect_drift
from mlcore.reports.drift_charts import num, pct, signed
from mlcore.reports.drift_data import BINS, TOP_CATEGORIES, categorical_plot, numeric_plot
from mlcore.reports.drift_report import render_report
from mlcore.reports.html import links

DATA = Path(__file__).resolve().parents[3] / "data" / "census_ma_employment"
BATCHES = ("drep_same", "drep_older", "drep_married")


def real_2015(start: int) -> pd.DataFrame:
    """1,500 further real 2015 rows (ids unseen by the loop and the other drift tests)."""
    rows = pd.read_parquet(DATA / "employment_2015.parquet").iloc[start:start + 1500]
    return rows.drop(columns=["employed"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(spec, loop, tmp_path_factory):
    """Three batches checked in order: like the reference, ten years older, and then also
    "never married" recoded as "married" (so the last has two earlier batches in its history)."""
    folder = tmp_path_factory.mktemp("drift_report")
    older = lambda f: f.assign(AGEP=(f["AGEP"] + 10).clip(upper=120))  # noqa: E731
    frames = {"drep_same": real_2015(7500), "drep_older": older(real_2015(9000)),
              "drep_married": older(real_2015(10500)).pipe(
                  lambda f: f.assign(MAR=f["MAR"].astype("int64").replace({5: 1})))}
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        # outside Airflow: an in-process dag.test() of an earlier test leaves AIRFLOW_CTX_* set
        for var in [v for v in os.environ if v.startswith("AIRFLOW_CTX_")]:
            mp.delenv(var)
        for batch_id, frame in frames.items():
            path = folder / f"{batch_id}.parquet"
            frame.to_parquet(path, index=False)
            ingest_batch(spec, str(path), batch_id, loop.settings)
            results[batch_id] = detect_drift(spec, batch_id, loop.settings)
    saved = {b: json.loads(Path(r.json_uri).read_text()) for b, r in results.items()}
    pages = {b: Path(r.html_uri).read_text() for b, r in results.items()}
    return SimpleNamespace(settings=loop.settings, results=results, json=saved, html=pages)


def visible_text(page: str) -> str:
    """The page's text: tags (and their attributes: raw data-v sort keys) removed."""
    page = re.sub(r"<(script|style)>.*?</\1>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


@pytest.mark.parametrize("batch_id", BATCHES)
def test_the_json_report_carries_bounded_plot_data_for_every_column(spec, runs, batch_id):
    saved = runs.json[batch_id]
    assert saved["format"] == "batchloop.drift/2"
    assert saved["details"] == runs.results[batch_id].details  # the stored verdict, unchanged
    rows = saved["details"]["rows"]
    plots = saved["plots"]
    assert list(plots) == [*spec.feature_names, PREDICTION]
    for column, plot in plots.items():
        assert plot["kind"] == spec.column_kinds.get(column, "numeric"), column
        for side in ("reference", "current"):
            assert sum(plot[side]) + plot.get("missing", [0, 0])[side == "current"] == rows[side]
        if plot["kind"] == "numeric":  # both sides on the same bins
            assert len(plot["edges"]) == len(plot["reference"]) + 1 == len(plot["current"]) + 1
            assert 1 <= len(plot["reference"]) <= BINS + 1
            assert plot["edges"] == sorted(plot["edges"])
        else:
            assert len(plot["categories"]) == len(plot["reference"]) == len(plot["current"])
            assert len(plot["categories"]) <= TOP_CATEGORIES + 1
    assert saved["labels"]["AGEP"] == "age in years (AGEP)"
    assert saved["labels"]["MAR"] == "marital status (MAR)"
    assert plots["MAR"]["categories"] == ["1", "2", "3", "4", "5"]  # the spec's order


def test_the_plots_show_what_moved(runs):
    """Ten years older: the current side's age histogram sits to the right of the reference's
    on the same bins; "never married" recoded: category 5 is gone from the current side."""
    def mean(plot, side):
        mids = np.convolve(plot["edges"], [0.5, 0.5], "valid")
        return float(np.average(mids, weights=plot[side]))

    same, older = runs.json["drep_same"]["plots"]["AGEP"], runs.json["drep_older"]["plots"]["AGEP"]
    assert abs(mean(same, "current") - mean(same, "reference")) < 3
    assert mean(older, "current") - mean(older, "reference") == pytest.approx(10, abs=2)
    mar = runs.json["drep_married"]["plots"]["MAR"]
    assert mar["current"][mar["categories"].index("5")] == 0 < mar["reference"][4]


@pytest.mark.parametrize("batch_id", BATCHES)
def test_the_page_is_a_pure_function_of_the_json(runs, batch_id):
    assert render_report(runs.json[batch_id]) == runs.html[batch_id]


@pytest.mark.parametrize("batch_id", BATCHES)
def test_the_page_has_one_plot_per_feature_with_the_specs_descriptions(spec, runs, batch_id):
    page = runs.html[batch_id]
    cards = re.findall(r"<section class='card (\w[\w-]*)' id='col-([^']+)'>", page)
    assert sorted(c for _, c in cards) == sorted([*spec.feature_names, PREDICTION])
    assert page.count("<svg viewBox=\"0 0 560") == len(cards)  # one distribution chart each
    for f in spec.features:
        assert f"{f.description} ({f.name})" in page
    drifted = {c for cls, c in cards if cls == "drift"}
    assert drifted == {*runs.results[batch_id].drifted_columns} | (
        {PREDICTION} if runs.results[batch_id].prediction_drift else set())
    # hover titles on the bars: both shares and the row counts
    assert re.search(r"<title>age in years \(AGEP\): [^<]*reference [\d.]+% \([\d,]+ rows\)"
                     r"[^<]*current [\d.]+% \([\d,]+ rows\)", page)


@pytest.mark.parametrize("batch_id", BATCHES)
def test_the_page_shows_no_machine_path_and_loads_nothing_from_outside(runs, batch_id):
    page = runs.html[batch_id]
    assert str(runs.settings.home) not in page
    assert str(runs.settings.home.parent) not in page
    assert not re.search(r"(?:href|src)=['\"]?/", page)  # no absolute link
    assert "<script src" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"https?://|//[a-z]|@import|url\(", page, flags=re.I)
    assert page.count("<script>") == 1  # the small inline sort/enlarge script, nothing else


@pytest.mark.parametrize("batch_id", BATCHES)
def test_numbers_are_rounded_to_what_matters(runs, batch_id):
    text = visible_text(runs.html[batch_id])
    assert not re.search(r"\d[eE][-+]?\d", text)  # no exponents
    assert not re.search(r"\d\.\d{6,}", text)  # no long tails of digits
    agep = runs.json[batch_id]["details"]["columns"]["AGEP"]
    assert f"mean {num(agep['reference_mean'])} → {num(agep['current_mean'])}" in text


def test_number_formats():
    assert num(-8.29051e-05) == "−0.00008"
    assert (num(0.0353219), num(0.1), num(41.3777), num(1234.6), num(50000)) == (
        "0.0353", "0.1", "41.4", "1,235", "50,000")
    assert (num(0), num(None), num(float("nan"))) == ("0", "—", "—")
    assert (signed(0.5), signed(-2.0), signed(1e-9), signed(14.2, unit=" pp")) == (
        "+0.5", "−2", "±0", "+14.2 pp")
    assert (pct(0.125), pct(1.0), pct(0.00886)) == ("12.5%", "100%", "0.886%")


def test_the_history_lists_the_earlier_batches(spec, runs):
    last = runs.json["drep_married"]
    history = [h["batch_id"] for h in last["history"]]
    assert history[-2:] == ["drep_same", "drep_older"] and "drep_married" not in history
    assert len(history) <= 10
    older = last["history"][-1]
    result = runs.results["drep_older"]
    assert older["drift"] == [*result.drifted_columns, *[PREDICTION] * result.prediction_drift]
    assert "AGEP" in older["drift"]
    assert older["scores"]["AGEP"] == runs.results["drep_older"].details["columns"]["AGEP"][
        "score"]
    assert set(older["scores"]) == {*spec.feature_names, PREDICTION}
    assert [h["batch_id"] for h in runs.json["drep_same"]["history"]] == [
        b for b in history if b not in ("drep_same", "drep_older")]
    page = runs.html["drep_married"]
    table = page.split("<table id=history>", 1)[1].split("</table>", 1)[0]
    assert [re.sub(r"<[^>]+>", "", b) for b in re.findall(r"<tr><td>(.*?)</td>", table)][-3:] == [
        "drep_same", "drep_older", "drep_married (this batch)"]
    [link] = re.findall(r"<a href='([^']+)'>drep_older</a>", table)  # its own report
    assert (Path(runs.results["drep_married"].html_uri).parent / link).resolve() == Path(
        runs.results["drep_older"].html_uri).resolve()
    # a sparkline per feature: one point per batch, the newest last
    row = page.split("<a href='#col-AGEP'>", 1)[1].split("</tr>", 1)[0]
    assert row.count("<circle") == len(history) + 1
    assert re.findall(r"<title>batch ([^:]+):", row)[-2:] == ["drep_older", "drep_married"]


def test_links_lead_back_to_the_view_and_the_airflow_run(spec, runs, monkeypatch):
    from batchloop_airflow.ui.app import URL_PREFIX

    page = runs.html["drep_same"]
    served = f"{URL_PREFIX}/reports/problem={spec.name}/batch=drep_same/drift_v1.html"
    [view] = re.findall(r"<a href='([^']+)'>← ", page)
    assert urljoin(served, view) == f"{URL_PREFIX}/problems/{spec.name}"
    assert "Airflow run" not in page  # written outside Airflow: no run to link
    env = {"AIRFLOW_CTX_DAG_ID": f"{spec.name}__monitor_model",
           "AIRFLOW_CTX_DAG_RUN_ID": "asset_triggered__2026-01-01T00:00:00+00:00"}
    run = links(spec.name, env)["airflow_run"]
    assert urljoin(served, run) == (f"/dags/{spec.name}__monitor_model/runs/"
                                    "asset_triggered__2026-01-01T00%3A00%3A00%2B00%3A00")
    assert links("other_problem", env)["airflow_run"] is None
    page = render_report({**runs.json["drep_same"], "links": links(spec.name, env)})
    assert "Airflow run asset_triggered__2026-01-01T00:00:00+00:00</a>" in page


def test_an_old_absolute_profile_path_shows_as_its_name(runs):
    saved = runs.json["drep_same"]
    details = {**saved["details"], "reference": {
        **saved["details"]["reference"], "uri": "/srv/old-home/models/v1/reference.parquet"}}
    page = render_report({**saved, "details": details})
    assert "/srv/old-home" not in page and "(reference.parquet, sha256" in page


def test_plot_data_of_small_frames():
    plot = numeric_plot(pd.Series([0.0, 1.0, 2.0, np.nan]), pd.Series([1.0, 3.0, np.inf]))
    assert plot["missing"] == [1, 1] and plot["integral"] is True
    assert plot["edges"] == [0, 1, 2, 3, 4] and plot["reference"] == [1, 1, 1, 0]
    assert plot["current"] == [0, 1, 0, 1]
    wide = numeric_plot(pd.Series(np.linspace(0, 1, 1000)), pd.Series(np.linspace(0.5, 1.5, 10)))
    assert len(wide["edges"]) - 1 <= BINS + 1 and sum(wide["current"]) == 10
    cats = categorical_plot(pd.Series(["b", "a", None, "a"] + [f"x{i}" for i in range(40)]),
                            pd.Series(["a", "c"]), order=["a", "b", "c"])
    assert cats["categories"][:3] == ["a", "b", "c"] and cats["other"] == 44 - TOP_CATEGORIES
    assert cats["categories"][-2:] == ["missing", f"other ({cats['other']} values)"]
    assert sum(cats["reference"]) == 44 and sum(cats["current"]) == 2
