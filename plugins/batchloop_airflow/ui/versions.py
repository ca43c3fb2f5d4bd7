"""A page per model version and a side-by-side compare of two versions, as MLflow registry users
expect: metrics (validation and every holdout evaluation), guardrail slices by their spec
labels, lineage (training batches with SHA-256, dataset, code and spec hashes), alias history and
links to every run card. Data: ``mlcore.reporting.version_detail`` and ``lineage.model_lineage``.

Imported only inside request handlers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from batchloop_airflow.ui.batches import label, labels
from batchloop_airflow.ui.page import alias_move, num, outcome, page, signed, when
from mlcore.reports.html import esc, html_table, link, report_href


def version_data(spec: Any, version: int, settings: Any) -> dict[str, Any]:
    """``version_detail`` plus the lineage of its training batches.

    Raises:
        ModelNotFound: no such version.
    """
    from mlcore.lineage import model_lineage
    from mlcore.reporting import version_detail

    d = version_detail(spec.name, version, settings.db_url)
    d["lineage"] = model_lineage(spec.name, version, settings.db_url)
    d["metric"] = spec.metric.name
    d["direction"] = spec.metric.direction
    return d


def _holdout(d: dict[str, Any]) -> dict[str, Any] | None:
    """Its latest evaluation as the contender (its holdout figures), or None."""
    mine = [e for e in d["evaluations"] if e["contender"] == d["version"]]
    return mine[-1] if mine else None


def _validation(d: dict[str, Any]) -> dict[str, Any]:
    val = (d["metrics"] or {}).get("validation") or {}
    scores = [v for v in val.values() if isinstance(v, dict)]
    best = min if d["direction"] == "minimize" else max
    return best(scores, key=lambda v: v.get(d["metric"]) or 0, default={}) if scores else {}


def _evals(d: dict[str, Any], home: Path, rep: str, vbase: str) -> str:
    rows = [[f"#{e['id']}", when(e["at"]),
             link(vbase + str(e["contender"]), f"v{e['contender']}") + " vs "
             + ("—" if e["champion"] is None else
                link(vbase + str(e["champion"]), f"v{e['champion']}")),
             esc(", ".join(e["holdout"])) + f' <span class="muted">({e["holdout_rows"]} rows)'
             "</span>",
             num(e["contender_metrics"].get(e["metric"])),
             num((e["champion_metrics"] or {}).get(e["metric"])), signed(e["delta"]),
             outcome(e["outcome"], e["method"]), esc(e["reason"]),
             link(report_href(e["run_card"], home, rep), "run card", True)]
            for e in reversed(d["evaluations"])]
    return html_table(["#", "When (UTC)", "Contender vs champion", "Holdout", "Contender",
                       "Champion", "Delta", "Outcome", "Reason", "Run card"], rows,
                      "Never evaluated.")


def _slices(e: dict[str, Any] | None, names: dict[str, str]) -> str:
    if not e or not e["slices"]:
        return '<p class="muted">No guardrail slices recorded.</p>'
    rows = [[label(s["column"], names) + f" = {esc(s['value'])}",
             f'<span class="num">{s["rows"]}</span>', num(s["contender"]), num(s["champion"]),
             signed(s["delta"]),
             "—" if s["ok"] is None else ('<span class="ok">ok</span>' if s["ok"] else
                                          '<b class="bad">FAIL</b>'), esc(s["note"])]
            for s in e["slices"]]
    return (f'<p class="muted">Evaluation #{e["id"]} on {esc(", ".join(e["holdout"]))}</p>'
            + html_table(["Slice", "Rows", "Contender", "Champion", "Delta", "Guardrail",
                          "Note"], rows, "No slices."))


def _facts(d: dict[str, Any]) -> list[tuple[str, str]]:
    li, h, val = d["lineage"], _holdout(d), _validation(d)
    return [
        ("Aliases", " ".join(f'<span class="tag">{esc(a)}</span>' for a in d["aliases"])
         or "—"),
        ("Algorithm", esc(d["algorithm"])),
        ("Hyperparameters", esc(", ".join(f"{k}={v}" for k, v in d["hyperparameters"].items()
                                          if k != "algorithm"))),
        (f"Validation {d['metric']} (best)", num(val.get(d["metric"]))),
        (f"Holdout {d['metric']} (latest)", "—" if h is None else
         num(h["contender_metrics"].get(d["metric"])) + f' <span class="muted">on '
         f'{esc(", ".join(h["holdout"]))}, #{h["id"]}</span>'),
        ("Trained on", "<br>".join(
            f"{esc(b['batch_id'])} <span class=\"muted\">{b['rows']} rows, sha256 "
            f"<code>{esc(b['sha256'][:16])}</code></span>" for b in li["training_batches"])
         or esc(", ".join(d["training_batch_ids"]))),
        ("Train rows", f'<span class="num">{d["train_rows"]}</span>'),
        ("Dataset", esc(li.get("dataset"))),
        ("Data hash", f"<code>{esc(d['data_hash'][:16])}</code>"),
        ("Artifact SHA-256", f"<code>{esc(d['artifact_sha256'][:16])}</code>"),
        ("Code version", f"<code>{esc(d['code_version'])}</code>"),
        ("Spec hash", f"<code>{esc(d['spec_hash'][:16])}</code>"),
        ("Created (UTC)", when(d["created_at"])),
        ("Scored batches", esc(", ".join(d["scored_batches"]))),
        ("Alias moves", "<br>".join(f"{alias_move(m, d['version'])} by {esc(m['actor'])} "
                                    f"{when(m['at'])}: {esc(m['reason'])}"
                                    for m in d["alias_history"]) or "—"),
    ]


def render_version(d: dict[str, Any], spec: Any, home: Path) -> str:
    """The page of one version (``d`` from ``version_data``); URL
    ``problems/<p>/versions/<n>``."""
    p = d["problem"]
    base, rep, vbase = "../../../", "../../../reports/", ""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in _facts(d))
    body = (f'<p><a href="{base}">All problems</a> · <a href="../../{quote(p, safe="")}">'
            f"{esc(p)}</a></p><h1>{esc(p)} v{d['version']}</h1>"
            f"<table>{rows}</table><h2>Evaluations (this version as contender or champion)</h2>"
            + _evals(d, home, rep, vbase)
            + "<h2>Guardrail slices (latest evaluation as contender)</h2>"
            + _slices(_holdout(d), labels(spec)))
    return page(f"Batchloop: {p} v{d['version']}", body, base)


def render_compare(a: dict[str, Any], b: dict[str, Any], spec: Any, home: Path) -> str:
    """Two versions side by side; URL ``problems/<p>/compare?a=<n>&b=<n>``. When one evaluation
    judged them against each other, its numbers (delta, CI, slices) lead the page."""
    p, metric = a["problem"], a["metric"]
    base, rep, vbase = "../../", "../../reports/", "versions/"
    head = [esc(f"v{a['version']}"), esc(f"v{b['version']}")]
    fa, fb = dict(_facts(a)), dict(_facts(b))
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{fa[k]}</td><td>{fb[k]}</td></tr>" for k in fa)
    ha, hb = _holdout(a), _holdout(b)
    diff = ""
    va = None if ha is None else ha["contender_metrics"].get(metric)
    vb = None if hb is None else hb["contender_metrics"].get(metric)
    if va is not None and vb is not None:
        diff = (f"<p>Latest holdout {esc(metric)}: v{a['version']} {num(va)} vs "
                f"v{b['version']} {num(vb)} (difference {signed(va - vb)}; holdouts "
                f"{esc(', '.join(ha['holdout']))} / {esc(', '.join(hb['holdout']))})</p>")
    pair = {a["version"], b["version"]}
    head_to_head = [e for e in a["evaluations"] if {e["contender"], e["champion"]} == pair]
    h2h = ""
    if head_to_head:
        e = head_to_head[-1]
        h2h = (f"<h2>Head to head: evaluation #{e['id']}</h2><p>v{e['contender']} vs "
               f"v{e['champion']} on {esc(', '.join(e['holdout']))} ({e['holdout_rows']} rows): "
               f"{outcome(e['outcome'], e['method'])} — delta {signed(e['delta'])}"
               + ("" if e["ci"][0] is None else
                  f", CI {signed(e['ci'][0])} … {signed(e['ci'][1])}")
               + f" · {link(report_href(e['run_card'], home, rep), 'run card', True)}</p>"
               + _slices(e, labels(spec)))
    body = (f'<p><a href="{base}">All problems</a> · <a href="../{quote(p, safe="")}">'
            f"{esc(p)}</a></p><h1>{esc(p)}: v{a['version']} vs v{b['version']}</h1>{diff}"
            f'<table class="compare"><thead><tr><th></th><th>{head[0]}</th><th>{head[1]}</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>{h2h}"
            + "".join(f"<h2>Guardrail slices of v{x['version']} (its latest evaluation)</h2>"
                      + _slices(_holdout(x), labels(spec)) for x in (a, b) if not h2h)
            + f"<h2>Evaluations of v{a['version']}</h2>" + _evals(a, home, rep, vbase)
            + f"<h2>Evaluations of v{b['version']}</h2>" + _evals(b, home, rep, vbase))
    return page(f"Batchloop: {p} v{a['version']} vs v{b['version']}", body, base)
