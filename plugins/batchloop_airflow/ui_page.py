"""HTML of the Batchloop view in the Airflow UI: the problem index and one page per problem.

Data comes from ``mlcore``'s own read-side queries (``reporting.summary``, ``registry``,
``lineage.model_lineage``); this module only arranges it. Every text is escaped, the pages have
no scripts, and every link is relative (``reports/...`` is served by ``batchloop_airflow.ui``).
Imported only by the request handlers, never at plugin load.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

MAX_ROWS = 50  # newest rows shown per table (the monitoring page has the long view)
MAX_LINEAGE = 10  # model versions whose lineage is expanded

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.2em 2em;color:#1f2328}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:6px;
padding:.6em 1em;min-width:16em;max-width:36em}.card b{font-size:1.3em}.muted{color:#656d76}
.promote{color:#1a7f37}.keep{color:#9a6700}.reject{color:#cf222e}.tag{background:#ddf4ff;
border-radius:4px;padding:0 4px;margin-right:3px}"""


def esc(value: Any) -> str:
    """``value`` as escaped HTML text (None as an em dash)."""
    return "—" if value is None or value == "" else html.escape(str(value))


def num(value: Any, digits: int = 4) -> str:
    """A number with fixed decimals, or an em dash."""
    return "—" if value is None else f"{value:.{digits}f}"


def link(href: str | None, text: Any, new_tab: bool = False) -> str:
    """An ``<a>`` (escaped href and text), or just the text when there is no href."""
    if not href:
        return esc(text)
    target = ' target="_blank" rel="noopener"' if new_tab else ""
    return f'<a href="{html.escape(href)}"{target}>{esc(text)}</a>'


def report_href(uri: str | None, home: Path, prefix: str) -> str | None:
    """URL (``prefix`` + path below ``<home>/reports``) of a report file, or None when ``uri``
    is not a file under the reports folder (such a file is never served)."""
    if not uri:
        return None
    root = (home / "reports").resolve()
    path = Path(uri).resolve()
    if not path.is_relative_to(root) or path == root:
        return None
    return prefix + quote(os.path.relpath(path, root), safe="/=")


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    """A table of pre-escaped cells (newest ``MAX_ROWS`` rows), or ``empty`` as a paragraph."""
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'
    more = (f'<p class="muted">{len(rows) - MAX_ROWS} older rows not shown.</p>'
            if len(rows) > MAX_ROWS else "")
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[:MAX_ROWS])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def page(title: str, body: str) -> str:
    """A complete HTML document."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
            f"</title><style>{_STYLE}</style></head><body>{body}</body></html>\n")


def index_data(settings: Any) -> list[dict[str, Any]]:
    """One row per declared problem: champion, challenger, version and batch counts."""
    from mlcore.problems import load_problems
    from mlcore.registry import list_versions
    from mlcore.reporting import batches

    rows = []
    for name, spec in load_problems(settings.problems_dir).items():
        versions = list_versions(name, settings.db_url)
        holder = {a: v["version"] for v in versions for a in v["aliases"]}
        rows.append({"problem": name, "description": spec.description,
                     "champion": holder.get("champion"), "challenger": holder.get("challenger"),
                     "versions": len(versions), "batches": len(batches(name, settings.db_url))})
    return rows


def render_index(rows: list[dict[str, Any]]) -> str:
    """The list of problems."""
    cells = [[link(f"problems/{quote(r['problem'], safe='')}", r["problem"]),
              esc(r["description"]), _version(r["champion"]), _version(r["challenger"]),
              f'<span class="num">{r["versions"]}</span>',
              f'<span class="num">{r["batches"]}</span>'] for r in rows]
    return page("Batchloop", "<h1>Batchloop: problems</h1>" + table(
        ["Problem", "Description", "Champion", "Challenger", "Versions", "Batches"], cells,
        "No problem specs found (MLCORE_PROBLEMS_DIR)."))


def _version(v: int | None) -> str:
    return "—" if v is None else f"v{int(v)}"


def problem_data(spec: Any, settings: Any) -> dict[str, Any]:
    """``reporting.summary`` plus the lineage of the newest ``MAX_LINEAGE`` versions."""
    from mlcore.lineage import model_lineage
    from mlcore.reporting import summary

    data = summary(spec.name, settings)
    data["lineage"] = [model_lineage(spec.name, m["version"], settings.db_url)
                       for m in data["models"][:MAX_LINEAGE]]
    data["spec"] = {"description": spec.description, "metric": spec.metric.name,
                    "direction": spec.metric.direction, "target": spec.target.kind}
    data["monitoring_exists"] = (
        settings.partition("reports", spec.name) / "monitoring.html").is_file()
    return data


def _outcome(outcome: str | None) -> str:
    kind = (outcome or "").split(":")[0].strip()
    return f'<span class="{html.escape(kind)}">{esc(outcome)}</span>'


def render_problem(d: dict[str, Any], home: Path) -> str:
    """The page of one problem (``d`` from ``problem_data``)."""
    p, metric = d["problem"], d["spec"]["metric"]
    rep = f"../reports/problem={quote(p, safe='')}/"
    cards = {e["id"]: report_href(e["run_card"], home, "../reports/") for e in d["evaluations"]}
    holdout = {}  # version -> its latest holdout figure as the contender
    for e in d["evaluations"]:
        holdout[e["contender"]] = e["contender_value"]
    aliases = {a: m for m in d["models"] for a in m["aliases"]}
    trained_on: dict[str, list[int]] = {}
    for m in d["models"]:
        for b in m["training_batch_ids"]:
            trained_on.setdefault(b, []).append(m["version"])

    def card(alias: str) -> str:
        m = aliases.get(alias)
        if m is None:
            return f'<div class="card">{esc(alias)}<br><b>none</b></div>'
        last = next((h for h in reversed(d["alias_history"])
                     if h["alias"] == alias and h["to"] == m["version"]), None)
        since = "" if last is None else (
            f'<br><span class="muted">since {esc(last["at"][:19])} by {esc(last["actor"])}: '
            f'{esc(last["reason"])}</span>')
        return (f'<div class="card">{esc(alias)}<br><b>v{m["version"]}</b> '
                f'{esc(m["algorithm"])}<br>holdout {esc(metric)} '
                f'{num(holdout.get(m["version"]))}{since}</div>')

    monitoring = (link(rep + "monitoring.html", "Monitoring page", new_tab=True)
                  if d["monitoring_exists"] else
                  '<span class="muted">Monitoring page not written yet</span>')
    head = (f'<p><a href="../">All problems</a> · {monitoring}</p>'
            f"<h1>Batchloop: {esc(p)}</h1><p>{esc(d['spec']['description'])}</p>"
            f"<p class=\"muted\">{esc(d['spec'].get('target', 'binary'))} target; primary "
            f"metric {esc(metric)} ({esc(d['spec'].get('direction', 'maximize'))})</p>"
            f'<div class="cards">{card("champion")}{card("challenger")}</div>')

    def best_validation(m: dict[str, Any]) -> float | None:
        scores = [v.get(metric) for v in (m["metrics"].get("validation") or {}).values()]
        best = min if d["spec"].get("direction") == "minimize" else max
        return best((s for s in scores if s is not None), default=None)

    models = [[f"v{m['version']}", "".join(f'<span class="tag">{esc(a)}</span>'
                                           for a in m["aliases"]),
               esc(m["algorithm"]), esc(", ".join(f"{k}={v}" for k, v in
                                                  m["hyperparameters"].items()
                                                  if k != "algorithm")),
               esc(", ".join(m["training_batch_ids"])),
               f'<span class="num">{m["train_rows"]}</span>', num(best_validation(m)),
               num(holdout.get(m["version"])), esc(m["created_at"][:19])]
              for m in d["models"]]
    moves = [[esc(h["at"][:19]), esc(h["alias"]),
              f"{_version(h['from'])} → {_version(h['to'])}", esc(h["action"]), esc(h["actor"]),
              esc(h["reason"]), "—" if h["evaluation_id"] is None else
              link(cards.get(h["evaluation_id"]), f"#{h['evaluation_id']} run card", True)]
             for h in reversed(d["alias_history"])]
    evals = [[f"#{e['id']}", f"v{e['contender']}", _version(e["champion"]),
              esc(", ".join(e["holdout"])) + f' <span class="muted">({e["holdout_rows"]} rows'
              + (", shadow" if e.get("method") == "shadow" else "") + ")</span>",
              num(e["contender_value"]), num(e["champion_value"]), num(e["delta"]),
              "—" if e["ci"][0] is None else f"{num(e['ci'][0])} … {num(e['ci'][1])}",
              _outcome(e["outcome"]), esc(e["reason"]), link(cards[e["id"]], "run card", True)]
             for e in reversed(d["evaluations"])]
    preds: dict[str, list[str]] = {}
    for key, n in d["predictions"].items():
        batch, _, version = key.rpartition("@")
        preds.setdefault(batch, []).append(f"{version}: {n}")
    drift: dict[str, list[str]] = {}
    for r in d["drift"]:
        drift.setdefault(r["batch_id"], []).append(link(
            report_href(r["html"], home, "../reports/"),
            f"v{r['model_version']} {r['drift_share']:.2f}"
            + (" DRIFT" if r["dataset_drift"] else ""), True))
    batches = [[esc(b["batch_id"]), esc(b["state"]), f'<span class="num">{b["rows"]}</span>',
                f'<span class="num">{b["quarantined"]}</span>',
                num(b["quarantined"] / b["rows"] if b["rows"] else None, 3),
                esc(", ".join(f"v{v}" for v in trained_on.get(b["batch_id"], []))),
                esc("; ".join(preds.get(b["batch_id"], []))),
                " ".join(drift.get(b["batch_id"], [])) or "—", esc(b["reason"])]
               for b in reversed(d["batches"])]
    lineage = [[f"v{li['version']}",
                "<br>".join(f"{esc(b['batch_id'])} <span class=\"muted\">{b['rows']} rows, "
                            f"sha256 {esc(b['sha256'][:12])}</span>"
                            for b in li["training_batches"]),
                esc(li["dataset"]),
                "<br>".join(link(cards.get(e["id"]), f"#{e['id']}", True) + " on "
                            + esc(", ".join(e["holdout"])) + ": " + _outcome(e["outcome"])
                            for e in li["evaluations"]) or "—",
                "<br>".join(f"{esc(h['alias'])} {esc(h['action'])} {esc(h['at'][:19])}"
                            for h in li["alias_history"]) or "—"]
               for li in d["lineage"]]
    requests = [[f"#{r['id']}", esc(r["batch_id"]), esc("+".join(r["triggers"])),
                 esc(r["state"]), _version(r["resolved_by_version"]), esc(r["reason"])]
                for r in reversed(d["retrain_requests"])]
    perf = [[esc(r["batch_id"]), f"v{r['model_version']}", esc(r["role"]), num(r["value"]),
             f"{r['labelled_rows']}/{r['predicted_rows']}"] for r in reversed(d["performance"])]
    body = "".join([
        head, "<h2>Model versions</h2>",
        table(["Version", "Aliases", "Algorithm", "Hyperparameters", "Trained on", "Train rows",
               f"Validation {metric} (best)", f"Holdout {metric}", "Created (UTC)"], models,
              "No model versions yet."),
        "<h2>Alias history (who, when, why)</h2>",
        table(["When (UTC)", "Alias", "Move", "Action", "Who", "Why", "Evaluation"], moves,
              "No alias moves yet."),
        "<h2>Evaluations (contender vs champion on the frozen holdout)</h2>",
        table(["#", "Contender", "Champion", "Holdout", f"Contender {metric}",
               f"Champion {metric}", "Delta", "CI", "Outcome", "Reason", "Run card"], evals,
              "No evaluations yet."),
        "<h2>Batches</h2>",
        table(["Batch", "State", "Rows read", "Quarantined", "Quarantine rate", "Trained",
               "Predictions", "Drift vs model", "Reason"], batches, "No batches yet."),
        f"<h2>Lineage (newest {MAX_LINEAGE} versions)</h2>",
        table(["Version", "Trained on (batch, rows, SHA-256)", "Dataset",
               "Evaluations (holdout: outcome)", "Alias moves"], lineage,
              "No model versions yet."),
        "<h2>Retrain requests</h2>",
        table(["#", "Batch", "Triggers", "State", "Answered by", "Reason"], requests,
              "No retrain requests yet."),
        "<h2>Performance on matured labels</h2>",
        table(["Batch", "Version", "Role", metric, "Labelled / predicted"], perf,
              "No matured labels yet.")])
    return page(f"Batchloop: {p}", body)
