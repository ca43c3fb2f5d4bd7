"""The "needs attention" panel of a problem: what an operator must look at now.

Six kinds, each with where to look and what to read:

* failed runs of the problem's DAGs not answered by a later successful run of the same DAG,
  and task instances waiting to retry (Airflow's metadata DB, ``ui_airflow``), each with its
  journaled alert (error, runbook section) when there is one;
* published batches missing a stage (not materialized, not scored by the champion, not
  drift-checked against it: ``mlcore.reporting.missing_stages``, the backfill planner's own
  definition), each with a re-run button for users who may trigger DAGs;
* retrain requests pending longer than ``BATCHLOOP_STALLED_REQUEST_HOURS`` (default 6);
* paused stage DAGs (asset events for a paused consumer are dropped);
* alerts journaled in the last ``BATCHLOOP_ALERT_DAYS`` days (default 7) under
  ``<MLCORE_HOME>/alerts``, each linking its RUNBOOK section;
* online ingestion's findings (``stream_health``: lag or dead letters over the spec's
  thresholds, rejected segments, the stream engine unreachable) for a streamed problem.

Imported only inside request handlers.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchloop_airflow.ui.page import when
from mlcore.reports.html import esc, link

log = logging.getLogger(__name__)
MAX_ALERTS = 10


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def recent_alerts(home: Path, problem: str, days: float | None = None) -> list[dict[str, Any]]:
    """The problem's journaled alerts of the last ``days`` days, newest first (at most
    ``MAX_ALERTS``). Unreadable entries are skipped."""
    folder = home / "alerts"
    days = _env_float("BATCHLOOP_ALERT_DAYS", 7) if days is None else days
    cutoff = datetime.now(UTC).timestamp() - days * 86400
    out = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            mtime = path.stat().st_mtime
            if mtime < cutoff:
                continue
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and entry.get("problem") == problem:
            entry["at"] = (entry.get("completed_at") or entry.get("claimed_at")
                           or datetime.fromtimestamp(mtime, UTC).isoformat())
            out.append(entry)
    return sorted(out, key=lambda e: str(e["at"]), reverse=True)[:MAX_ALERTS]


def attention_data(spec: Any, settings: Any) -> dict[str, Any]:
    """Everything the panel shows, as plain data."""
    from batchloop_airflow.alerting.payload import runbook_link, stage_anchor
    from batchloop_airflow.ui.airflow_api import PIPELINE_STAGES, attention_runs, problem_dags
    from batchloop_airflow.ui.stream import stream_data
    from mlcore.reporting import missing_stages, stalled_requests

    alerts = recent_alerts(settings.home, spec.name)
    by_run: dict[tuple[str, str], dict[str, Any]] = {}
    for a in alerts:
        by_run.setdefault((str(a.get("dag_id")), str(a.get("run_id"))), a)
    try:
        runs = attention_runs(spec.name)
        dags = problem_dags(spec.name)
        airflow_error = None
    except Exception as exc:  # noqa: BLE001 - the rest of the panel still helps
        log.warning("Batchloop view: Airflow metadata unreadable: %s", exc)
        runs, dags, airflow_error = {"failed": [], "retrying": []}, {}, type(exc).__name__
    for run in runs["failed"]:
        alert = by_run.get((run["dag_id"], run["run_id"]))
        run["alert"] = alert
        run["runbook"] = (alert or {}).get("runbook") or runbook_link(stage_anchor(run["stage"]))
    paused = sorted(d for d, info in dags.items() if info["paused"] and not info["stale"]
                    and info["stage"] in PIPELINE_STAGES)
    hours = _env_float("BATCHLOOP_STALLED_REQUEST_HOURS", 6)
    return {"failed": runs["failed"], "retrying": runs["retrying"],
            "missing": missing_stages(spec.name, settings),
            "stalled": stalled_requests(spec.name, settings.db_url, hours),
            "stalled_hours": hours, "paused": paused, "alerts": alerts,
            "airflow_error": airflow_error, "dags": sorted(dags),
            "stream": stream_data(spec, settings)}


def count(d: dict[str, Any]) -> int:
    """How many things need attention."""
    return (len(d["failed"]) + len(d["retrying"]) + len(d["missing"]) + len(d["stalled"])
            + len(d["paused"]) + len(d["alerts"]) + len(_stream_findings(d)))


def _stream_findings(d: dict[str, Any]) -> list[dict[str, str]]:
    return list((d.get("stream") or {}).get("findings") or [])


def render_attention(d: dict[str, Any], base: str, rerun_form: Any = None) -> str:
    """The panel. ``base`` is the relative path to the view's root (the Airflow UI's root is
    one level up); ``rerun_form(batch_id, stage)`` renders a re-run button, or None when the
    user may not trigger DAGs."""
    from batchloop_airflow.alerting.payload import KIND_ANCHORS, KIND_STREAM, runbook_link
    from batchloop_airflow.ui.airflow_api import run_path
    from batchloop_airflow.ui.static import runbook_href

    airflow = base + "../"
    items: list[str] = []
    for r in d["failed"]:
        alert = r.get("alert") or {}
        tasks = ", ".join(f"{t['task_id']} (try {t['try_number']})" for t in r["tasks"])
        error = alert.get("error") or "no alert journaled for this run"
        items.append(
            f'<li class="failed"><b class="bad">FAILED</b> {esc(r["stage"])} '
            f'{link(airflow + run_path(r["dag_id"], r["run_id"]), r["run_id"])} '
            f'{when(r["at"])}' + (f' batch {esc(r["batch_id"])}' if r["batch_id"] else "")
            + (f" — {esc(tasks)}" if tasks else "")
            + f'<br><span class="muted">{esc(str(error)[:400])}</span> · '
            + link(runbook_href(r["runbook"], base), "runbook section", True) + "</li>")
    for r in d["retrying"]:
        items.append(
            f'<li><b class="warn">RETRYING</b> {esc(r["stage"])} {esc(r["task_id"])} '
            f'(try {r["try_number"]}) in '
            f'{link(airflow + run_path(r["dag_id"], r["run_id"]), r["run_id"])}</li>')
    for batch_id, stages in sorted(d["missing"].items()):
        buttons = " ".join(rerun_form(batch_id, s) for s in stages) if rerun_form else ""
        items.append(f'<li><b class="warn">MISSING STAGE</b> batch {esc(batch_id)}: not '
                     + esc(", not ".join({"materialize": "materialized",
                                          "score": "scored by the champion",
                                          "monitor": "drift-checked"}[s] for s in stages))
                     + f" (or still running) {buttons}</li>")
    for r in d["stalled"]:
        items.append(f'<li><b class="warn">STALLED REQUEST</b> retrain request #{r["id"]} '
                     f'pending for {r["age_hours"]:.0f} h (filed {when(r["created_at"])}, over '
                     f'{d["stalled_hours"]:g} h): {esc(str(r["reason"])[:200])}</li>')
    for dag in d["paused"]:
        items.append(f'<li><b class="warn">PAUSED</b> {link(airflow + "dags/" + dag, dag)}: its '
                     "asset events are dropped while paused; unpause it in Airflow</li>")
    stream_runbook = runbook_href(runbook_link(KIND_ANCHORS[KIND_STREAM]), base)
    for f in _stream_findings(d):
        items.append(f'<li class="stream"><b class="bad">STREAM</b> {esc(f["text"])} · '
                     + link(stream_runbook, "runbook section", True) + "</li>")
    listed = {(r["dag_id"], r["run_id"]) for r in d["failed"]}
    now = {f["code"] for f in _stream_findings(d)}
    for a in d["alerts"]:
        if (a.get("dag_id"), a.get("run_id")) in listed or (
                a.get("kind") == KIND_STREAM and a.get("finding") in now):
            continue  # shown with its failed run or its stream finding above
        run = (link(airflow + run_path(str(a["dag_id"]), str(a["run_id"])), a["run_id"])
               if a.get("dag_id") and a.get("run_id") else "")
        items.append(
            f'<li class="alert"><b class="bad">ALERT</b> {esc(a.get("title") or a.get("kind"))} '
            f'{esc(a.get("stage"))} {run} {when(str(a["at"]))}'
            + (f' batch {esc(a["batch_id"])}' if a.get("batch_id") else "")
            + f'<br><span class="muted">{esc(str(a.get("error") or "")[:400])}</span> · '
            + link(runbook_href(a.get("runbook"), base), "runbook section", True) + "</li>")
    note = ("" if not d["airflow_error"] else
            f'<p class="muted">Airflow\'s metadata could not be read ({esc(d["airflow_error"])})'
            ": runs and paused DAGs are not shown.</p>")
    if not items:
        return (f'<div class="allclear" id="attention"><b class="ok">Nothing needs attention'
                f"</b>: no failed runs, no batch missing a stage, no stalled request, no paused "
                f"stage, no alert in the last days, no stream finding.</div>{note}")
    return (f'<div class="attn" id="attention"><b>Needs attention ({len(items)})</b>'
            f'<ul>{"".join(items)}</ul></div>{note}')
