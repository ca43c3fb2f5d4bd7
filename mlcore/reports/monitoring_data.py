"""Monitoring data: everything the monitoring page shows, read from the metadata store as
strict-JSON-able data (the ``monitoring.json``): per batch in event-time order its manifest, newest
drift report and newest performance report and estimate per role; the decision log (evaluations,
retrain requests, alias moves); retrains and champion moves. Only the newest ``MAX_BATCHES``
batches and ``MAX_DECISIONS`` decisions are kept, and reasons are cut to ``MAX_TEXT`` characters.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from mlcore.config import Settings
from mlcore.problems import NAME_PATTERN, get_problem
from mlcore.reports.html import finite, jsonable
from mlcore.reports.html import links as page_links

MAX_BATCHES = 150  # newest batches on the page (plots and table)
MAX_DECISIONS = 300  # newest decisions on the page (timeline and log)
MAX_TEXT = 500  # reasons are cut to this many characters
EVALUATION_KINDS = ("promote", "keep", "reject")
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
    score, drifted = finite(pred), None
    if isinstance(pred, dict):
        score = next((v for k in ("score", "drift_score", "distance", "value")
                      if (v := finite(pred.get(k))) is not None), None)
        flag = pred.get("drifted", pred.get("drift"))
        drifted = flag if isinstance(flag, bool) else None
    segments = details.get("segments")
    items = list(segments.values()) if isinstance(segments, dict) else segments
    items = [s for s in items if isinstance(s, dict)] if isinstance(items, list) else []
    return {"prediction_drift": score, "prediction_drifted": drifted,
            "segments": len(items) or None,
            "segments_drifted": sum(bool(s.get("drifted", s.get("dataset_drift")))
                                    for s in items) if items else None}


class _BatchRecords:
    """One record per batch, created on first mention, with its event-time sort key: batches
    with a manifest by earliest event then recording time; batches known only from reports
    last, by when they were first reported."""

    FAR = datetime.max.replace(tzinfo=UTC)

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.order: dict[str, tuple[Any, ...]] = {}

    def __call__(self, batch_id: str, created: datetime | None = None) -> dict[str, Any]:
        """The batch's record (``created``: when the report that mentions it was written)."""
        if batch_id not in self.records:
            self.records[batch_id] = {"batch_id": batch_id, **dict.fromkeys(
                ("state", "event_time_min", "event_time_max", "created_at", "rows",
                 "quarantined", "published_rows", "quarantine_rate", "drift", "label_coverage")),
                "performance": {"champion": None, "challenger": None},
                "estimate": {"champion": None, "challenger": None}}
            at = _utc(created) or self.FAR
            self.order[batch_id] = (1, at, at, batch_id)
        return self.records[batch_id]

    def manifest(self, m: Any) -> None:
        """Fill a batch's record from its manifest (``Batch`` row)."""
        read, bad = m.row_count, m.quarantine_count or 0
        self(m.batch_id).update(
            state=m.state, event_time_min=_iso(m.event_time_min),
            event_time_max=_iso(m.event_time_max), created_at=_iso(m.created_at),
            rows=read, quarantined=bad, published_rows=read - bad,
            quarantine_rate=_ratio(bad, read))
        self.order[m.batch_id] = (0, _utc(m.event_time_min) or self.FAR,
                                  _utc(m.created_at) or self.FAR, m.batch_id)

    def ordered(self) -> list[dict[str, Any]]:
        """The records in event-time order, each with its label coverage (the champion's
        performance report, else the challenger's)."""
        for rec in self.records.values():
            perf = rec["performance"]["champion"] or rec["performance"]["challenger"]
            rec["label_coverage"] = perf and perf["label_coverage"]
        return [self.records[b] for b in sorted(self.records, key=self.order.__getitem__)]


def _drift_entry(d: Any, links: Any) -> dict[str, Any]:
    return {"model_version": d.model_version, "drift_share": finite(d.drift_share),
            "dataset_drift": bool(d.dataset_drift), "drifted_columns": list(d.drifted_columns),
            "report_uri": d.html_uri, "report_href": links(d.html_uri),
            **_drift_extras(d.details)}


def _performance_entry(p: Any) -> dict[str, Any]:
    return {"model_version": p.model_version, "metric": p.metric, "value": finite(p.value),
            "predicted_rows": p.predicted_rows, "matured_rows": p.matured_rows,
            "labelled_rows": p.labelled_rows,
            "label_coverage": _ratio(p.labelled_rows, p.predicted_rows),
            "matured_share": _ratio(p.matured_rows, p.predicted_rows)}


def _estimate_entry(e: Any) -> dict[str, Any]:
    return {"model_version": e.model_version, "metric": e.metric, "estimate": finite(e.estimate),
            "ci_low": finite(e.ci_low), "ci_high": finite(e.ci_high), "rows": e.rows,
            "method": e.method, "reason": _clip(e.reason), "realized": finite(e.realized)}


def _batches(s: Any, problem: str, links: Any) -> list[dict[str, Any]]:
    """One record per batch (manifest, newest drift report, newest report per role), ordered by
    event time; batches known only from reports come last."""
    from sqlalchemy import select

    from mlcore.store.models import Batch, DriftReport, PerformanceEstimate, PerformanceReport

    record = _BatchRecords()
    for b in s.scalars(select(Batch).where(Batch.problem == problem)):
        record.manifest(b)
    for d in s.scalars(select(DriftReport).where(DriftReport.problem == problem)
                       .order_by(DriftReport.created_at, DriftReport.id)):  # newest wins
        record(d.batch_id, d.created_at)["drift"] = _drift_entry(d, links)
    for p in s.scalars(select(PerformanceReport).where(PerformanceReport.problem == problem)
                       .order_by(PerformanceReport.created_at, PerformanceReport.id)):
        role = p.role if p.role in ("champion", "challenger") else "challenger"
        record(p.batch_id, p.created_at)["performance"][role] = _performance_entry(p)
    for e in s.scalars(select(PerformanceEstimate).where(PerformanceEstimate.problem == problem)
                       .order_by(PerformanceEstimate.created_at, PerformanceEstimate.id)):
        role = "champion" if e.role == "champion" else "challenger"
        record(e.batch_id, e.created_at)["estimate"][role] = _estimate_entry(e)
    return record.ordered()


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
            "contender_metric": finite((e.contender_metrics or {}).get(e.metric)),
            "champion_metric": finite((e.champion_metrics or {}).get(e.metric)),
            "delta": finite(e.delta), "ci_low": finite(e.ci_low), "ci_high": finite(e.ci_high),
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
    if settings.home_is_local:
        base = settings.partition("reports", problem)

        def links(uri: str | None) -> str | None:
            return _href(uri, base, settings.home)
    else:  # the page is an object beside the reports: links relative to its prefix
        prefix = settings.partition_uri("reports", problem) + "/"

        def links(uri: str | None) -> str | None:
            if uri and uri.startswith(prefix) and "/../" not in uri:
                return quote(uri[len(prefix):], safe="/=")
            return uri if uri and urlparse(uri).scheme in {"http", "https"} else None

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

