"""The batches table of a problem page: source file and SHA-256, row and quarantine counts with
the breakdown by rule (a few example rows each), what trained on it, predictions, and per drift
report the drifted columns (by their spec descriptions) and the prediction's drift.

Imported only inside request handlers.
"""

from __future__ import annotations

import html
from pathlib import PurePath
from typing import Any

from batchloop_airflow.ui.page import num
from mlcore.reports.html import esc, html_table, link, report_href


def labels(spec: Any) -> dict[str, str]:
    """Column -> its human label (the spec's feature description), when it has one."""
    out = {f.name: f.description for f in getattr(spec, "features", []) if f.description}
    target = getattr(spec, "target", None)
    if target is not None and getattr(target, "description", ""):
        out[target.name] = target.description
    return out


def label(column: str, names: dict[str, str]) -> str:
    """``column`` shown by its description (the code on hover), or as the code."""
    text = names.get(column)
    if not text:
        return esc(column)
    return f'<span title="{html.escape(column)}">{esc(text)}</span>'


def _quarantine(b: dict[str, Any], rules: list[dict[str, Any]]) -> str:
    if not b["quarantined"]:
        return '<span class="num">0</span>'
    share = f' <span class="muted">({b["quarantined"] / b["rows"]:.1%})</span>' if b["rows"] else ""
    if not rules:
        return f'<span class="num">{b["quarantined"]}</span>{share}'
    parts = "".join(
        f"<li>{esc(r['rule'])}: <b>{r['rows']}</b>"
        + "".join(f'<br><span class="muted">row {e["row"]}: {esc(str(e["reason"])[:160])}'
                  "</span>" for e in r["examples"]) + "</li>" for r in rules)
    summary = ", ".join(f"{r['rule']} {r['rows']}" for r in rules)
    return (f'<details><summary><span class="num">{b["quarantined"]}</span>{share} '
            f'<span class="muted">{esc(summary)}</span></summary><ul>{parts}</ul></details>')


def _drift(reports: list[dict[str, Any]], names: dict[str, str], home: Any, rep: str) -> str:
    out = []
    for r in reports:
        cols = ", ".join(label(c, names) for c in r["drifted_columns"]) or "none"
        pred = ("—" if r["prediction_drift"] is None else
                ('<b class="bad">drifted</b>' if r["prediction_drift"] else '<span class="ok">'
                 "stable</span>")
                + f' <span class="muted">({esc(r["prediction_method"])} '
                  f'{num(r["prediction_score"], 3)})</span>')
        verdict = '<b class="bad">DRIFT</b>' if r["dataset_drift"] else '<span class="ok">ok</span>'
        out.append(f'vs v{r["model_version"]}: {verdict} share {num(r["drift_share"], 2)} · '
                   f"columns: {cols} · prediction: {pred} · "
                   + link(report_href(r["html"], home, rep), "report", True))
    return "<br>".join(out) or "—"


def render_batches(d: dict[str, Any], spec: Any, home: Any, rep: str) -> str:
    """The table (``d`` from ``ui_page.problem_data``; ``rep`` the report URL prefix)."""
    names = labels(spec)
    trained_on: dict[str, list[int]] = {}
    for m in d["models"]:
        for b in m["training_batch_ids"]:
            trained_on.setdefault(b, []).append(m["version"])
    preds: dict[str, list[str]] = {}
    for key, n in d["predictions"].items():
        batch, _, version = key.rpartition("@")
        preds.setdefault(batch, []).append(f"{version}: {n}")
    rows = [[esc(b["batch_id"]), esc(b["state"]),
             f'<span class="nowrap" title="{html.escape(str(b["source_uri"] or ""))}">'
             f'{esc(PurePath(str(b["source_uri"] or "")).name or None)}</span>'
             f'<br><code class="muted" title="{html.escape(str(b["sha256"] or ""))}">'
             f'{esc((b["sha256"] or "")[:16] or None)}</code>',
             f'<span class="num">{b["rows"]}</span>',
             _quarantine(b, d["quarantine"].get(b["batch_id"], [])),
             esc(", ".join(f"v{v}" for v in trained_on.get(b["batch_id"], []))),
             esc("; ".join(preds.get(b["batch_id"], []))),
             _drift(d["drift_by_batch"].get(b["batch_id"], []), names, home, rep),
             esc(b["reason"])]
            for b in reversed(d["batches"])]
    return html_table(["Batch", "State", "Source file / SHA-256", "Rows read",
                       "Quarantined (by rule)", "Trained", "Predictions",
                       "Drift (drifted columns, prediction)", "Reason"], rows, "No batches yet.")
