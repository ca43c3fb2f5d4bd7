"""HTML of the Batchloop view in the Airflow UI: the problem index and one page per problem.

Data comes from ``mlcore``'s own read-side queries (``reporting.summary``, ``registry``,
``lineage.model_lineage``); this module only arranges it, with the HTML toolkit the written
reports use (``mlcore.reports.html``), and holds the view's own formatting (numbers, deltas,
times, outcomes) and style. Every text is escaped, the pages load one script of the view's own
(``static/view.js``), and every link is relative (``reports/...`` is served by
``batchloop_airflow.ui.app``). Imported only by the request handlers, never at plugin load.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlcore.reports.html import DARK, LIGHT, card, document, esc, html_table, link, report_href

MAX_LINEAGE = 10  # model versions whose lineage is expanded

# The Airflow UI's look (Chakra's grays, blue accents), light and dark: dark follows the Airflow UI
# around the frame (view.js copies its color mode) or, standalone, the system setting.
_LIGHT = LIGHT + ";--warn:#a16207;--bad:#b91c1c;--tag:#e0f2fe;--attn:#fef2f2"
_DARK = DARK + (";--card:#18181b;--ok:#4ade80;--warn:#facc15;--bad:#f87171;--tag:#0c4a6e;"
                "--attn:#2a1215")
_STYLE = (f"html{{{_LIGHT};color-scheme:light}}html[data-theme=dark]{{{_DARK};"
          "color-scheme:dark}"
          f"@media (prefers-color-scheme:dark){{html:not([data-theme=light]){{{_DARK};"
          "color-scheme:dark}}"
          """
body{font-family:Inter,system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em 2em;
color:var(--fg);background:var(--bg);font-size:14px}a{color:var(--link)}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid var(--border)}
table{border-collapse:collapse;font-size:.92em;margin:.4em 0}
td,th{border:1px solid var(--border);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--head)}th[data-sortable]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.when,.nowrap{white-space:nowrap}.cards{display:flex;gap:1em;flex-wrap:wrap;margin-top:1em}
.card{border:1px solid var(--border);border-radius:6px;background:var(--card);padding:.6em 1em;
min-width:16em;max-width:36em}.card b{font-size:1.3em}.muted{color:var(--muted)}
.promote,.ok{color:var(--ok)}.keep,.warn{color:var(--warn)}.reject,.bad{color:var(--bad)}
.tag{background:var(--tag);border-radius:4px;padding:0 4px;margin-right:3px}
.attn{border:1px solid var(--bad);background:var(--attn);border-radius:6px;padding:.4em 1em}
.allclear{border:1px solid var(--ok);border-radius:6px;padding:.4em 1em}
form.act{display:inline-flex;gap:.4em;align-items:center;margin:.2em 0}
input,select,button{font:inherit;color:inherit;background:var(--bg);border:1px solid var(--border);
border-radius:4px;padding:2px 6px}button{cursor:pointer;background:var(--head)}
details summary{cursor:pointer}""")


def num(value: Any, digits: int = 4) -> str:
    """A number rounded to ``digits`` decimals (never scientific notation), or an em dash."""
    if value is None:
        return "—"
    text = f"{float(value):.{digits}f}"
    return "0" + text[2:] if text.startswith("-0") and not text.strip("-0.") else text


def signed(value: Any, digits: int = 4) -> str:
    """A delta with its sign (``+0.0123``, ``−0.0001``, ``±0``), or an em dash."""
    if value is None:
        return "—"
    text = num(abs(float(value)), digits)
    if not text.strip("0."):
        return f'<span class="num">±{text}</span>'
    sign, cls = ("+", "ok") if value > 0 else ("−", "bad")
    return f'<span class="num {cls}">{sign}{text}</span>'


def when(iso: str | None) -> str:
    """A UTC timestamp as ``2026-11-21 17:35`` that never wraps (full value on hover)."""
    if not iso:
        return "—"
    short = iso[:16].replace("T", " ")
    return f'<span class="when" title="{html.escape(iso)}">{html.escape(short)}</span>'


def page(title: str, body: str, base: str = "") -> str:
    """A complete HTML document; ``base`` is the relative path to the view's root (for its one
    script, ``static/view.js``: sortable tables and the Airflow UI's color mode)."""
    return document(title, body, _STYLE,
                    head=f'<script src="{html.escape(base)}static/view.js" defer></script>')


def index_data(settings: Any) -> list[dict[str, Any]]:
    """One row per declared problem: champion, challenger, version and batch counts, and the
    champion's newest estimated metric (``mlcore.estimation.latest_estimate``)."""
    from mlcore.estimation import latest_estimate
    from mlcore.model.registry import list_versions
    from mlcore.problems import load_problems
    from mlcore.reporting import batches

    rows = []
    for name, spec in load_problems(settings.problems_dir).items():
        versions = list_versions(name, settings.db_url)
        holder = {a: v["version"] for v in versions for a in v["aliases"]}
        champion = holder.get("champion")
        rows.append({"problem": name, "description": spec.description,
                     "champion": champion, "challenger": holder.get("challenger"),
                     "versions": len(versions), "batches": len(batches(name, settings.db_url)),
                     "estimate": None if champion is None else
                     latest_estimate(name, champion, settings.db_url)})
    return rows


def estimate_text(e: dict[str, Any] | None) -> str:
    """``roc_auc 0.8782 [0.8756, 0.8807] on 2018``: a newest estimate made before labels."""
    if e is None:
        return '<span class="muted">not estimated yet</span>'
    return (f'{esc(e["metric"])} <span class="num">{num(e["estimate"])}</span> '
            f'<span class="nowrap muted">[{num(e["ci_low"])}, {num(e["ci_high"])}]</span> '
            f"on {esc(e['batch_id'])}")


def render_index(rows: list[dict[str, Any]]) -> str:
    """The list of problems."""
    cells = [[link(f"problems/{quote(r['problem'], safe='')}", r["problem"]),
              esc(r["description"]), _version(r["champion"]), _version(r["challenger"]),
              f'<span class="num">{r["versions"]}</span>',
              f'<span class="num">{r["batches"]}</span>',
              "—" if r["champion"] is None else estimate_text(r.get("estimate"))]
             for r in rows]
    return page("Batchloop", "<h1>Batchloop: problems</h1>" + html_table(
        ["Problem", "Description", "Champion", "Challenger", "Versions", "Batches",
         "Champion's estimated metric (newest batch, before labels)"], cells,
        "No problem specs found (MLCORE_PROBLEMS_DIR)."))


def _version(v: int | None) -> str:
    return "—" if v is None else f"v{int(v)}"


def problem_data(spec: Any, settings: Any) -> dict[str, Any]:
    """``reporting.summary`` plus the lineage of the newest ``MAX_LINEAGE`` versions, the
    quarantine breakdown, drift per batch and the "needs attention" panel's data."""
    from batchloop_airflow.ui.cockpit import attention_data
    from mlcore.estimation import latest_estimate
    from mlcore.lineage import model_lineage
    from mlcore.reporting import drift_by_batch, quarantine_breakdown, summary

    data = summary(spec.name, settings)
    data["lineage"] = [model_lineage(spec.name, m["version"], settings.db_url)
                       for m in data["models"][:MAX_LINEAGE]]
    data["spec"] = {"description": spec.description, "metric": spec.metric.name,
                    "direction": spec.metric.direction, "target": spec.target.kind}
    data["monitoring_exists"] = (
        settings.partition("reports", spec.name) / "monitoring.html").is_file()
    data["quarantine"] = quarantine_breakdown(spec.name, settings.db_url)
    data["drift_by_batch"] = drift_by_batch(spec.name, settings.db_url)
    data["attention"] = attention_data(spec, settings)
    data["estimates"] = {m["version"]: latest_estimate(spec.name, m["version"], settings.db_url)
                         for m in data["models"] if m["aliases"]}
    return data


def outcome(value: str | None, method: str | None = None) -> str:
    """An evaluation's outcome; a shadow comparison moves nothing, so it never reads as a
    green ``promote``."""
    kind = (value or "").split(":")[0].strip()
    if method == "shadow":
        return f'<span class="muted">shadow: would {esc(value)}</span>'
    return f'<span class="{html.escape(kind)}">{esc(value)}</span>'


def alias_move(h: dict[str, Any], version: int | None = None) -> str:
    """One alias move in words; seen from ``version``, losing the alias says so."""
    if version is not None and h["from"] == version and h["to"] != version:
        return f"lost {esc(h['alias'])} to v{h['to']} ({esc(h['action'])})"
    return f"{esc(h['alias'])} {_version(h['from'])} → {_version(h['to'])} ({esc(h['action'])})"


def _holders(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Alias -> the model version holding it."""
    return {a: m for m in d["models"] for a in m["aliases"]}


def _alias_card(d: dict[str, Any], alias: str, holdout: dict[int, Any], vpage: str) -> str:
    """The card of an alias: its version, algorithm, holdout figure, newest estimate and since
    when (and why) it holds the alias."""
    m = _holders(d).get(alias)
    if m is None:
        return card(f"{esc(alias)}<br><b>none</b>")
    last = next((h for h in reversed(d["alias_history"])
                 if h["alias"] == alias and h["to"] == m["version"]), None)
    since = "" if last is None else (
        f'<br><span class="muted">since {when(last["at"])} by {esc(last["actor"])}: '
        f'{esc(last["reason"])}</span>')
    v = str(m["version"])
    estimated = (f'<br>estimated before labels: '
                 f'{estimate_text((d.get("estimates") or {}).get(m["version"]))}')
    return card(f'{esc(alias)}<br><b>{link(vpage + v, "v" + v)}</b> '
                f'{esc(m["algorithm"])}<br>holdout {esc(d["spec"]["metric"])} '
                f'{num(holdout.get(m["version"]))}{estimated}{since}')


def _head(d: dict[str, Any], ui: dict[str, Any], holdout: dict[int, Any], vpage: str) -> str:
    """Links, the flash message, the title, "needs attention", the alias cards, the actions."""
    from batchloop_airflow.ui.actions import forms, rerun_form
    from batchloop_airflow.ui.cockpit import render_attention
    from batchloop_airflow.ui.stream import render_stream

    p, metric, base, rep = d["problem"], d["spec"]["metric"], "../", "../reports/"
    monitoring = (link(rep + f"problem={quote(p, safe='')}/monitoring.html", "Monitoring page",
                       new_tab=True) if d["monitoring_exists"] else
                  '<span class="muted">Monitoring page not written yet</span>')
    rerun = rerun_form(p, ui["csrf"], base) if ui["can"]["rerun"] else None
    cards = "".join(_alias_card(d, a, holdout, vpage) for a in ("champion", "challenger"))
    return (f'<p><a href="../">All problems</a> · {monitoring} · '
            f'<a href="../runbook">Runbook</a></p>'
            + (f'<p class="allclear" id="flash">{esc(ui["flash"])}</p>' if ui.get("flash") else "")
            + f"<h1>Batchloop: {esc(p)}</h1><p>{esc(d['spec']['description'])}</p>"
            f"<p class=\"muted\">{esc(d['spec'].get('target', 'binary'))} target; primary "
            f"metric {esc(metric)} ({esc(d['spec'].get('direction', 'maximize'))})</p>"
            f"<h2>Needs attention</h2>{render_attention(d['attention'], base, rerun)}"
            + render_stream(d["attention"].get("stream")) +
            f'<div class="cards">{cards}</div>'
            "<h2>Actions</h2>" + forms(p, ui["csrf"], d["models"], ui["can"], base))


def _model_rows(d: dict[str, Any], holdout: dict[int, Any], vpage: str) -> list[list[str]]:
    """One row per model version: aliases, algorithm, hyperparameters, training data, its best
    validation figure and its latest holdout figure."""
    metric = d["spec"]["metric"]

    def best_validation(m: dict[str, Any]) -> float | None:
        scores = [v.get(metric) for v in (m["metrics"].get("validation") or {}).values()]
        best = min if d["spec"].get("direction") == "minimize" else max
        return best((s for s in scores if s is not None), default=None)

    return [[link(vpage + str(m["version"]), f"v{m['version']}"),
             "".join(f'<span class="tag">{esc(a)}</span>' for a in m["aliases"]),
             esc(m["algorithm"]), esc(", ".join(f"{k}={v}" for k, v in
                                                m["hyperparameters"].items()
                                                if k != "algorithm")),
             esc(", ".join(m["training_batch_ids"])),
             f'<span class="num">{m["train_rows"]}</span>', num(best_validation(m)),
             num(holdout.get(m["version"])), when(m["created_at"])]
            for m in d["models"]]


def _compare_form(d: dict[str, Any]) -> str:
    """Pick two versions to compare: the newest and the champion (or the one before)."""
    if len(d["models"]) < 2:
        return ""
    aliases = _holders(d)
    newest = d["models"][0]["version"]
    other = aliases["champion"]["version"] if "champion" in aliases else None
    other = d["models"][1]["version"] if other in (None, newest) else other

    def options(selected: int) -> str:
        return "".join(f'<option value="{m["version"]}"'
                       f'{" selected" if m["version"] == selected else ""}>v{m["version"]}'
                       "</option>" for m in d["models"])

    return (f'<form class="act" method="get" action="{quote(d["problem"], safe="")}/compare" '
            f'id="compare">Compare <select name="a">{options(newest)}</select> with '
            f'<select name="b">{options(other)}</select>'
            '<button type="submit">Compare</button></form>')


def _move_rows(d: dict[str, Any], cards: dict[int, str | None]) -> list[list[str]]:
    """Alias moves, newest first, each with its evaluation's run card."""
    return [[when(h["at"]), esc(h["alias"]),
             f"{_version(h['from'])} → {_version(h['to'])}", esc(h["action"]), esc(h["actor"]),
             esc(h["reason"]), "—" if h["evaluation_id"] is None else
             link(cards.get(h["evaluation_id"]), f"#{h['evaluation_id']} run card", True)]
            for h in reversed(d["alias_history"])]


def _evaluation_rows(d: dict[str, Any], cards: dict[int, str | None],
                     vpage: str) -> list[list[str]]:
    """Evaluations, newest first: the two figures, the delta with its CI, outcome, run card."""
    return [[f"#{e['id']}", link(vpage + str(e["contender"]), f"v{e['contender']}"),
             _version(e["champion"]),
             esc(", ".join(e["holdout"])) + f' <span class="muted">({e["holdout_rows"]} rows'
             + (", shadow" if e.get("method") == "shadow" else "") + ")</span>",
             num(e["contender_value"]), num(e["champion_value"]), signed(e["delta"]),
             "—" if e["ci"][0] is None else f'<span class="nowrap">{signed(e["ci"][0])} … '
             f'{signed(e["ci"][1])}</span>',
             outcome(e["outcome"], e.get("method")), esc(e["reason"]),
             link(cards[e["id"]], "run card", True)]
            for e in reversed(d["evaluations"])]


def _lineage_rows(d: dict[str, Any], cards: dict[int, str | None],
                  vpage: str) -> list[list[str]]:
    """Per version: the batches it trained on, its dataset, its evaluations and alias moves."""
    return [[link(vpage + str(li["version"]), f"v{li['version']}"),
             "<br>".join(f"{esc(b['batch_id'])} <span class=\"muted\">{b['rows']} rows, "
                         f"sha256 {esc(b['sha256'][:12])}</span>"
                         for b in li["training_batches"]),
             esc(li["dataset"]),
             "<br>".join(link(cards.get(e["id"]), f"#{e['id']}", True) + " on "
                         + esc(", ".join(e["holdout"])) + ": " + outcome(e["outcome"])
                         for e in li["evaluations"]) or "—",
             "<br>".join(f"{alias_move(h, li['version'])} {when(h['at'])}"
                         for h in li["alias_history"]) or "—"]
            for li in d["lineage"]]


def render_problem(d: dict[str, Any], home: Path, spec: Any, ui: dict[str, Any]) -> str:
    """The page of one problem (``d`` from ``problem_data``). ``ui``: ``csrf`` and ``can``
    (``ui_actions.may_act``) for the action forms, ``flash`` (a message to show)."""
    from batchloop_airflow.ui.batches import render_batches

    p, metric, rep = d["problem"], d["spec"]["metric"], "../reports/"
    cards = {e["id"]: report_href(e["run_card"], home, rep) for e in d["evaluations"]}
    # version -> its latest holdout figure as the contender
    holdout = {e["contender"]: e["contender_value"] for e in d["evaluations"]}
    vpage = f"{quote(p, safe='')}/versions/"
    requests = [[f"#{r['id']}", esc(r["batch_id"]), esc("+".join(r["triggers"])),
                 esc(r["state"]), _version(r["resolved_by_version"]), esc(r["reason"])]
                for r in reversed(d["retrain_requests"])]
    perf = [[esc(r["batch_id"]), f"v{r['model_version']}", esc(r["role"]), num(r["value"]),
             f"{r['labelled_rows']}/{r['predicted_rows']}"] for r in reversed(d["performance"])]
    body = "".join([
        _head(d, ui, holdout, vpage), "<h2>Model versions</h2>", _compare_form(d),
        html_table(["Version", "Aliases", "Algorithm", "Hyperparameters", "Trained on",
                    "Train rows", f"Validation {metric} (best)", f"Holdout {metric}",
                    "Created (UTC)"], _model_rows(d, holdout, vpage), "No model versions yet."),
        "<h2>Alias history (who, when, why)</h2>",
        html_table(["When (UTC)", "Alias", "Move", "Action", "Who", "Why", "Evaluation"],
                   _move_rows(d, cards), "No alias moves yet."),
        "<h2>Evaluations (contender vs champion on the frozen holdout)</h2>",
        html_table(["#", "Contender", "Champion", "Holdout", f"Contender {metric}",
                    f"Champion {metric}", "Delta", "CI", "Outcome", "Reason", "Run card"],
                   _evaluation_rows(d, cards, vpage), "No evaluations yet."),
        "<h2>Batches</h2>", render_batches(d, spec, home, rep),
        f"<h2>Lineage (newest {MAX_LINEAGE} versions)</h2>",
        html_table(["Version", "Trained on (batch, rows, SHA-256)", "Dataset",
                    "Evaluations (holdout: outcome)", "Alias moves"],
                   _lineage_rows(d, cards, vpage), "No model versions yet."),
        "<h2>Retrain requests</h2>",
        html_table(["#", "Batch", "Triggers", "State", "Answered by", "Reason"], requests,
                   "No retrain requests yet."),
        "<h2>Performance on matured labels</h2>",
        html_table(["Batch", "Version", "Role", metric, "Labelled / predicted"], perf,
                   "No matured labels yet.")])
    return page(f"Batchloop: {p}", body, "../")
