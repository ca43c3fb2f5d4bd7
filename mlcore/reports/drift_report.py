"""Drift reports people open: the data a report shows (per-column distributions of reference and
current on shared bins, the statistic over the problem's last batches, readable labels, links back
to the view and the Airflow run), saved in the JSON report, and ``render_report``, the HTML page
as a pure function of that JSON: inline SVG charts with hover titles, a sortable table, light and
dark, no external scripts, fonts or styles, and no machine paths.

Building the data needs pandas/numpy and the store (imported when called); rendering is stdlib.
"""

from __future__ import annotations

import html
import math
import os
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

FORMAT = "batchloop.drift/2"
BINS = 20  # numeric histograms: about this many bins of a round width, shared by both sides
TOP_CATEGORIES = 25  # categorical bars: the categories whose share is largest on either side
HISTORY_BATCHES = 10  # previous batches in the per-column history
# A report is <home>/reports/problem=<p>/batch=<b>/drift_v<n>.html, served by the Batchloop view
# at <base>/batchloop/reports/...: three levels up is the view, four the Airflow UI (links()).


# ---- the data (computed by detect_drift from the frames it already has) -------------------

def _step(span: float, integral: bool) -> float:
    """A round bin width (1, 2, 2.5 or 5 times a power of ten) giving at most ``BINS`` bins."""
    raw = span / BINS if span > 0 else 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    return max(1.0, round(step)) if integral else step


def numeric_plot(ref: Any, cur: Any) -> dict[str, Any]:
    """Histogram counts of both sides on the same round bins spanning the 0.5-99.5th
    percentiles of both (values beyond land in the end bins: ``clipped``)."""
    import numpy as np

    sides = [np.asarray(s, dtype=float) for s in (ref, cur)]
    finite = [s[np.isfinite(s)] for s in sides]
    out: dict[str, Any] = {"kind": "numeric", "missing": [int(len(s) - len(f)) for s, f
                                                          in zip(sides, finite, strict=True)]}
    both = np.concatenate(finite)
    if both.size == 0:
        return {**out, "edges": [], "reference": [], "current": [], "integral": False}
    lo, hi = (float(v) for v in np.quantile(both, [0.005, 0.995]))
    if lo == hi:
        lo, hi = float(both.min()), float(both.max())
    integral = bool(np.all(both == np.round(both)))
    step = _step(hi - lo, integral)
    start = math.floor(lo / step) * step
    n = max(1, math.ceil((hi - start) / step + (1 if integral else 0) - 1e-9))
    edges = start + step * np.arange(n + 1)
    counts = [np.histogram(np.clip(f, edges[0], edges[-1]), edges)[0].tolist() for f in finite]
    return {**out, "edges": [float(f"{e:.6g}") for e in edges], "reference": counts[0],
            "current": counts[1], "integral": integral,
            "clipped": bool(both.min() < edges[0] or both.max() > edges[-1])}


def categorical_plot(ref: Any, cur: Any, order: list[str]) -> dict[str, Any]:
    """Counts per category on both sides: the ``TOP_CATEGORIES`` with the largest share on
    either side (in the spec's order, then by share), the rest as one "other" bar."""
    from mlcore.spec_columns import label_key

    def counts(series: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for value, n in series.value_counts(dropna=False).items():
            key = "missing" if value is None or value != value else label_key(value)
            out[key] = out.get(key, 0) + int(n)
        return out

    sides = [counts(s) for s in (ref, cur)]
    totals = [max(1, sum(s.values())) for s in sides]
    share = {k: max(s.get(k, 0) / t for s, t in zip(sides, totals, strict=True))
             for k in {*sides[0], *sides[1]}}
    ranked = sorted(share, key=lambda k: (-share[k], k))
    kept, rest = ranked[:TOP_CATEGORIES], ranked[TOP_CATEGORIES:]
    rank = {k: i for i, k in enumerate(order)}
    kept.sort(key=lambda k: (k == "missing", rank.get(k, len(rank)), -share[k], k))
    out: dict[str, Any] = {"kind": "categorical", "categories": kept,
           "reference": [sides[0].get(k, 0) for k in kept],
           "current": [sides[1].get(k, 0) for k in kept], "other": len(rest)}
    if rest:
        out["categories"] = [*kept, f"other ({len(rest)} values)"]
        for i, side in ((0, "reference"), (1, "current")):
            out[side].append(sum(sides[i].get(k, 0) for k in rest))
    return out


def plot_data(reference: Any, current: Any, kinds: dict[str, str],
              spec: Any) -> dict[str, dict[str, Any]]:
    """Bounded plot data per judged column (``kinds``: column -> numeric | categorical)."""
    from mlcore.spec_columns import label_key

    def order(column: str) -> list[str]:
        if column not in spec.column_kinds:
            return []
        return [label_key(v) for v in spec.vocabulary(column)]

    return {c: numeric_plot(reference[c], current[c]) if k == "numeric"
            else categorical_plot(reference[c], current[c], order(c)) for c, k in kinds.items()}


def column_labels(spec: Any, columns: list[str]) -> dict[str, str]:
    """"description (code)" per column where the spec describes it; timestamp parts as
    "description, part (code)"; model outputs by what they are."""
    labels = {}
    for f in spec.features:
        for c in f.model_columns:
            text = f.description.strip()
            if text and c != f.name:
                text = f"{text}, {c.removeprefix(f.name + '_')}"
            labels[c] = f"{text} ({c})" if text else c
    kind = spec.target.kind
    for c in columns:
        if c == "prediction":
            what = "predicted value" if kind == "regression" else "predicted probability"
            labels[c] = f"model output: {what} (prediction)"
        elif c.startswith("prediction:"):
            labels[c] = f"model output: P({c.split(':', 1)[1]}) ({c})"
    return {c: labels.get(c, c) for c in columns}


def history(problem: str, batch_id: str, url: str,
            limit: int = HISTORY_BATCHES) -> list[dict[str, Any]]:
    """The stored drift of the ``limit`` batches ingested before ``batch_id`` (the newest
    report of each), oldest first: scores per column, verdicts, drift share."""
    from sqlalchemy import select

    from mlcore.store.models import Batch, DriftReport
    from mlcore.store.session import session_scope

    with session_scope(url) as s:
        here = s.scalar(select(Batch.id).where(Batch.problem == problem,
                                               Batch.batch_id == batch_id))
        query = (select(DriftReport).join(Batch, (Batch.problem == DriftReport.problem)
                                          & (Batch.batch_id == DriftReport.batch_id))
                 .where(DriftReport.problem == problem, DriftReport.batch_id != batch_id)
                 .order_by(Batch.id.desc(), DriftReport.id.desc()).limit(limit * 4))
        if here is not None:
            query = query.where(Batch.id < here)
        newest: dict[str, Any] = {}
        for row in s.scalars(query):
            if row.details and len(newest) < limit:
                newest.setdefault(row.batch_id, _history_entry(row))
    return list(reversed(newest.values()))


def _history_entry(row: Any) -> dict[str, Any]:
    d = row.details
    columns = {**d.get("columns", {}), **_outputs(d.get("prediction") or {})}
    return {"batch_id": row.batch_id, "model_version": row.model_version,
            "checked_at": row.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            "drift_share": row.drift_share, "dataset_drift": row.dataset_drift,
            "drifted_columns": list(row.drifted_columns),
            "scores": {c: v["score"] for c, v in columns.items()},
            "drift": [c for c, v in columns.items() if v.get("drift")]}


def _outputs(prediction: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model-output entries of ``details["prediction"]`` keyed by their column."""
    if "per_class" in prediction:
        return {f"prediction:{k}": v for k, v in prediction["per_class"].items()}
    return {"prediction": prediction} if prediction else {}


def links(problem: str, environ: dict[str, str] | None = None,
          depth: int = 3) -> dict[str, str | None]:
    """Relative links from a served page to the problem's view and, when the page was written
    inside an Airflow task of this problem (``AIRFLOW_CTX_*``), to that DAG run. ``depth``: the
    folders between ``<home>/reports`` and the page (3 for a drift report or a run card under
    ``problem=<p>/<batch or evaluation>/``, 2 for the monitoring page)."""
    env = os.environ if environ is None else environ
    dag, run = env.get("AIRFLOW_CTX_DAG_ID", ""), env.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    mine = dag.startswith(f"{problem}__") and run
    view, airflow = "../" * depth, "../" * (depth + 1)
    return {"view": f"{view}problems/{quote(problem, safe='')}",
            "airflow_run": (f"{airflow}dags/{quote(dag, safe='')}/runs/"
                            f"{quote(run, safe='')}") if mine else None,
            "dag_id": dag if mine else None, "run_id": run if mine else None}


def nav_html(problem: str, page_links: dict[str, Any] | None) -> str:
    """The ``<nav>`` of a served page: back to the view, and to the Airflow run that wrote it."""
    given = page_links or {}
    out = []
    if given.get("view"):
        out.append(f"<a href='{esc(given['view'])}'>← {esc(problem)} in the Batchloop view</a>")
    if given.get("airflow_run"):
        out.append(f"<a href='{esc(given['airflow_run'])}'>Airflow run "
                   f"{esc(given['run_id'])}</a>")
    return f"<nav>{' · '.join(out)}</nav>"


def build_report(result: dict[str, Any], snapshots: dict[str, Any], spec: Any,
                 plots: dict[str, dict[str, Any]], url: str) -> dict[str, Any]:
    """The JSON report: the result, Evidently's snapshots and what the page shows."""
    return {"format": FORMAT, **result, "evidently": snapshots, "plots": plots,
            "labels": column_labels(spec, list(plots)),
            "history": history(result["problem"], result["batch_id"], url),
            "links": links(result["problem"]),
            "spec": {"drift_share": spec.drift.drift_share,
                     "sample_rows": spec.drift.sample_rows},
            "checked_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


# ---- numbers and text -----------------------------------------------------------------------

MINUS = "\u2212"


def num(value: Any, digits: int = 3) -> str:
    """``digits`` significant digits, fixed-point (no exponent), thousands separated:
    0.0123, 1.23, 12.3, 1,235, 0.00008; NaN and None as a dash."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return esc(value)
    if value == 0:
        return "0"
    places = min(5, max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    text = f"{value:,.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text.strip("-0.,") == "" else text.replace("-", MINUS)


def signed(value: float, digits: int = 3, unit: str = "") -> str:
    """A delta with its sign: +1.23, −0.0456, ±0."""
    text = num(value, digits)
    if text == "0":
        return f"±0{unit}"
    return (text if text.startswith(MINUS) else f"+{text}") + unit


def pct(share: float) -> str:
    """A share as a percentage with 3 significant digits at most: 12.3%, 0.5%, 100%."""
    return f"{num(share * 100, 3)}%"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _name(uri: Any) -> str:
    """A file's name only: never a machine path on the page."""
    return PurePath(str(uri)).name


# ---- the page -------------------------------------------------------------------------------

# The Airflow UI's look (the Batchloop view's palette: Chakra's grays, blue accents), light/dark.
_LIGHT = ("--fg:#18181b;--bg:#ffffff;--muted:#71717a;--border:#e4e4e7;--head:#f4f4f5;"
          "--link:#0369a1;--card:#fafafa;--ok:#15803d;--bad:#b91c1c;--attn:#fef2f2;"
          "--ref:#a1a1aa;--cur:#0284c7;--grid:#e4e4e7")
_DARK = ("--fg:#e4e4e7;--bg:#09090b;--muted:#a1a1aa;--border:#3f3f46;--head:#18181b;"
         "--link:#7dd3fc;--card:#111113;--ok:#4ade80;--bad:#f87171;--attn:#2a1215;"
         "--ref:#71717a;--cur:#38bdf8;--grid:#27272a")
CSS = (f":root{{{_LIGHT};color-scheme:light}}@media (prefers-color-scheme:dark){{:root{{{_DARK};"
       "color-scheme:dark}}" """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em 2em;
color:var(--fg);background:var(--bg);font-size:14px;line-height:1.45}a{color:var(--link)}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.8em;
border-bottom:1px solid var(--border)}h3{font-size:1em;margin:0}
nav{display:flex;gap:1.2em;font-size:.95em}.muted{color:var(--muted)}
table{border-collapse:collapse;font-size:.92em;margin:.4em 0}
td,th{border:1px solid var(--border);padding:3px 8px;text-align:left;vertical-align:middle}
th{background:var(--head);white-space:nowrap}th[data-sort]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.nowrap{white-space:nowrap}
.tiles{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.tile{border:1px solid var(--border);border-radius:6px;background:var(--card);padding:.5em 1em;
max-width:26em}.tile b{font-size:1.25em}.tile.bad{border-color:var(--bad);background:var(--attn)}
.ok{color:var(--ok)}.bad{color:var(--bad)}.verdict{font-weight:600;white-space:nowrap}
tr.drift td:first-child{border-left:3px solid var(--bad)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}
.card{border:1px solid var(--border);border-radius:6px;background:var(--card);padding:.6em .8em}
.card.drift{border-color:var(--bad)}.card.wide{grid-column:1/-1}
.card header{display:flex;justify-content:space-between;align-items:baseline;gap:.6em}
.card p{margin:.3em 0;font-size:.92em}
svg{display:block;width:100%;height:auto}svg text{fill:var(--muted);font-size:11px}
.ref{fill:var(--ref)}.cur{fill:var(--cur)}.gridline{stroke:var(--grid)}
.hit{fill:transparent}.hit:hover{fill:var(--fg);fill-opacity:.08}
.line{fill:none;stroke:var(--cur);stroke-width:1.5}.thr{stroke:var(--bad);stroke-dasharray:3 3}
.pt{fill:var(--cur)}.pt.drift{fill:var(--bad)}.spark{width:150px;display:inline-block}
.key{display:inline-block;width:.8em;height:.8em;border-radius:2px;vertical-align:-1px}
button.zoom{font:inherit;font-size:.85em;color:inherit;background:var(--head);
border:1px solid var(--border);border-radius:4px;cursor:pointer}
#only:checked~.grid .card.ok-col,#only:checked~table tr.ok-col{display:none}""")

# Sorting the features table and enlarging a chart; the page reads the same without them.
SCRIPT = """
document.querySelectorAll('th[data-sort]').forEach(function(th){th.addEventListener('click',
function(){var t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex,
d=th.getAttribute('aria-sort')==='ascending'?-1:1;
t.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort')});
th.setAttribute('aria-sort',d>0?'ascending':'descending');
var rows=Array.prototype.slice.call(b.rows);rows.sort(function(x,y){
var a=x.cells[i].dataset.v,c=y.cells[i].dataset.v;
if(a!==undefined&&c!==undefined)return d*(parseFloat(a)-parseFloat(c));
return d*x.cells[i].textContent.localeCompare(y.cells[i].textContent)});
rows.forEach(function(r){b.appendChild(r)})})});
document.querySelectorAll('button.zoom').forEach(function(b){b.hidden=false;
b.addEventListener('click',function(){var c=b.closest('.card');c.classList.toggle('wide');
b.textContent=c.classList.contains('wide')?'shrink':'enlarge'})});
"""

W, H, LEFT, TOP, BOTTOM = 560, 220, 46, 12, 56  # distribution charts (viewBox units)


def _bar_labels(plot: dict[str, Any]) -> list[str]:
    if plot["kind"] == "categorical":
        return [str(c) for c in plot["categories"]]
    e = plot["edges"]
    if plot.get("integral"):  # whole numbers: [40, 45) reads 40–44
        return [num(a) if b - a == 1 else f"{num(a)}–{num(b - 1)}"
                for a, b in zip(e[:-1], e[1:], strict=False)]
    return [f"{num(a)} to {num(b)}" for a, b in zip(e[:-1], e[1:], strict=False)]


def _axis_max(top: float) -> float:
    """A round upper bound for a share axis."""
    for bound in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.8, 1.0):
        if top <= bound:
            return bound
    return 1.0


def distribution_svg(label: str, plot: dict[str, Any]) -> str:
    """Reference and current shares side by side per bin or category, each group with a
    hover title giving both shares and row counts."""
    ref, cur = plot["reference"], plot["current"]
    if not ref:
        return "<p class=muted>No finite values to plot.</p>"
    totals = [max(1, sum(ref)), max(1, sum(cur))]
    shares = [[n / totals[0] for n in ref], [n / totals[1] for n in cur]]
    top = _axis_max(max(max(s) for s in shares))
    names, n = _bar_labels(plot), len(ref)
    pw, ph = W - LEFT - 8, H - TOP - BOTTOM
    gw = pw / n
    y = lambda v: TOP + ph * (1 - v / top)  # noqa: E731 - local scale
    parts = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{esc(label)}: reference and '
             f'current distribution">']
    for tick in (0, top / 2, top):
        parts.append(f'<line class=gridline x1={LEFT} x2={W - 8} y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}"/><text x={LEFT - 4} y="{y(tick) + 4:.1f}" '
                     f'text-anchor=end>{pct(tick)}</text>')
    every = max(1, math.ceil(n / 12))
    for i in range(n):
        x = LEFT + i * gw
        for side, cls in ((0, "ref"), (1, "cur")):
            h = ph * shares[side][i] / top
            parts.append(f'<rect class={cls} x="{x + gw * (0.1 + 0.4 * side):.1f}" '
                         f'y="{TOP + ph - h:.1f}" width="{gw * 0.38:.1f}" height="{h:.1f}"/>')
        tip = (f"{label}: {names[i]}\nreference {pct(shares[0][i])} ({num(ref[i])} rows)\n"
               f"current {pct(shares[1][i])} ({num(cur[i])} rows)\n"
               f"change {signed(100 * (shares[1][i] - shares[0][i]))} pp")
        parts.append(f'<rect class=hit x="{x:.1f}" y={TOP} width="{gw:.1f}" height={ph}>'
                     f"<title>{esc(tip)}</title></rect>")
        if i % every == 0:
            short = names[i] if len(names[i]) <= 12 else names[i][:11] + "…"
            anchor = "end" if n > 8 else "middle"
            rot = f' transform="rotate(-35 {x + gw / 2:.1f} {H - BOTTOM + 14})"' if n > 8 else ""
            parts.append(f'<text x="{x + gw / 2:.1f}" y={H - BOTTOM + 14} '
                         f'text-anchor={anchor}{rot}>{esc(short)}</text>')
    return "".join(parts) + "</svg>"


def spark_svg(points: list[tuple[str, float, bool]], threshold: float, width: int = 150,
              height: int = 30) -> str:
    """The statistic over the last batches (the newest last), the threshold dashed; each
    point with its batch and score on hover."""
    if not points:
        return ""
    top = max(threshold, *(p[1] for p in points)) * 1.15 or 1.0
    step = (width - 8) / max(1, len(points) - 1)
    xy = [(4 + i * step if len(points) > 1 else width / 2,
           height - 3 - (height - 6) * p[1] / top) for i, p in enumerate(points)]
    ty = height - 3 - (height - 6) * threshold / top
    out = [f'<svg class=spark viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="score over the last {len(points)} batches">'
           f'<line class=thr x1=0 x2={width} y1="{ty:.1f}" y2="{ty:.1f}"/>']
    if len(xy) > 1:
        out.append('<polyline class=line points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
                   + '"/>')
    for (x, y), (batch, score, drift) in zip(xy, points, strict=True):
        r = 3.2 if (x, y) == xy[-1] else 2.2
        out.append(f'<circle class="pt{" drift" if drift else ""}" cx="{x:.1f}" cy="{y:.1f}" '
                   f'r={r}><title>batch {esc(batch)}: {num(score)} '
                   f'({"drift" if drift else "ok"}; threshold {num(threshold)})</title></circle>')
    return "".join(out) + "</svg>"


def _columns(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    d = report["details"]
    return {**d["columns"], **_outputs(d["prediction"])}


def _series(report: dict[str, Any], column: str) -> list[tuple[str, float, bool]]:
    past = [(h["batch_id"], h["scores"][column], column in h["drift"])
            for h in report.get("history", []) if column in h["scores"]]
    now = _columns(report)[column]
    return [*past, (report["batch_id"], now["score"], bool(now["drift"]))]


def moved(c: dict[str, Any]) -> str:
    """What moved, in words: means for numbers, the category whose share moved most."""
    if "reference_mean" in c:
        delta = c["current_mean"] - c["reference_mean"]
        return (f"mean {num(c['reference_mean'])} → {num(c['current_mean'])} "
                f"({signed(delta)})")
    if "value" in c:
        delta = 100 * (c["current_share"] - c["reference_share"])
        return (f"share of “{esc(c['value'])}” {pct(c['reference_share'])} → "
                f"{pct(c['current_share'])} ({signed(delta)} pp)")
    return ""


def _order(report: dict[str, Any]) -> list[str]:
    """Drifted columns first, then by score against its threshold, largest first."""
    cols = _columns(report)
    return sorted(cols, key=lambda c: (not cols[c]["drift"],
                                       -cols[c]["score"] / cols[c]["threshold"]))


def _verdict(drift: bool) -> str:
    return "<span class='verdict bad'>drift</span>" if drift else (
        "<span class='verdict ok'>ok</span>")


def _table(report: dict[str, Any]) -> str:
    cols, labels = _columns(report), report.get("labels", {})
    heads = [("feature", False), ("kind", False), ("test", False), ("score", True),
             ("threshold", True), ("score / threshold", True), ("verdict", False),
             ("reference → current", False), ("last batches", False)]
    head = "".join(f"<th data-sort{' class=num' if n else ''}>{h}</th>" for h, n in heads)
    rows = []
    for c in _order(report):
        v = cols[c]
        ratio = v["score"] / v["threshold"]
        cls = "drift" if v["drift"] else "ok-col"
        rows.append(
            f"<tr class={cls}><td><a href='#col-{esc(quote(c, safe=''))}'>"
            f"{esc(labels.get(c, c))}</a></td><td>{esc(v.get('kind', 'numeric'))}</td>"
            f"<td>{esc(v['method'])}</td><td class=num data-v='{v['score']}'>{num(v['score'])}"
            f"</td><td class=num data-v='{v['threshold']}'>{num(v['threshold'])}</td>"
            f"<td class=num data-v='{ratio}'>{num(ratio)}×</td>"
            f"<td data-v='{int(v['drift'])}'>{_verdict(v['drift'])}</td><td>{moved(v)}</td>"
            f"<td>{spark_svg(_series(report, c), v['threshold'])}</td></tr>")
    return (f"<table id=features><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table>")


def _card(report: dict[str, Any], column: str) -> str:
    v, plot = _columns(report)[column], report.get("plots", {}).get(column)
    label = report.get("labels", {}).get(column, column)
    notes = []
    if plot and plot["kind"] == "numeric" and plot.get("clipped"):
        notes.append("the end bins include values beyond the 0.5–99.5th percentiles")
    if plot and any(plot.get("missing", [0, 0])):
        notes.append(f"missing: reference {num(plot['missing'][0])}, current "
                     f"{num(plot['missing'][1])} rows (not plotted)")
    chart = distribution_svg(label, plot) if plot else "<p class=muted>No plot data.</p>"
    series = _series(report, column)
    return (f"<section class='card {'drift' if v['drift'] else 'ok-col'}' "
            f"id='col-{esc(quote(column, safe=''))}'><header><h3>{esc(label)}</h3>"
            f"<span>{_verdict(v['drift'])} <span class=muted>{esc(v['method'])} "
            f"{num(v['score'])} (threshold {num(v['threshold'])})</span> "
            "<button class=zoom hidden>enlarge</button></span></header>"
            f"<p>{moved(v)}</p>{chart}"
            + "".join(f"<p class=muted>{esc(n)}</p>" for n in notes)
            + "<p class=muted>" + (f"Score over the last {len(series)} batches: "
                                   if len(series) > 1 else "No earlier batches yet: ")
            + f"{spark_svg(series, v['threshold'])}</p></section>")


def _summary(report: dict[str, Any]) -> str:
    d, labels = report["details"], report.get("labels", {})
    features = len(d["columns"])
    drifted = [labels.get(c, c) for c in report["drifted_columns"]]
    bar = report.get("spec", {}).get("drift_share")
    pred = d["prediction"]
    ref = d["reference"]
    source = (f"champion v{report['model_version']}'s reference profile "
              f"({esc(_name(ref['uri']))}, sha256 {esc(ref['sha256'][:12])}…)"
              if ref["source"] == "profile" else
              f"training batches {esc(', '.join(ref['batches']))} (no profile recorded)")
    return (
        "<div class=tiles>"
        f"<div class='tile{' bad' if report['dataset_drift'] else ''}'>Dataset drift<br>"
        f"<b>{'yes' if report['dataset_drift'] else 'no'}</b> · {len(drifted)} of {features} "
        f"features ({pct(report['drift_share'])})"
        + (f"; the spec's bar is {pct(bar)}" if bar is not None else "") + "</div>"
        f"<div class='tile{' bad' if report['prediction_drift'] else ''}'>Prediction drift<br>"
        f"<b>{'yes' if report['prediction_drift'] else 'no'}</b> · {esc(pred['method'])} "
        f"{num(pred['score'])} (threshold {num(pred['threshold'])})</div>"
        f"<div class=tile>Rows compared<br><b>{num(d['rows']['current'])}</b> current · "
        f"{num(d['rows']['reference'])} reference</div>"
        f"<div class=tile>Took<br><b>{num(d['seconds'], 2)} s</b> of a "
        f"{num(d['budget_seconds'])} s budget</div></div>"
        f"<p>Drifted: {esc(', '.join(drifted)) or 'none'}.<br>Reference: {source}. Each side "
        "is a seeded sample"
        + (f" of at most {num(report['spec']['sample_rows'])} rows" if "spec" in report else "")
        + f". Evidently's full results: <a href='drift_v{report['model_version']}.json'>"
        f"drift_v{report['model_version']}.json</a>.</p>")


def _history(report: dict[str, Any]) -> str:
    """Earlier batches (each linked to its own report, next to this one) and this one."""
    past, labels = report.get("history", []), report.get("labels", {})
    if not past:
        return "<p class=muted>No earlier batch of this problem has a drift report yet.</p>"
    rows = [(f"<a href='../batch={esc(quote(h['batch_id'], safe=''))}/drift_v"
             f"{h['model_version']}.html'>{esc(h['batch_id'])}</a>", h["model_version"],
             h["checked_at"], h["drift_share"], h["dataset_drift"],
             any(c.startswith("prediction") for c in h["drift"]), h["drifted_columns"])
            for h in past]
    rows.append((f"{esc(report['batch_id'])} <span class=muted>(this batch)</span>",
                 report["model_version"], report.get("checked_at", "—"), report["drift_share"],
                 report["dataset_drift"], report["prediction_drift"], report["drifted_columns"]))
    body = "".join(
        f"<tr><td>{batch}</td><td>v{v}</td><td class=nowrap>{esc(at)}</td>"
        f"<td class=num data-v='{share}'>{pct(share)}</td><td>{_verdict(flag)}</td>"
        f"<td>{_verdict(pred)}</td>"
        f"<td>{esc(', '.join(labels.get(c, c) for c in cols)) or '—'}</td></tr>"
        for batch, v, at, share, flag, pred, cols in rows)
    return ("<table id=history><thead><tr><th>batch</th><th>model</th><th>checked</th>"
            "<th class=num>drift share</th><th>dataset drift</th><th>prediction drift</th>"
            f"<th>drifted features</th></tr></thead><tbody>{body}</tbody></table>")


def _segments(report: dict[str, Any]) -> str:
    segs, labels = report["details"]["segments"], report.get("labels", {})
    if not segs:
        return "<p class=muted>The spec declares no segment columns.</p>"
    rows = "".join(
        f"<tr><td>{esc(labels.get(e['column'], e['column']))} = {esc(e['value'])}</td>"
        f"<td class=num>{num(e['rows'][0])} / {num(e['rows'][1])}</td>"
        + (f"<td colspan=3 class=muted>skipped: {esc(e['skipped'])}</td>" if "skipped" in e else
           f"<td class=num>{pct(e['drift_share'])}</td><td>"
           f"{esc(', '.join(labels.get(c, c) for c in e['drifted_columns'])) or '—'}</td>"
           f"<td>{_verdict(e['prediction_drift'])}</td>") + "</tr>"
        for e in segs.values())
    return ("<table><thead><tr><th>segment</th><th class=num>rows (reference / current)</th>"
            "<th class=num>drift share</th><th>drifted</th><th>prediction</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _nav(report: dict[str, Any]) -> str:
    return nav_html(report["problem"], report.get("links"))


def render_report(report: dict[str, Any]) -> str:
    """The HTML page of a JSON drift report (``build_report``); self-contained and offline."""
    title = (f"Drift: {report['problem']} batch {report['batch_id']} vs champion "
             f"v{report['model_version']}")
    cards = "".join(_card(report, c) for c in _order(report))
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
        f"content='width=device-width,initial-scale=1'><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body>{_nav(report)}<h1>{esc(title)}</h1>"
        f"<p class=muted>Checked {esc(report.get('checked_at', '—'))}. Each column is judged "
        "by its effect size against the spec's threshold (normed Wasserstein distance for "
        "numbers, Jensen-Shannon distance for categories).</p>"
        f"{_summary(report)}<h2>Features</h2><section><input type=checkbox id=only> "
        "<label for=only>only drifted features</label> <span class=muted>· "
        "<span class='key' style='background:var(--ref)'></span> reference "
        "<span class='key' style='background:var(--cur)'></span> current · hover a bar for "
        "its numbers; the line is the score over the last batches, dashed the threshold"
        f"</span>{_table(report)}<h2>Distributions</h2><div class=grid>{cards}</div></section>"
        f"<h2>Last batches</h2>{_history(report)}<h2>Segments</h2>{_segments(report)}"
        f"<script>{SCRIPT}</script></body></html>")
