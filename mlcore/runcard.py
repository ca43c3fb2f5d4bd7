"""Run card: the one self-contained HTML page (plus its JSON) a reviewer reads before a promotion.

The page has three inline SVG plots (ROC curves, the primary-metric delta with its CI, per-slice
deltas against their allowed drop) and tables of every number the decision used. It needs no
JavaScript and no network, so it renders offline. Deltas are oriented so that positive means
"contender is better"; a slice fails when its delta falls below ``-bound``.

The page helpers (text and escaping, tables, SVG figures, atomic writes, CSS) are shared with
``mlcore.monitoring_page``.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_BYTES = 1_000_000
SLICE_KEYS = ("column", "value", "rows", "contender", "champion", "delta", "bound", "ok", "note")
THROUGHPUT_KEYS = ("contender", "champion", "ratio", "max_drop", "ok")
COLORS = {"contender": "#1f77b4", "champion": "#7f7f7f", "ok": "#4c72b0", "fail": "#c44e52",
          "skip": "#bbbbbb"}
CSS = """body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}
.outcome{padding:1em;border-radius:6px;margin:1em 0}.outcome h2{margin:0 0 .4em 0}
.promote{background:#e3f4e3;border:2px solid #2e7d32}.keep{background:#fff6dc;border:2px solid
#b08900}.reject,.other{background:#fde4e4;border:2px solid #c62828}
table{border-collapse:collapse;margin:.5em 0 1.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}tr.fail td{background:#fde4e4}figure{margin:1em 0}"""


@dataclass(frozen=True)
class RunCard:
    """Where a run card was written and how big it is (HTML + JSON bytes)."""

    html_path: Path
    json_path: Path
    bytes: int


def roc_points(y: np.ndarray, p: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve of scores ``p`` against labels ``y``, downsampled for plotting.

    Args:
        y: Binary labels.
        p: Scores (higher means more likely positive).
        max_points: Most points returned (at least 2); the ends (0,0) and (1,1) are always kept.

    Returns:
        ``{"fpr": [...], "tpr": [...]}`` rounded to 5 decimals; both empty if ``p`` has a
        non-finite value or ``y`` has a single class.
    """
    from sklearn.metrics import roc_curve

    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    if p.size == 0 or not np.all(np.isfinite(p)) or np.unique(y).size < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, p)
    keep = np.unique(np.linspace(0, fpr.size - 1, min(max_points, fpr.size)).round().astype(int))
    return {"fpr": [round(float(v), 5) for v in fpr[keep]],
            "tpr": [round(float(v), 5) for v in tpr[keep]]}


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def num(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, NaN, inf, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    return float(value) if math.isfinite(value) else None


def as_text(value: Any) -> str:
    """One value as plain text: NaN as "NaN", None as a dash, floats to 6 significant digits."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        x = float(value)
        return "NaN" if math.isnan(x) else f"{x:,.0f}" if abs(x) >= 1e6 else f"{x:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(as_text(v) for v in value)
    return str(value)


class Html(str):
    """Text that is already safe HTML (built from escaped parts): ``fmt`` passes it through."""


def fmt(value: Any) -> str:
    """One value as escaped HTML text (see ``as_text``); an ``Html`` value as it is."""
    return value if isinstance(value, Html) else html.escape(as_text(value))


def table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    """An HTML table; ``classes`` (one per row) marks rows such as failing slices."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join((f'<tr class="{c}">' if c else "<tr>")
                   + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
                   for row, c in zip(rows, classes or [""] * len(rows), strict=True))
    return f"<table><tr>{head}</tr>{body}</table>"


def tex_safe(text: Any) -> str:
    """Text for a matplotlib label: ``$`` escaped so data never triggers mathtext."""
    return str(text).replace("$", r"\$")


def svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (no prolog, no metadata: reproducible bytes)."""
    buf = io.StringIO()
    no_metadata = dict.fromkeys(("Creator", "Date", "Format", "Type"))  # no RDF block, no URLs
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata=no_metadata)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def message(ax: Any, text: str) -> None:
    """Replace a plot by a centred message (missing champion, degenerate data)."""
    ax.text(0.5, 0.5, tex_safe(text), ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    ax.figure.set_size_inches(6.4, 0.5)


def _plot_roc(ax: Any, card: dict[str, Any]) -> None:
    """ROC curves of the contender and (when present) the champion, with the chance diagonal."""
    drawn = 0
    for role in ("contender", "champion"):
        model = card.get(role) or {}
        roc = model.get("roc") or {}
        if roc.get("fpr"):
            auc = as_text((model.get("metrics") or {}).get("roc_auc"))
            ax.plot(roc["fpr"], roc["tpr"], color=COLORS[role], label=tex_safe(
                f"{role} v{model.get('version')} ({model.get('algorithm')}), AUC {auc}"))
            drawn += 1
    if not drawn:
        return message(ax, "ROC curve unavailable (single class or non-finite scores)")
    ax.plot([0, 1], [0, 1], color="#cccccc", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           aspect="equal")
    ax.legend(loc="lower right", fontsize="small")


def _plot_delta(ax: Any, card: dict[str, Any]) -> None:
    """Primary-metric delta with its CI and the decision's reference lines."""
    delta, ci = num(card.get("delta")), card.get("ci") or [None, None]
    if card.get("champion") is None:
        return message(ax, "no champion: judged by the absolute floor alone")
    if delta is None:
        return message(ax, "metric delta unavailable (NaN)")
    low, high = num(ci[0]), num(ci[1])
    if low is not None and high is not None:  # a segment, not error bars: CI need not hold delta
        ax.plot([low, high], [0, 0], marker="|", markersize=16, color=COLORS["contender"],
                label=f"{as_text(card.get('confidence'))} CI [{low:.4g}, {high:.4g}]")
    ax.plot([delta], [0], "o", color=COLORS["contender"], label=f"delta {delta:+.4g}")
    thresholds = card.get("thresholds") or {}
    ax.axvline(0, color="black", linewidth=1)
    lines = [("min_improvement", 1.0, "#2e7d32", "--"),
             ("non_inferiority_margin", -1.0, "#c62828", ":")]
    for key, sign, color, style in lines:
        if (value := num(thresholds.get(key))) is not None:
            ax.axvline(sign * value, color=color, linestyle=style,
                       label=f"{'+' if sign > 0 else '-'}{key} ({value:g})")
    metric = (card.get("metric") or {}).get("name", "metric")
    ax.set(yticks=[], xlabel=tex_safe(f"{metric} delta (positive = contender better)"))
    ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))


def _plot_slices(ax: Any, card: dict[str, Any]) -> None:
    """Per-slice delta bars, the allowed drop (-bound) as a tick, failing slices in red."""
    slices = card.get("slices") or []
    if not slices:
        return message(ax, "no slices configured")
    if card.get("champion") is None:
        return message(ax, "no champion: no slice deltas")
    pos = np.arange(len(slices))
    status = ["skip" if s.get("ok") is None else "ok" if s.get("ok") else "fail" for s in slices]
    ax.barh(pos, [num(s.get("delta")) or 0.0 for s in slices],
            color=[COLORS[k] for k in status])
    bounds = [(i, -b) for i, s in enumerate(slices) if (b := num(s.get("bound"))) is not None]
    if bounds:
        ax.plot([b for _, b in bounds], [i for i, _ in bounds], linestyle="none", marker="|",
                markersize=14, color="black", label="allowed drop (-bound)")
        ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))
    ax.axvline(0, color="black", linewidth=1)
    labels = [tex_safe(f"{s.get('column')}={s.get('value')}" + (" (skipped)" * (k == "skip")))
              for s, k in zip(slices, status, strict=True)]
    ax.set_yticks(pos, labels=labels, fontsize="small")
    for tick, k in zip(ax.get_yticklabels(), status, strict=True):
        tick.set_color(COLORS["fail"] if k == "fail" else "black")
    ax.invert_yaxis()
    ax.set_xlabel("slice metric delta (positive = contender better)")


def figures(specs: Sequence[tuple[Callable[[Any, Any], None], tuple[float, float]]],
            data: Any) -> list[str]:
    """Each ``(plot, size)``: ``plot(ax, data)`` on a new figure of ``size`` inches, as inline
    SVG with text kept as text and stable IDs (matplotlib imported only here)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure registry to leak into

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "batchloop"}):
        out = []
        for plot, size in specs:
            fig = Figure(figsize=size)
            plot(fig.subplots(), data)
            out.append(svg(fig))
    return out


def _figures(card: dict[str, Any]) -> list[str]:
    """The three plots as inline SVG strings."""
    n_slices = len(card.get("slices") or [])
    return figures([(_plot_roc, (5.0, 4.5)), (_plot_delta, (6.4, 1.8)),
                    (_plot_slices, (6.4, max(1.8, 0.3 * n_slices + 1.0)))], card)


def _metric_rows(card: dict[str, Any]) -> list[list[Any]]:
    """One row per metric: name (primary marked), contender value, champion value."""
    contender = (card.get("contender") or {}).get("metrics") or {}
    champion = (card.get("champion") or {}).get("metrics") or {}
    primary = (card.get("metric") or {}).get("name")
    names = list(contender) + [n for n in champion if n not in contender]
    return [[f"{n} (primary)" if n == primary else n, contender.get(n), champion.get(n)]
            for n in names]


def _tables(card: dict[str, Any]) -> str:
    """Every number the decision used, as HTML tables."""
    metric, ci = card.get("metric") or {}, card.get("ci") or [None, None]
    hold, thru = card.get("holdout") or {}, card.get("throughput") or {}
    slices, guards = card.get("slices") or [], card.get("guardrails") or []
    kv = ["name", "value"]
    models = [[role, m.get("version"), m.get("algorithm"), m.get("rows_per_second")]
              for role in ("contender", "champion") if (m := card.get(role))]
    parts = [
        ("Metrics", table(["metric", "contender", "champion"], _metric_rows(card))),
        ("Decision numbers", table(kv, [
            ["metric", metric.get("name")], ["direction", metric.get("direction")],
            ["delta", card.get("delta")], ["CI low", ci[0]], ["CI high", ci[1]],
            ["confidence", card.get("confidence")],
            ["bootstrap samples", card.get("bootstrap_samples")]])),
        ("Thresholds", table(kv, [[k, v] for k, v in (card.get("thresholds") or {}).items()])),
        ("Holdout", table(kv, [[k, hold.get(k)] for k in ("batches", "rows", "hash", "method")])),
        ("Throughput guardrail", table(kv, [[k, thru.get(k)] for k in THROUGHPUT_KEYS])),
        ("Guardrails", table(["guardrail", "ok", "detail"],
                              [[g.get("name"), g.get("ok"), g.get("detail")] for g in guards],
                              ["fail" if g.get("ok") is False else "" for g in guards])),
        ("Slices", table(list(SLICE_KEYS), [[s.get(k) for k in SLICE_KEYS] for s in slices],
                          ["fail" if s.get("ok") is False else "" for s in slices])),
        ("Models", table(["role", "version", "algorithm", "rows/s"], models)),
    ]
    return "".join(f"<h3>{title}</h3>{html_table}" for title, html_table in parts)


def _render_html(card: dict[str, Any]) -> str:
    """The run card as one self-contained HTML page (inline CSS and SVG, no scripts, no URLs)."""
    outcome = str(card.get("outcome") or "")
    kind = outcome.split(":")[0]
    kind = kind if kind in {"promote", "keep", "reject"} else "other"
    roc, delta, slices = _figures(card)
    title = f"Run card: {card.get('problem')}, evaluation {card.get('evaluation_id')}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{fmt(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{fmt(title)}</h1><p>created {fmt(card.get('created_at'))}</p>"
            f'<div class="outcome {kind}"><h2>{fmt(outcome)} (promote: '
            f"{fmt(card.get('promote'))})</h2><p>{fmt(card.get('reason'))}</p></div>"
            f"<h3>ROC curves</h3><figure>{roc}</figure>"
            f"<h3>Primary-metric delta</h3><figure>{delta}</figure>"
            f"<h3>Per-slice delta</h3><figure>{slices}</figure>{_tables(card)}</body></html>\n")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; the card is for other readers
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
