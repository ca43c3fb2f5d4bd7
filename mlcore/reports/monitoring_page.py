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
``MAX_BYTES``.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from mlcore.config import Settings
from mlcore.problems import NAME_PATTERN, get_problem
from mlcore.reports.drift_report import links as page_links
from mlcore.reports.drift_report import nav_html
from mlcore.reports.runcard import (
    CSS,
    Html,
    as_text,
    figures,
    fmt,
    jsonable,
    message,
    num,
    table,
    tex_safe,
    write_atomic,
)

MAX_BYTES = 2_000_000
MAX_BATCHES = 150  # newest batches on the page (plots and table)
MAX_DECISIONS = 300  # newest decisions on the page (timeline and log)
MAX_TEXT = 500  # reasons are cut to this many characters
MAX_TICKS = 25  # batch labels on an x axis
EVALUATION_KINDS = ("promote", "keep", "reject")
COLORS = {"champion": "#1f77b4", "challenger": "#ff7f0e", "contender": "#2ca02c",
          "holdout_champion": "#7f7f7f", "drift": "#c44e52", "share": "#4c72b0",
          "rows": "#4c72b0", "quarantine": "#c44e52", "coverage": "#55a868", "matured": "#333333",
          "promote": "#2e7d32", "keep": "#b08900", "reject": "#c62828", "other": "#7f7f7f",
          "retrain": "#1f77b4", "rollback": "#8e24aa", "alias": "#555555",
          "estimate": "#9467bd"}
CONFIDENCE_LABEL = "95%"  # mlcore.estimation.CONFIDENCE (not imported: it is a heavy module)
PAGE_CSS = CSS + """body{max-width:1200px}td,th{font-size:90%}.empty{padding:1em;background:#f3f3f3;
border-radius:6px}.notes{color:#555;font-size:90%}"""
NOTES = (
    "Batches are ordered by event time (earliest event, then when the batch was recorded). "
    "Rows read are every row of the batch's source file; quarantined rows are among them, so the "
    "quarantine rate is quarantined / rows read and the published rows are rows read minus "
    "quarantined. The primary metric is computed on rows whose label has matured; a gap means "
    "too few matured labels. Label coverage is labelled rows / predicted rows of the champion's "
    "performance report (the challenger's when the champion has none). The estimated metric is "
    "computed when a batch is scored, from the model's own outputs calibrated on its holdout "
    "(CBPE for classifiers, DLE for regression); its interval is the sampling error of the batch "
    "and of the calibration; a gap means it was not estimated (mlcore performance says why). "
    "Retrains and promotions are drawn just after the newest batch their version was trained or "
    "judged on. Times are UTC."
)


@dataclass(frozen=True)
class MonitoringPage:
    """Where the monitoring page was written and its size (``bytes``: the HTML page alone)."""

    path: Path
    json_path: Path
    bytes: int


# --- reading the store ---------------------------------------------------------------------------

def _utc(value: datetime | None) -> datetime | None:
    """A stored time as aware UTC (SQLite hands back naive datetimes: they are UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if (t := _utc(value)) is None else t.isoformat()


def _clip(text: Any) -> str | None:
    """A reason for the page: at most ``MAX_TEXT`` characters."""
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "\u2026"


def _ratio(part: Any, whole: Any) -> float | None:
    return part / whole if isinstance(part, int) and isinstance(whole, int) and whole > 0 else None


def _href(uri: str | None, base: Path, home: Path) -> str | None:
    """A link to a file the stages wrote: relative to ``base`` for files under ``home`` (the page
    keeps working when the home is moved or served), else a ``file:`` URI; http(s) as given;
    anything else (another scheme, a relative path) gets no link."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme in {"http", "https"}:
        return uri
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme:
        return None
    else:
        path = Path(uri)
    if not path.is_absolute():
        return None
    if path.resolve().is_relative_to(home.resolve()):
        return quote(os.path.relpath(path.resolve(), base.resolve()), safe="/=")
    return path.as_uri()


def _drift_extras(details: Any) -> dict[str, Any]:
    """Prediction drift and segment counts from a drift report's ``details`` when present.

    Read defensively: ``details["prediction"]`` may be a score or a dict with ``score`` and
    ``drifted``; ``details["segments"]`` a list (or mapping) of dicts with ``drifted``."""
    details = details if isinstance(details, dict) else {}
    pred = details.get("prediction")
    score, drifted = num(pred), None
    if isinstance(pred, dict):
        score = next((v for k in ("score", "drift_score", "distance", "value")
                      if (v := num(pred.get(k))) is not None), None)
        flag = pred.get("drifted", pred.get("drift"))
        drifted = flag if isinstance(flag, bool) else None
    segments = details.get("segments")
    items = list(segments.values()) if isinstance(segments, dict) else segments
    items = [s for s in items if isinstance(s, dict)] if isinstance(items, list) else []
    return {"prediction_drift": score, "prediction_drifted": drifted,
            "segments": len(items) or None,
            "segments_drifted": sum(bool(s.get("drifted", s.get("dataset_drift")))
                                    for s in items) if items else None}


def _batches(s: Any, problem: str, links: Any) -> list[dict[str, Any]]:
    """One record per batch (manifest, newest drift report, newest report per role), ordered by
    event time; batches known only from reports come last."""
    from sqlalchemy import select

    from mlcore.store.models import Batch, DriftReport, PerformanceEstimate, PerformanceReport

    records: dict[str, dict[str, Any]] = {}
    order: dict[str, tuple[Any, ...]] = {}
    far = datetime.max.replace(tzinfo=UTC)

    def record(batch_id: str, manifest: Any = None, created: datetime | None = None,
               ) -> dict[str, Any]:
        if batch_id not in records:
            records[batch_id] = {"batch_id": batch_id, **dict.fromkeys(
                ("state", "event_time_min", "event_time_max", "created_at", "rows",
                 "quarantined", "published_rows", "quarantine_rate", "drift", "label_coverage")),
                "performance": {"champion": None, "challenger": None},
                "estimate": {"champion": None, "challenger": None}}
            order[batch_id] = (1, _utc(created) or far, _utc(created) or far, batch_id)
        if manifest is not None:
            read, bad = manifest.row_count, manifest.quarantine_count or 0
            records[batch_id].update(
                state=manifest.state, event_time_min=_iso(manifest.event_time_min),
                event_time_max=_iso(manifest.event_time_max), created_at=_iso(manifest.created_at),
                rows=read, quarantined=bad, published_rows=read - bad,
                quarantine_rate=_ratio(bad, read))
            order[batch_id] = (0, _utc(manifest.event_time_min) or far,
                               _utc(manifest.created_at) or far, batch_id)
        return records[batch_id]

    for b in s.scalars(select(Batch).where(Batch.problem == problem)):
        record(b.batch_id, manifest=b)

    for d in s.scalars(select(DriftReport).where(DriftReport.problem == problem)
                       .order_by(DriftReport.created_at, DriftReport.id)):  # newest wins
        record(d.batch_id, created=d.created_at)["drift"] = {
            "model_version": d.model_version, "drift_share": num(d.drift_share),
            "dataset_drift": bool(d.dataset_drift), "drifted_columns": list(d.drifted_columns),
            "report_uri": d.html_uri, "report_href": links(d.html_uri),
            **_drift_extras(d.details)}
    for p in s.scalars(select(PerformanceReport).where(PerformanceReport.problem == problem)
                       .order_by(PerformanceReport.created_at, PerformanceReport.id)):
        role = p.role if p.role in ("champion", "challenger") else "challenger"
        record(p.batch_id, created=p.created_at)["performance"][role] = {
            "model_version": p.model_version, "metric": p.metric, "value": num(p.value),
            "predicted_rows": p.predicted_rows, "matured_rows": p.matured_rows,
            "labelled_rows": p.labelled_rows,
            "label_coverage": _ratio(p.labelled_rows, p.predicted_rows),
            "matured_share": _ratio(p.matured_rows, p.predicted_rows)}
    for e in s.scalars(select(PerformanceEstimate).where(PerformanceEstimate.problem == problem)
                       .order_by(PerformanceEstimate.created_at, PerformanceEstimate.id)):
        role = "champion" if e.role == "champion" else "challenger"
        record(e.batch_id, created=e.created_at)["estimate"][role] = {
            "model_version": e.model_version, "metric": e.metric, "estimate": num(e.estimate),
            "ci_low": num(e.ci_low), "ci_high": num(e.ci_high), "rows": e.rows,
            "method": e.method, "reason": _clip(e.reason), "realized": num(e.realized)}
    for rec in records.values():
        perf = rec["performance"]["champion"] or rec["performance"]["challenger"]
        rec["label_coverage"] = perf and perf["label_coverage"]
    return [records[b] for b in sorted(records, key=order.__getitem__)]


def _evaluation_kind(outcome: str | None, promote: bool) -> str:
    """promote | keep | reject | other, from the outcome's prefix (old rows: from ``promote``)."""
    if outcome is None:
        return "promote" if promote else "keep"
    kind = outcome.split(":")[0].strip()
    return kind if kind in EVALUATION_KINDS else "other"


def _decisions(s: Any, problem: str, links: Any,
               drift_hrefs: dict[str, str | None]) -> list[dict[str, Any]]:
    """Evaluations, retrain requests and alias moves as one log, oldest first."""
    from sqlalchemy import select

    from mlcore.store.models import AliasHistory, Evaluation, RetrainRequest

    out: list[tuple[datetime | None, int, dict[str, Any]]] = []
    cards: dict[int, str | None] = {}
    for e in s.scalars(select(Evaluation).where(Evaluation.problem == problem)):
        cards[e.id] = e.run_card_uri
        kind = _evaluation_kind(e.outcome, bool(e.promote))
        out.append((_utc(e.created_at), 0, {
            "source": "evaluation", "id": e.id, "time": _iso(e.created_at),
            "lane": f"evaluation: {kind}", "kind": kind, "what": e.outcome or kind,
            "contender_version": e.contender_version, "champion_version": e.champion_version,
            "holdout_batch_ids": [str(b) for b in e.holdout_batch_ids or []], "metric": e.metric,
            "contender_metric": num((e.contender_metrics or {}).get(e.metric)),
            "champion_metric": num((e.champion_metrics or {}).get(e.metric)),
            "delta": num(e.delta), "ci_low": num(e.ci_low), "ci_high": num(e.ci_high),
            "promote": bool(e.promote), "reason": _clip(e.reason),
            "run_card_uri": e.run_card_uri, "run_card_href": links(e.run_card_uri)}))
    for r in s.scalars(select(RetrainRequest).where(RetrainRequest.problem == problem)):
        triggers = [str(t) for t in r.triggers or []] or [r.trigger]
        out.append((_utc(r.created_at), 1, {
            "source": "retrain_request", "id": r.id, "time": _iso(r.created_at),
            "lane": f"retrain request: {r.trigger}", "kind": "retrain", "what":
            f"retrain request ({', '.join(triggers)}): {r.state}"
            + (f" (run {r.run_id}): {_clip(r.error)}" if r.state == "failed" else ""),
            "trigger": r.trigger, "triggers": triggers, "batch_id": r.batch_id, "state": r.state,
            "run_id": r.run_id, "error": _clip(r.error),
            "resolved_by_version": r.resolved_by_version, "reason": _clip(r.reason),
            "drift_report_href": drift_hrefs.get(r.batch_id or "") if "drift" in triggers
            else None}))
    for a in s.scalars(select(AliasHistory).where(AliasHistory.problem == problem)):
        kind = "rollback" if a.action == "rollback" else "alias"
        card = cards.get(a.evaluation_id) if a.evaluation_id is not None else None
        out.append((_utc(a.created_at), 2, {
            "source": "alias", "id": a.id, "time": _iso(a.created_at),
            "lane": "rollback" if kind == "rollback" else f"{a.alias}: {a.action}",
            "kind": kind, "what": f"{a.alias} {a.action}", "alias": a.alias,
            "action": a.action, "from_version": a.from_version, "to_version": a.to_version,
            "actor": a.actor, "evaluation_id": a.evaluation_id, "reason": _clip(a.reason),
            "run_card_href": links(card)}))
    far = datetime.max.replace(tzinfo=UTC)
    out.sort(key=lambda x: (x[0] or far, x[1], x[2]["id"]))
    return [d for _, _, d in out]


def _model_events(s: Any, problem: str) -> list[dict[str, Any]]:
    """Retrains (a version registered) and champion moves, each with the batches its version
    was trained and judged on (the timeline places it after the newest of them)."""
    from sqlalchemy import select

    from mlcore.store.models import AliasHistory, ModelVersion

    seen: dict[int, list[str]] = {}
    out = []
    for mv in s.scalars(select(ModelVersion).where(ModelVersion.problem == problem)
                        .order_by(ModelVersion.version)):
        held = ((mv.reproducibility or {}).get("dataset") or {}).get("holdout_batches") or []
        seen[mv.version] = [str(b) for b in [*(mv.training_batch_ids or []), *held]]
        out.append({"kind": "retrain", "version": mv.version, "time": _iso(mv.created_at),
                    "batches": seen[mv.version]})
    for a in s.scalars(select(AliasHistory).where(AliasHistory.problem == problem,
                                                  AliasHistory.alias == "champion")
                       .order_by(AliasHistory.created_at, AliasHistory.id)):
        out.append({"kind": "rollback" if a.action == "rollback" else "promotion",
                    "version": a.to_version, "time": _iso(a.created_at),
                    "batches": seen.get(a.to_version, [])})
    return out


def collect(problem: str, settings: Settings) -> dict[str, Any]:
    """Everything the monitoring page shows, as strict-JSON-able data (the ``monitoring.json``).

    Raises:
        ValueError: ``problem`` is not a valid problem name.
        ProblemNotFound: no spec of that name.
    """
    from sqlalchemy import select

    from mlcore.store.models import Alias
    from mlcore.store.session import session_scope

    if not re.match(NAME_PATTERN, problem):
        raise ValueError(f"invalid problem name {problem!r}")
    spec = get_problem(problem, settings.problems_dir)
    base = settings.partition("reports", problem)

    def links(uri: str | None) -> str | None:
        return _href(uri, base, settings.home)

    with session_scope(settings.db_url) as s:
        batches = _batches(s, problem, links)
        drift_hrefs = {b["batch_id"]: (b["drift"] or {}).get("report_href") for b in batches}
        decisions = _decisions(s, problem, links, drift_hrefs)
        model_events = _model_events(s, problem)
        champion = s.scalar(select(Alias.version).where(Alias.problem == problem,
                                                        Alias.alias == "champion"))
    return jsonable({
        "problem": problem, "links": page_links(problem, depth=2),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metric": {"name": spec.metric.name, "direction": spec.metric.direction},
        "drift_threshold": spec.drift.drift_share, "champion_version": champion,
        "notes": NOTES,
        "totals": {"batches": len(batches), "decisions": len(decisions)},
        "batches": batches[-MAX_BATCHES:], "decisions": decisions[-MAX_DECISIONS:],
        "model_events": model_events[-MAX_DECISIONS:]})


# --- plots ---------------------------------------------------------------------------------------

def _nan(value: Any) -> float:
    return v if (v := num(value)) is not None else math.nan


def _batch_axis(ax: Any, ids: list[str]) -> None:
    """Batch IDs as x tick labels, thinned to at most ``MAX_TICKS`` and cut to 16 characters."""
    step = max(1, math.ceil(len(ids) / MAX_TICKS))
    ticks = list(range(0, len(ids), step))
    labels = [tex_safe(ids[i] if len(ids[i]) <= 16 else ids[i][:15] + "\u2026") for i in ticks]
    ax.set_xticks(ticks, labels=labels, rotation=45, ha="right", fontsize="small")
    ax.set_xlim(-0.6, len(ids) - 0.4)
    ax.set_xlabel("batch (event-time order)")


def _legend(ax: Any) -> None:
    ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))


def _event_positions(data: dict[str, Any], ids: list[str]) -> list[tuple[float, str, int]]:
    """(x, kind, version) of each retrain / champion move: just after the newest batch its
    version was trained or judged on (events of versions with no batch shown are left out)."""
    position = {b: i for i, b in enumerate(ids)}
    out = []
    for event in data.get("model_events") or []:
        xs = [position[b] for b in event["batches"] if b in position]
        if xs:
            out.append((max(xs) + (0.3 if event["kind"] == "retrain" else 0.45), event["kind"],
                        event["version"]))
    return out


def _plot_estimates(ax: Any, data: dict[str, Any]) -> None:
    """One timeline: the champion's estimated metric per batch (before labels, with its CI as a
    band and whiskers), the realized metric on matured labels, dataset drift, retrains and
    promotions."""
    batches, metric = data["batches"], data["metric"]["name"]
    ids, xs = [b["batch_id"] for b in batches], list(range(len(batches)))
    est = [b["estimate"]["champion"] or {} for b in batches]
    est = [e if e.get("metric") == metric else {} for e in est]
    value = [_nan(e.get("estimate")) for e in est]
    low, high = [_nan(e.get("ci_low")) for e in est], [_nan(e.get("ci_high")) for e in est]
    real = [_nan(r["value"]) if (r := b["performance"]["champion"]) and r["metric"] == metric
            else math.nan for b in batches]
    if all(math.isnan(v) for v in value + real):
        return message(ax, f"no estimated or realized {metric} yet")
    ax.fill_between(xs, low, high, color=COLORS["estimate"], alpha=0.18, linewidth=0,
                    label=f"{CONFIDENCE_LABEL} interval")
    ax.errorbar(xs, value, yerr=[[v - lo for v, lo in zip(value, low, strict=True)],
                                 [hi - v for v, hi in zip(value, high, strict=True)]],
                marker="o", markersize=4, capsize=3, color=COLORS["estimate"],
                label="champion: estimated (before labels)")
    ax.plot(xs, real, linestyle="none", marker="s", markersize=6, color=COLORS["champion"],
            label="champion: realized (matured labels)")
    for i, b in enumerate(batches):
        if (b["drift"] or {}).get("dataset_drift"):
            ax.axvspan(i - 0.45, i + 0.45, color=COLORS["drift"], alpha=0.12, linewidth=0,
                       label="dataset drift" if "dataset drift" not in _labels(ax) else None)
    styles = {"retrain": (":", COLORS["retrain"], "retrain"),
              "promotion": ("--", COLORS["promote"], "promoted champion"),
              "rollback": ("--", COLORS["rollback"], "rollback")}
    for x, kind, version in _event_positions(data, ids):
        style, color, label = styles[kind]
        ax.axvline(x, linestyle=style, color=color, linewidth=1.2,
                   label=label if label not in _labels(ax) else None)
        top = kind != "retrain"  # retrains labelled at the foot, champion moves at the top
        ax.text(x, 1.0 if top else 0.01, f"v{version}", transform=ax.get_xaxis_transform(),
                color=color, fontsize="x-small", ha="center", va="bottom")
    _batch_axis(ax, ids)
    ax.set_ylabel(tex_safe(f"{metric} ({data['metric']['direction']})"))
    _legend(ax)


def _labels(ax: Any) -> list[str]:
    return list(ax.get_legend_handles_labels()[1])


def _plot_metric(ax: Any, data: dict[str, Any]) -> None:
    """Matured-label metric per batch for champion and challenger, and evaluation holdouts."""
    batches, metric = data["batches"], data["metric"]["name"]
    ids = [b["batch_id"] for b in batches]
    drawn = 0
    for role in ("champion", "challenger"):
        reports = [b["performance"][role] for b in batches]
        values = [_nan(r["value"]) if r and r["metric"] == metric else math.nan
                  for r in reports]
        if any(not math.isnan(v) for v in values):
            ax.plot(range(len(ids)), values, marker="o", markersize=4, color=COLORS[role],
                    label=f"{role} (matured labels)")
            drawn += 1
    position = {b: i for i, b in enumerate(ids)}
    for key, marker, color, label in (
            ("contender_metric", "^", COLORS["contender"], "evaluation: contender (holdout)"),
            ("champion_metric", "v", COLORS["holdout_champion"],
             "evaluation: champion (holdout)")):
        points = [(max(xs), d[key]) for d in data["decisions"]
                  if d["source"] == "evaluation" and d["metric"] == metric
                  and d[key] is not None
                  and (xs := [position[b] for b in d["holdout_batch_ids"] if b in position])]
        if points:
            ax.plot(*zip(*points, strict=True), linestyle="none", marker=marker, markersize=8,
                    color=color, label=label)
            drawn += 1
    if not drawn:
        return message(ax, f"no {metric} yet: no performance reports or evaluations")
    _batch_axis(ax, ids)
    ax.set_ylabel(tex_safe(f"{metric} ({data['metric']['direction']})"))
    _legend(ax)


def _plot_drift(ax: Any, data: dict[str, Any]) -> None:
    """Drift share per batch, the dataset-drift threshold, flagged batches in red."""
    batches = data["batches"]
    shares = [_nan((b["drift"] or {}).get("drift_share")) for b in batches]
    if all(math.isnan(v) for v in shares):
        return message(ax, "no drift reports yet")
    xs = range(len(batches))
    ax.plot(xs, shares, marker="o", markersize=4, color=COLORS["share"], label="drift share")
    flagged = [(i, shares[i]) for i, b in enumerate(batches)
               if (b["drift"] or {}).get("dataset_drift")]
    if flagged:
        ax.plot(*zip(*flagged, strict=True), linestyle="none", marker="o", markersize=9,
                markerfacecolor="none", markeredgewidth=2, color=COLORS["drift"],
                label="dataset drift flagged")
    if (threshold := num(data["drift_threshold"])) is not None:
        ax.axhline(threshold, color=COLORS["drift"], linestyle="--", linewidth=1,
                   label=f"threshold ({threshold:g})")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of features drifted")
    _batch_axis(ax, [b["batch_id"] for b in batches])
    _legend(ax)


def _plot_rows(ax: Any, data: dict[str, Any]) -> None:
    """Published and quarantined rows per batch (stacked bars) and the quarantine rate."""
    batches = data["batches"]
    if all(b["rows"] is None for b in batches):
        return message(ax, "no batch manifests yet")
    xs = range(len(batches))
    published = [b["published_rows"] or 0 for b in batches]
    ax.bar(xs, published, color=COLORS["rows"], label="published rows")
    ax.bar(xs, [b["quarantined"] or 0 for b in batches], bottom=published,
           color=COLORS["quarantine"], label="quarantined rows")
    ax.set_ylabel("rows read")
    _batch_axis(ax, [b["batch_id"] for b in batches])
    rate = ax.twinx()
    rate.plot(xs, [100 * _nan(b["quarantine_rate"]) for b in batches], marker="o", markersize=4,
              color="black", label="quarantine rate (%)")
    rate.set_ylim(bottom=0)
    rate.set_ylabel("quarantine rate (%)")
    handles = ax.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize="small",
              bbox_to_anchor=(1.12, 1))


def _plot_coverage(ax: Any, data: dict[str, Any]) -> None:
    """Label coverage (labelled / predicted) per batch, with the matured share as points."""
    batches = data["batches"]
    perf = [b["performance"]["champion"] or b["performance"]["challenger"] for b in batches]
    if all(p is None for p in perf):
        return message(ax, "no performance reports yet: no label coverage")
    xs = range(len(batches))
    ax.bar(xs, [_nan(b["label_coverage"]) for b in batches], color=COLORS["coverage"],
           label="labelled / predicted")
    ax.plot(xs, [_nan(p and p["matured_share"]) for p in perf], linestyle="none", marker="_",
            markersize=12, markeredgewidth=2, color=COLORS["matured"],
            label="matured / predicted")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of predicted rows")
    _batch_axis(ax, [b["batch_id"] for b in batches])
    _legend(ax)


def _lane_order(lane: str) -> tuple[int, str]:
    """Evaluation outcomes, then retrain requests, then alias moves, rollbacks last."""
    prefixes = ("evaluation: promote", "evaluation: keep", "evaluation: reject", "evaluation",
                "retrain request")
    if lane == "rollback":
        return len(prefixes) + 1, lane
    return next((i for i, p in enumerate(prefixes) if lane.startswith(p)), len(prefixes)), lane


def _plot_timeline(ax: Any, data: dict[str, Any]) -> None:
    """One lane per kind of decision (retrain requests by trigger), markers at their times."""
    from matplotlib import dates

    points = []
    for d in data["decisions"]:
        if d["time"] is None:
            continue
        lanes = ([f"retrain request: {t}" for t in d["triggers"]]
                 if d["source"] == "retrain_request" else [d["lane"]])
        points += [(lane, dates.date2num(datetime.fromisoformat(d["time"])), d["kind"])
                   for lane in lanes]
    if not points:
        return message(ax, "no decisions yet")
    lanes = sorted({p[0] for p in points}, key=_lane_order)
    row = {lane: i for i, lane in enumerate(lanes)}
    for kind in dict.fromkeys(p[2] for p in points):
        mine = [(x, row[lane]) for lane, x, k in points if k == kind]
        ax.plot(*zip(*mine, strict=True), linestyle="none", marker="D", markersize=7,
                color=COLORS.get(kind, COLORS["other"]))
    ax.set_yticks(range(len(lanes)), labels=[tex_safe(lane) for lane in lanes],
                  fontsize="small")
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.invert_yaxis()
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    pad = max((high - low) * 0.05, 1 / 1440)  # at least a minute either side
    ax.set_xlim(low - pad, high + pad)
    locator = dates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("decision time (UTC)")
    ax.grid(axis="y", color="#eeeeee")


def _figures(data: dict[str, Any]) -> list[str]:
    """The six plots as inline SVG strings."""
    lanes = {d["lane"] for d in data["decisions"]} | {
        f"retrain request: {t}" for d in data["decisions"] for t in d.get("triggers") or []}
    return figures([(_plot_estimates, (7.5, 3.2)), (_plot_metric, (7.5, 3.0)),
                    (_plot_drift, (7.5, 2.8)),
                    (_plot_rows, (7.5, 2.8)), (_plot_coverage, (7.5, 2.6)),
                    (_plot_timeline, (7.5, 0.35 * len(lanes) + 1.2))], data)


# --- page ----------------------------------------------------------------------------------------

def _link(href: str | None, label: str) -> Html | None:
    return None if href is None else Html(f'<a href="{html.escape(href)}">{html.escape(label)}</a>')


def _links(*pairs: tuple[str | None, str]) -> Html | None:
    parts = [link for href, label in pairs if (link := _link(href, label)) is not None]
    return Html(" ".join(parts)) if parts else None


def _pct(value: Any) -> str | None:
    return None if (v := num(value)) is None else f"{100 * v:.1f}%"


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
    return table(headers, rows, classes)


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
    return table(headers, rows, classes)


def _render_html(data: dict[str, Any]) -> str:
    """The page: header, six plots, two tables (or a note when there is nothing yet)."""
    problem, totals = data["problem"], data["totals"]
    metric = data["metric"]
    champion = data["champion_version"]
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Monitoring: {fmt(problem)}</title><style>{PAGE_CSS}</style></head><body>"
            f"{nav_html(problem, data.get('links'))}"
            f"<h1>Monitoring: {fmt(problem)}</h1><p>generated {fmt(data['generated_at'])}; "
            f"primary metric {fmt(metric['name'])} ({fmt(metric['direction'])}); "
            f"dataset-drift threshold {fmt(data['drift_threshold'])}; current champion "
            f"{fmt(f'v{champion}' if champion is not None else 'none')}; data: "
            f'<a href="monitoring.json">monitoring.json</a></p>')
    if not totals["batches"] and not totals["decisions"]:
        return (head + f'<p class="empty">No monitoring data yet for {fmt(problem)}: the '
                "metadata store has no batches, drift or performance reports, evaluations, "
                "retrain requests or alias moves for it.</p></body></html>\n")
    shown_b, shown_d = len(data["batches"]), len(data["decisions"])
    plots = _figures(data)
    titles = [f"Performance timeline: {metric['name']} estimated before labels (CBPE/DLE, "
              "with its interval) and realized, dataset drift, retrains and promotions",
              f"Primary metric ({metric['name']}) over batches", "Drift share per batch",
              "Rows and quarantine rate per batch", "Label coverage per batch",
              "Decisions over time"]
    body = "".join(f"<h3>{fmt(t)}</h3><figure>{p}</figure>"
                   for t, p in zip(titles, plots, strict=True))
    return (head + f"<p>{shown_b} of {totals['batches']} batches and {shown_d} of "
            f"{totals['decisions']} decisions shown (the newest).</p>"
            f'<p class="notes">{fmt(data["notes"])}</p>{body}'
            f"<h3>Batches</h3>{_batch_table(data)}"
            f"<h3>Decision log (newest first)</h3>{_decision_table(data)}</body></html>\n")


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
    out = settings.partition("reports", problem)
    out.mkdir(parents=True, exist_ok=True)
    json_path, path = out / "monitoring.json", out / "monitoring.html"
    write_atomic(json_path, json_bytes)
    write_atomic(path, html_bytes)
    return MonitoringPage(path=path, json_path=json_path, bytes=len(html_bytes))
