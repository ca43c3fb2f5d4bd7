"""Run card: the one self-contained HTML page (plus its JSON) a reviewer reads before a promotion.

The page shows what fits the target kind, for the contender and the champion: ``binary`` ROC and
precision-recall curves; ``multiclass`` a confusion matrix and per-class metrics; ``regression``
predicted against actual and the residual histogram. Then the primary-metric delta with its CI,
per-slice deltas against their allowed drop, and tables of every number the decision used. Plots
are inline SVG; the page needs no JavaScript and no network, so it renders offline. Deltas are
oriented so that positive means "contender is better"; a slice fails when its delta falls below
``-bound``. A card without ``target`` (written before target kinds) is binary, and its models may
carry ``roc`` instead of ``curves``.

The plot data is computed by ``mlcore.reports.runcard_data``, drawn by ``runcard_plots``; this
module arranges the page with the HTML toolkit ``mlcore.reports.html`` and writes both files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mlcore.config import Settings
from mlcore.reports.html import (
    REPORT_CSS,
    document,
    figures,
    fmt,
    jsonable,
    nav_html,
    value_table,
    write_atomic,
)
from mlcore.reports.runcard_plots import (
    ROLES,
    card_kind,
    model_data,
    model_label,
    plot_delta,
    plot_pr,
    plot_residuals,
    plot_roc,
    plot_scatter,
    plot_slices,
)
from mlcore.spec_rules import METRICS_BY_KIND

MAX_BYTES = 1_000_000
SLICE_KEYS = ("column", "value", "rows", "contender", "champion", "delta", "bound", "ok", "note")
THROUGHPUT_KEYS = ("contender", "champion", "required", "required_from", "ok", "note", "ratio",
                   "max_drop", "ok_relative", "relative_note", "max_spread")


@dataclass(frozen=True)
class RunCard:
    """Where a run card was written and how big it is (HTML + JSON bytes)."""

    html_path: Path | str  # s3 URIs from ``write_evaluation_card`` on an object-storage home
    json_path: Path | str
    bytes: int

def _figures(card: dict[str, Any]) -> list[str]:
    """The delta and slice plots as inline SVG strings."""
    n_slices = len(card.get("slices") or [])
    return figures([(plot_delta, (6.4, 1.8)),
                    (plot_slices, (6.4, max(1.8, 0.3 * n_slices + 1.0)))], card)


def _binary_section(card: dict[str, Any]) -> str:
    """ROC and precision-recall curves, both models overlaid."""
    roc, pr = figures([(plot_roc, (5.0, 4.5)), (plot_pr, (5.0, 4.5))], card)
    classes = (card.get("target") or {}).get("classes") or []
    positive = f" (positive class: {fmt(classes[1])})" if len(classes) == 2 else ""
    return (f"<h3>ROC curves</h3><figure>{roc}</figure>"
            f"<h3>Precision-recall curves{positive}</h3><figure>{pr}</figure>")


def _confusion_table(curves: dict[str, Any]) -> str:
    """Counts with actual classes as rows and predicted as columns, shaded by row share."""
    labels, matrix = curves.get("labels") or [], curves.get("confusion") or []
    if not matrix or len(labels) != len(matrix):
        return "<p>confusion matrix unavailable (non-finite outputs or unknown labels)</p>"
    head = "".join(f"<th>{fmt(name)}</th>" for name in labels)
    rows = []
    for name, counts in zip(labels, matrix, strict=True):
        total = sum(counts) or 1
        cells = "".join(f'<td style="background:rgba(31,119,180,{0.6 * c / total:.2f})">{c}</td>'
                        if c else "<td>0</td>" for c in counts)
        rows.append(f"<tr><th>{fmt(name)}</th>{cells}</tr>")
    omitted = curves.get("omitted") or 0
    note = (f"<p>The {len(labels) - 1} most frequent classes; {omitted} others are summed in "
            f"&quot;other&quot;.</p>" if omitted else "")
    return (f"{note}<table><tr><th>actual \\ predicted</th>{head}</tr>{''.join(rows)}</table>")


PER_CLASS_KEYS = ("class", "support", "precision", "recall", "f1", "roc_auc")


def _multiclass_section(card: dict[str, Any]) -> str:
    """A confusion matrix and a per-class metrics table for each model."""
    models = [(role, m) for role in ROLES if (m := card.get(role))]
    parts = [f"<h3>Confusion matrix: {fmt(model_label(role, m))}</h3>"
             f"{_confusion_table(model_data(m))}" for role, m in models]
    headers = ["class", "support", "precision", "recall", "F1", "ROC AUC (one-vs-rest)"]
    for role, m in models:
        rows = [[r.get(k) for k in PER_CLASS_KEYS] for r in model_data(m).get("per_class") or []]
        parts.append(f"<h3>Per-class metrics: {fmt(model_label(role, m))}</h3>"
                     + (value_table(headers, rows) if rows
                        else "<p>per-class metrics unavailable</p>"))
    return "".join(parts)


def _regression_section(card: dict[str, Any]) -> str:
    """Predicted against actual for each model (same axes) and the residual histograms."""
    roles = [role for role in ROLES if card.get(role) or role == "contender"]
    specs: list[tuple[Callable[[Any, Any], None], tuple[float, float]]] = [
        (partial(plot_scatter, role=role), (4.6, 4.6)) for role in roles]
    *scatters, residuals = figures(specs + [(plot_residuals, (6.4, 3.0))], card)
    return ('<h3>Predicted against actual</h3><div style="display:flex;flex-wrap:wrap">'
            + "".join(f"<figure>{s}</figure>" for s in scatters)
            + f"</div><h3>Residuals</h3><figure>{residuals}</figure>")


def _model_section(card: dict[str, Any]) -> str:
    """The plots and tables that fit the card's target kind."""
    sections = {"binary": _binary_section, "multiclass": _multiclass_section,
                "regression": _regression_section}
    kind = card_kind(card)
    if kind not in sections:
        return f"<p>no model plots for target kind {fmt(kind)}</p>"
    return sections[kind](card)


def _metric_rows(card: dict[str, Any]) -> list[list[Any]]:
    """One row per metric present: name (primary marked), which way is better, contender value,
    champion value."""

    contender = (card.get("contender") or {}).get("metrics") or {}
    champion = (card.get("champion") or {}).get("metrics") or {}
    metric = card.get("metric") or {}
    directions: dict[Any, Any] = {**METRICS_BY_KIND.get(card_kind(card), {}),
                                  metric.get("name"): metric.get("direction")}
    better = {"maximize": "higher", "minimize": "lower"}
    names = list(contender) + [n for n in champion if n not in contender]
    return [[f"{n} (primary)" if n == metric.get("name") else n,
             better.get(str(directions.get(n)), ""), contender.get(n), champion.get(n)]
            for n in names]


def _tables(card: dict[str, Any]) -> str:
    """Every number the decision used, as HTML tables."""
    metric, ci = card.get("metric") or {}, card.get("ci") or [None, None]
    hold, thru = card.get("holdout") or {}, card.get("throughput") or {}
    slices, guards = card.get("slices") or [], card.get("guardrails") or []
    kv = ["name", "value"]
    models = [[role, m.get("version"), m.get("algorithm"), m.get("rows_per_second"),
               m.get("window") or "all history"]
              for role in ("contender", "champion") if (m := card.get(role))]
    parts = [
        ("Metrics", value_table(["metric", "better", "contender", "champion"],
                          _metric_rows(card))),
        ("Decision numbers", value_table(kv, [
            ["metric", metric.get("name")], ["direction", metric.get("direction")],
            ["delta", card.get("delta")], ["CI low", ci[0]], ["CI high", ci[1]],
            ["confidence", card.get("confidence")],
            ["bootstrap samples", card.get("bootstrap_samples")]])),
        ("Thresholds", value_table(kv, [[k, v] for k, v in
                                        (card.get("thresholds") or {}).items()])),
        ("Holdout", value_table(kv, [[k, hold.get(k)] for k in (
            "batches", "rows", "hash", "method", "rule", "from", "left_out_seen")])),
        ("Throughput guardrail", value_table(kv, [[k, thru.get(k)] for k in THROUGHPUT_KEYS])),
        ("Throughput passes", value_table(
            ["model", "median rows/s", "p10", "p90", "spread", "threads", "rows", "passes"],
            [[role, t.get("rows_per_second"), t.get("p10"), t.get("p90"), t.get("spread"),
              t.get("threads"), t.get("rows"), ", ".join(f"{v:,.0f}" for v in t.get("passes")
                                                        or [])]
             for role, t in (thru.get("timings") or {}).items()])),
        ("Guardrails", value_table(["guardrail", "ok", "detail"],
                              [[g.get("name"), g.get("ok"), g.get("detail")] for g in guards],
                              ["fail" if g.get("ok") is False else "" for g in guards])),
        ("Slices", value_table(list(SLICE_KEYS), [[s.get(k) for k in SLICE_KEYS] for s in slices],
                          ["fail" if s.get("ok") is False else "" for s in slices])),
        ("Models", value_table(["role", "version", "algorithm", "rows/s", "training window"],
                         models)),
    ]
    if back := card.get("backtest"):
        parts.append(("Rolling-origin backtest (each configuration refitted on the batches "
                      "before each one; not part of the decision)", value_table(
            ["batch", "fitted rows", "rows", "contender", "champion", "delta", "note"],
            [[b.get("batch_id"), b.get("fit_rows"), b.get("rows"), b.get("contender"),
              b.get("champion"), b.get("delta"),
              "; ".join(b[k] for k in ("contender_note", "champion_note") if b.get(k))]
             for b in back])))
    return "".join(f"<h3>{title}</h3>{html_table}" for title, html_table in parts)


def _held_by(card: dict[str, Any]) -> str:
    """A better contender not promoted: the spec settings that held it, as a list."""
    held = card.get("held_by") or []
    if not held:
        return ""
    items = "".join(f"<li><code>{fmt(h.get('setting'))}</code> is {fmt(h.get('value'))}; "
                    f"{fmt(h.get('would_change'))}</li>" for h in held)
    return f'<p>Held back by:</p><ul class="held">{items}</ul>'


def _target_text(card: dict[str, Any]) -> str:
    """``target: multiclass; classes: a, b, c`` (the first 50 classes)."""
    classes = [str(c) for c in (card.get("target") or {}).get("classes") or []]
    more = f" and {len(classes) - 50} more" if len(classes) > 50 else ""
    listed = f"; classes: {', '.join(classes[:50])}{more}" if classes else ""
    return f"target: {card_kind(card)}{listed}"


def _nav(card: dict[str, Any]) -> str:
    """Back to the Batchloop view and to the Airflow run that evaluated (``card["links"]``)."""
    return nav_html(str(card.get("problem")), card.get("links")) if card.get("links") else ""


def _render_html(card: dict[str, Any]) -> str:
    """The run card as one self-contained HTML page (inline CSS and SVG, no scripts, no URLs)."""
    outcome = str(card.get("outcome") or "")
    banner = outcome.split(":")[0]
    banner = banner if banner in {"promote", "keep", "reject"} else "other"
    delta, slices = _figures(card)
    title = f"Run card: {card.get('problem')}, evaluation {card.get('evaluation_id')}"
    body = (f"{_nav(card)}"
            f"<h1>{fmt(title)}</h1><p>created {fmt(card.get('created_at'))}; "
            f"{fmt(_target_text(card))}</p>"
            f'<div class="outcome {banner}"><h2>{fmt(outcome)} (promote: '
            f"{fmt(card.get('promote'))})</h2><p>{fmt(card.get('reason'))}</p>"
            f"{_held_by(card)}</div>"
            f"{_model_section(card)}"
            f"<h3>Primary-metric delta</h3><figure>{delta}</figure>"
            f"<h3>Per-slice delta</h3><figure>{slices}</figure>{_tables(card)}")
    return document(title, body, REPORT_CSS)


def write_run_card(card: dict[str, Any], out_dir: Path) -> RunCard:
    """Write ``run_card.json`` and ``run_card.html`` into ``out_dir``, each atomically.

    Args:
        card: The evaluation step's card (values may be None or NaN where the schema allows).
        out_dir: Directory to write into (created if missing).

    Returns:
        The two paths and their combined size in bytes.

    Raises:
        ValueError: The two files together would exceed 1,000,000 bytes (nothing is written).
    """
    json_bytes = json.dumps(jsonable(card), indent=2, allow_nan=False, default=str).encode()
    html_bytes = _render_html(card).encode()
    size = len(json_bytes) + len(html_bytes)
    if size > MAX_BYTES:
        raise ValueError(f"run card is {size} bytes, over the {MAX_BYTES} byte limit")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "run_card.json", out_dir / "run_card.html"
    write_atomic(json_path, json_bytes)
    write_atomic(html_path, html_bytes)
    return RunCard(html_path=html_path, json_path=json_path, bytes=size)


def write_evaluation_card(card: dict[str, Any], settings: Settings, problem: str,
                          evaluation_id: int) -> RunCard:
    """``write_run_card`` into ``<home>/reports/problem=<p>/evaluation=<id>/``: on a folder home
    exactly that; on an object-storage home written to a process folder, then one PUT each to
    the final keys (never half-visible), the staging removed, and the URIs returned.

    Raises:
        ValueError: as ``write_run_card`` (nothing is written).
    """
    if settings.home_is_local:
        return write_run_card(card, settings.partition("reports", problem)
                              / f"evaluation={evaluation_id}")
    import shutil

    from mlcore.data.objects import process_tmp
    from mlcore.model.artifacts_store import upload

    staged = process_tmp("report")
    try:
        local = write_run_card(card, staged)
        uris = [upload(settings.store_home(), Path(p), "reports", f"problem={problem}",
                       f"evaluation={evaluation_id}", Path(p).name)
                for p in (local.html_path, local.json_path)]
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return RunCard(html_path=uris[0], json_path=uris[1], bytes=local.bytes)
