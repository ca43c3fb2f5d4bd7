"""Monitoring page: one static HTML page (plus its JSON) per problem, rewritten after each run.

``<home>/reports/problem=<p>/monitoring.html`` shows, over the problem's batches in event-time
order, six inline SVG plots: one performance timeline (the champion's metric estimated from its
own scores before labels arrive, with its interval, beside the realized metric, with dataset
drift, retrains and promotions marked), the primary metric on matured labels (champion,
challenger, and each evaluation's holdout figures), drift share against the dataset-drift
threshold, rows read with the quarantine rate, label coverage, and a timeline of decisions
(evaluation outcomes, retrain requests by trigger, alias moves and rollbacks). Below them: a
per-batch table and the decision log, with links to run cards and drift reports.
``monitoring.json`` next to it holds the same data.

Everything comes from the metadata store; like the run card the page has no scripts and loads
nothing, every text is escaped, and both files are written atomically. Only the newest
``MAX_BATCHES`` batches and ``MAX_DECISIONS`` decisions are shown, so the page stays well under
``MAX_BYTES``. The data is gathered by ``mlcore.reports.monitoring_data`` and drawn by
``monitoring_plots``; this module arranges the page with ``mlcore.reports.html`` and writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcore.config import Settings
from mlcore.reports.html import (
    REPORT_CSS,
    Html,
    as_text,
    document,
    finite,
    fmt,
    link,
    nav_html,
    value_table,
    write_atomic,
)
from mlcore.reports.monitoring_data import collect
from mlcore.reports.monitoring_plots import page_figures

MAX_BYTES = 2_000_000
PAGE_CSS = REPORT_CSS + (
    "body{max-width:1200px}td,th{font-size:90%}.empty{padding:1em;background:#f3f3f3;\n"
    "border-radius:6px}.notes{color:#555;font-size:90%}")


@dataclass(frozen=True)
class MonitoringPage:
    """Where the monitoring page was written and its size (``bytes``: the HTML page alone)."""

    path: Path | str  # an s3 URI on an object-storage home
    json_path: Path | str
    bytes: int


def _link(href: str | None, label: str) -> Html | None:
    return None if href is None else Html(link(href, label))


def _links(*pairs: tuple[str | None, str]) -> Html | None:
    parts = [a for href, label in pairs if (a := _link(href, label)) is not None]
    return Html(" ".join(parts)) if parts else None


def _pct(value: Any) -> str | None:
    return None if (v := finite(value)) is None else f"{100 * v:.1f}%"


def _model_value(report: dict[str, Any] | None) -> str | None:
    if report is None:
        return None
    value = "too few matured labels" if report["value"] is None else as_text(report["value"])
    return f"{value} (v{report['model_version']})"


def _day(iso: str | None) -> str:
    return (iso or "")[:10]


def _batch_table(data: dict[str, Any]) -> str:
    metric = data["metric"]["name"]
    headers = ["batch", "state", "event time", "rows read", "quarantined", "quarantine rate",
               "drift share", "dataset drift", "drifted columns", "prediction drift",
               "drift report", f"champion {metric}", f"challenger {metric}", "predicted",
               "matured", "labelled", "label coverage"]
    rows, classes = [], []
    for b in data["batches"]:
        drift, perf = b["drift"] or {}, b["performance"]
        counts = perf["champion"] or perf["challenger"] or {}
        span = f"{_day(b['event_time_min'])} \u2013 {_day(b['event_time_max'])}"
        rows.append([b["batch_id"], b["state"], span if b["event_time_min"] else None, b["rows"],
                     b["quarantined"], _pct(b["quarantine_rate"]), drift.get("drift_share"),
                     drift.get("dataset_drift"), drift.get("drifted_columns"),
                     drift.get("prediction_drift"),
                     _link(drift.get("report_href"), f"v{drift.get('model_version')}"),
                     _model_value(perf["champion"]), _model_value(perf["challenger"]),
                     counts.get("predicted_rows"), counts.get("matured_rows"),
                     counts.get("labelled_rows"), _pct(b["label_coverage"])])
        classes.append("fail" if drift.get("dataset_drift") else "")
    return value_table(headers, rows, classes)


def _versions(d: dict[str, Any]) -> str | None:
    if d["source"] == "evaluation":
        champion = d["champion_version"]
        return f"v{d['contender_version']} vs " + (f"v{champion}" if champion else "no champion")
    if d["source"] == "alias":
        return f"v{d['from_version']} \u2192 v{d['to_version']}" if d["from_version"] \
            else f"\u2192 v{d['to_version']}"
    return f"trained v{d['resolved_by_version']}" if d["resolved_by_version"] else None


def _decision_table(data: dict[str, Any]) -> str:
    headers = ["time (UTC)", "event", "decision", "versions", "batches", "delta [CI]", "reason",
               "links"]
    events = {"evaluation": "evaluation", "retrain_request": "retrain request",
              "alias": "alias move"}
    rows, classes = [], []
    for d in reversed(data["decisions"]):  # newest first
        batches = d.get("holdout_batch_ids") or d.get("batch_id")
        ci = (f"{as_text(d['delta'])} [{as_text(d['ci_low'])}, {as_text(d['ci_high'])}]"
              if d["source"] == "evaluation" and d["delta"] is not None else None)
        links = _links((d.get("run_card_href"), "run card"),
                       (d.get("drift_report_href"), "drift report"))
        rows.append([(d["time"] or "")[:19].replace("T", " "), f"{events[d['source']]} {d['id']}",
                     d["what"], _versions(d), batches, ci, d["reason"], links])
        classes.append("fail" if d["kind"] in ("reject", "rollback")
                       or d.get("state") == "failed" else "")
    return value_table(headers, rows, classes)


def _render_html(data: dict[str, Any]) -> str:
    """The page: header, six plots, two tables (or a note when there is nothing yet)."""
    problem, totals = data["problem"], data["totals"]
    metric = data["metric"]
    champion = data["champion_version"]
    head = (f"{nav_html(problem, data.get('links'))}"
            f"<h1>Monitoring: {fmt(problem)}</h1><p>generated {fmt(data['generated_at'])}; "
            f"primary metric {fmt(metric['name'])} ({fmt(metric['direction'])}); "
            f"dataset-drift threshold {fmt(data['drift_threshold'])}; current champion "
            f"{fmt(f'v{champion}' if champion is not None else 'none')}; data: "
            f'<a href="monitoring.json">monitoring.json</a></p>')
    if not totals["batches"] and not totals["decisions"]:
        return document(f"Monitoring: {problem}", head + (
            f'<p class="empty">No monitoring data yet for {fmt(problem)}: the metadata store has '
            "no batches, drift or performance reports, evaluations, retrain requests or alias "
            "moves for it.</p>"), PAGE_CSS)
    shown_b, shown_d = len(data["batches"]), len(data["decisions"])
    plots = page_figures(data)
    titles = [f"Performance timeline: {metric['name']} estimated before labels (CBPE/DLE, "
              "with its interval) and realized, dataset drift, retrains and promotions",
              f"Primary metric ({metric['name']}) over batches", "Drift share per batch",
              "Rows and quarantine rate per batch", "Label coverage per batch",
              "Decisions over time"]
    figs = "".join(f"<h3>{fmt(t)}</h3><figure>{p}</figure>"
                   for t, p in zip(titles, plots, strict=True))
    return document(f"Monitoring: {problem}", head + (
        f"<p>{shown_b} of {totals['batches']} batches and {shown_d} of "
        f"{totals['decisions']} decisions shown (the newest).</p>"
        f'<p class="notes">{fmt(data["notes"])}</p>{figs}'
        f"<h3>Batches</h3>{_batch_table(data)}"
        f"<h3>Decision log (newest first)</h3>{_decision_table(data)}"), PAGE_CSS)


def write_monitoring_page(problem: str, settings: Settings) -> MonitoringPage:
    """Write ``monitoring.json`` and ``monitoring.html`` under the problem's reports folder.

    Args:
        problem: The problem's name (its spec gives the metric and the drift threshold).
        settings: Where the metadata store and the reports folder are.

    Returns:
        The page's path, its JSON's path and the page's size in bytes.

    Raises:
        ValueError: invalid problem name, or the page would exceed ``MAX_BYTES`` (nothing is
            written).
        ProblemNotFound: no spec of that name.
    """
    data = collect(problem, settings)
    json_bytes = json.dumps(data, indent=1, allow_nan=False).encode()
    html_bytes = _render_html(data).encode()
    if len(html_bytes) > MAX_BYTES:
        raise ValueError(f"monitoring page is {len(html_bytes)} bytes, over the {MAX_BYTES} "
                         "byte limit")
    if not settings.home_is_local:
        return _put_page(problem, settings, json_bytes, html_bytes)
    out = settings.partition("reports", problem)
    out.mkdir(parents=True, exist_ok=True)
    json_path, path = out / "monitoring.json", out / "monitoring.html"
    write_atomic(json_path, json_bytes)
    write_atomic(path, html_bytes)
    return MonitoringPage(path=path, json_path=json_path, bytes=len(html_bytes))


def _put_page(problem: str, settings: Settings, json_bytes: bytes,
              html_bytes: bytes) -> MonitoringPage:
    """``write_monitoring_page`` on an S3 home: staged in a process folder, then one PUT each to
    ``reports/problem=<p>/monitoring.{json,html}``; the staging removed."""
    import shutil

    from mlcore.data.objects import process_tmp
    from mlcore.model.artifacts_store import upload

    staged = process_tmp("report")
    try:
        uris = []
        for name, data in (("monitoring.json", json_bytes), ("monitoring.html", html_bytes)):
            (staged / name).write_bytes(data)
            uris.append(upload(settings.store_home(), staged / name, "reports",
                               f"problem={problem}", name))
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return MonitoringPage(path=uris[1], json_path=uris[0], bytes=len(html_bytes))
