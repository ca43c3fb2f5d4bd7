"""Drift report page: ``render_report``, the HTML page of a JSON drift report
(``mlcore.reports.drift_data.build_report``) as a pure function of it: inline SVG charts with hover
titles (``drift_charts``), a sortable table, light and dark, no external scripts, fonts or styles,
and no machine paths. Stdlib only, written with ``mlcore.reports.html``.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from mlcore.reports.drift_charts import distribution_svg, num, pct, signed, spark_svg
from mlcore.reports.drift_data import outputs
from mlcore.reports.html import DARK, LIGHT, document, escape, nav_html


def _name(uri: Any) -> str:
    """A file's name only: never a machine path on the page."""
    return PurePath(str(uri)).name


# ---- the page -------------------------------------------------------------------------------

# The Airflow UI's look (the Batchloop view's palette), light/dark, plus the chart colours.
_LIGHT = LIGHT + ";--bad:#b91c1c;--attn:#fef2f2;--ref:#a1a1aa;--cur:#0284c7;--grid:#e4e4e7"
_DARK = DARK + (";--card:#111113;--ok:#4ade80;--bad:#f87171;--attn:#2a1215;--ref:#71717a;"
                "--cur:#38bdf8;--grid:#27272a")
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

def _columns(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    d = report["details"]
    return {**d["columns"], **outputs(d["prediction"])}


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
        return (f"share of “{escape(c['value'])}” {pct(c['reference_share'])} → "
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
            f"<tr class={cls}><td><a href='#col-{escape(quote(c, safe=''))}'>"
            f"{escape(labels.get(c, c))}</a></td><td>{escape(v.get('kind', 'numeric'))}</td>"
            f"<td>{escape(v['method'])}</td><td class=num data-v='{v['score']}'>{num(v['score'])}"
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
            f"id='col-{escape(quote(column, safe=''))}'><header><h3>{escape(label)}</h3>"
            f"<span>{_verdict(v['drift'])} <span class=muted>{escape(v['method'])} "
            f"{num(v['score'])} (threshold {num(v['threshold'])})</span> "
            "<button class=zoom hidden>enlarge</button></span></header>"
            f"<p>{moved(v)}</p>{chart}"
            + "".join(f"<p class=muted>{escape(n)}</p>" for n in notes)
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
              f"({escape(_name(ref['uri']))}, sha256 {escape(ref['sha256'][:12])}…)"
              if ref["source"] == "profile" else
              f"training batches {escape(', '.join(ref['batches']))} (no profile recorded)")
    return (
        "<div class=tiles>"
        f"<div class='tile{' bad' if report['dataset_drift'] else ''}'>Dataset drift<br>"
        f"<b>{'yes' if report['dataset_drift'] else 'no'}</b> · {len(drifted)} of {features} "
        f"features ({pct(report['drift_share'])})"
        + (f"; the spec's bar is {pct(bar)}" if bar is not None else "") + "</div>"
        f"<div class='tile{' bad' if report['prediction_drift'] else ''}'>Prediction drift<br>"
        f"<b>{'yes' if report['prediction_drift'] else 'no'}</b> · {escape(pred['method'])} "
        f"{num(pred['score'])} (threshold {num(pred['threshold'])})</div>"
        f"<div class=tile>Rows compared<br><b>{num(d['rows']['current'])}</b> current · "
        f"{num(d['rows']['reference'])} reference</div>"
        f"<div class=tile>Took<br><b>{num(d['seconds'], 2)} s</b> of a "
        f"{num(d['budget_seconds'])} s budget</div></div>"
        f"<p>Drifted: {escape(', '.join(drifted)) or 'none'}.<br>Reference: {source}. Each side "
        "is a seeded sample"
        + (f" of at most {num(report['spec']['sample_rows'])} rows" if "spec" in report else "")
        + f". Evidently's full results: <a href='drift_v{report['model_version']}.json'>"
        f"drift_v{report['model_version']}.json</a>.</p>")


def _history(report: dict[str, Any]) -> str:
    """Earlier batches (each linked to its own report, next to this one) and this one."""
    past, labels = report.get("history", []), report.get("labels", {})
    if not past:
        return "<p class=muted>No earlier batch of this problem has a drift report yet.</p>"
    rows = [(f"<a href='../batch={escape(quote(h['batch_id'], safe=''))}/drift_v"
             f"{h['model_version']}.html'>{escape(h['batch_id'])}</a>", h["model_version"],
             h["checked_at"], h["drift_share"], h["dataset_drift"],
             any(c.startswith("prediction") for c in h["drift"]), h["drifted_columns"])
            for h in past]
    rows.append((f"{escape(report['batch_id'])} <span class=muted>(this batch)</span>",
                 report["model_version"], report.get("checked_at", "—"), report["drift_share"],
                 report["dataset_drift"], report["prediction_drift"], report["drifted_columns"]))
    body = "".join(
        f"<tr><td>{batch}</td><td>v{v}</td><td class=nowrap>{escape(at)}</td>"
        f"<td class=num data-v='{share}'>{pct(share)}</td><td>{_verdict(flag)}</td>"
        f"<td>{_verdict(pred)}</td>"
        f"<td>{escape(', '.join(labels.get(c, c) for c in cols)) or '—'}</td></tr>"
        for batch, v, at, share, flag, pred, cols in rows)
    return ("<table id=history><thead><tr><th>batch</th><th>model</th><th>checked</th>"
            "<th class=num>drift share</th><th>dataset drift</th><th>prediction drift</th>"
            f"<th>drifted features</th></tr></thead><tbody>{body}</tbody></table>")


def _segments(report: dict[str, Any]) -> str:
    segs, labels = report["details"]["segments"], report.get("labels", {})
    if not segs:
        return "<p class=muted>The spec declares no segment columns.</p>"
    rows = "".join(
        f"<tr><td>{escape(labels.get(e['column'], e['column']))} = {escape(e['value'])}</td>"
        f"<td class=num>{num(e['rows'][0])} / {num(e['rows'][1])}</td>"
        + (f"<td colspan=3 class=muted>skipped: {escape(e['skipped'])}</td>" if "skipped" in e else
           f"<td class=num>{pct(e['drift_share'])}</td><td>"
           f"{escape(', '.join(labels.get(c, c) for c in e['drifted_columns'])) or '—'}</td>"
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
    return document(title, (
        f"{_nav(report)}<h1>{escape(title)}</h1>"
        f"<p class=muted>Checked {escape(report.get('checked_at', '—'))}. Each column is judged "
        "by its effect size against the spec's threshold (normed Wasserstein distance for "
        "numbers, Jensen-Shannon distance for categories).</p>"
        f"{_summary(report)}<h2>Features</h2><section><input type=checkbox id=only> "
        "<label for=only>only drifted features</label> <span class=muted>· "
        "<span class='key' style='background:var(--ref)'></span> reference "
        "<span class='key' style='background:var(--cur)'></span> current · hover a bar for "
        "its numbers; the line is the score over the last batches, dashed the threshold"
        f"</span>{_table(report)}<h2>Distributions</h2><div class=grid>{cards}</div></section>"
        f"<h2>Last batches</h2>{_history(report)}<h2>Segments</h2>{_segments(report)}"
        f"<script>{SCRIPT}</script>"), CSS,
        head="<meta name=viewport content='width=device-width,initial-scale=1'>")
