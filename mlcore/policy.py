"""Retrain policy: turn monitoring evidence into at most one well-reasoned retrain request per
problem, and let at most one retrain per problem run at a time (a lease in the metadata store).

Triggers (``retrain:`` in the spec): ``schedule`` (a cron tick since the champion's newest
training data), ``drift`` (dataset or prediction drift of the batch), ``performance`` (the
champion's metric on matured labels this far below its own holdout metric), ``estimate`` (the
same, for the metric estimated from the champion's own scores before labels arrive,
``estimated_performance_drop``), ``new_data``
(labelled rows published since the champion's newest training data), ``manual``.

The policy runs on data time: ``as_of`` is the monitored batch's newest event time, so a replay
of history (a backfill, the demo) retrains when it would have then. Several triggers at once make
one request; a pending request absorbs later triggers (a partial unique index allows one pending
request per problem, so two monitors at once cannot file two); no new request within
``cooldown_days`` of the last one.

A retrain run takes the pending request (``take_requests``: it records the run and stays pending
until the run trains) and answers it: ``trained`` by the version it registered, or ``failed``
with the error and the run (``fail_requests``: a failed, killed or timed-out run). A failed
request absorbs nothing and holds no cooldown: the next trigger files a new one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from mlcore.config import Settings
from mlcore.estimation import latest_estimate
from mlcore.model.registry import alias_holder, get_version
from mlcore.problems import ProblemSpec
from mlcore.store.catalog import get_batch, published_batches
from mlcore.store.models import (
    Batch,
    DriftReport,
    Evaluation,
    PerformanceReport,
    Prediction,
    RetrainLease,
    RetrainRequest,
    utcnow,
)
from mlcore.store.session import session_scope

TRIGGERS = ("schedule", "drift", "performance", "estimate", "new_data", "manual")
PENDING, TRAINED, FAILED = "pending", "trained", "failed"  # a request's states
MAX_ERROR_CHARS = 2000


def _utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class Trigger:
    """One reason to retrain, with the numbers behind it."""

    name: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyDecision:
    """What the policy did for one batch: ``filed`` a request, ``merged`` into the pending one,
    held back by ``cooldown``, or ``none`` fired."""

    problem: str
    batch_id: str
    as_of: str
    action: str
    fired: list[dict[str, Any]]
    request_id: int | None
    reason: str

    @property
    def requested(self) -> bool:
        """A request is pending because of this batch (filed or merged)."""
        return self.action in ("filed", "merged")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "requested": self.requested}


def _champion_data_time(problem: str, batch_ids: list[str], url: str) -> datetime | None:
    with session_scope(url) as s:
        newest = s.scalar(select(func.max(Batch.event_time_max)).where(
            Batch.problem == problem, Batch.batch_id.in_(batch_ids)))
    return None if newest is None else _utc(newest)


def _holdout_metric(problem: str, version: int, metric: str, url: str) -> float | None:
    """The champion's metric on the holdout it was promoted on (None: promoted by force)."""
    with session_scope(url) as s:
        row = s.scalar(select(Evaluation).where(
            Evaluation.problem == problem, Evaluation.contender_version == version,
            Evaluation.promote.is_(True)).order_by(Evaluation.id.desc()).limit(1))
    value = None if row is None else row.contender_metrics.get(metric)
    return None if value is None else float(value)


def _latest_performance(problem: str, version: int, url: str) -> PerformanceReport | None:
    with session_scope(url) as s:
        return s.scalar(select(PerformanceReport).where(
            PerformanceReport.problem == problem, PerformanceReport.model_version == version,
            PerformanceReport.value.is_not(None)).order_by(PerformanceReport.id.desc()).limit(1))


def _metric_triggers(spec: ProblemSpec, version: int, url: str) -> list[Trigger]:
    """``performance`` and ``estimate``: the champion's metric on matured labels, or estimated
    before labels, this far below its holdout metric."""
    rule, fired = spec.retrain, []
    holdout = _holdout_metric(spec.name, version, spec.metric.name, url)
    latest = _latest_performance(spec.name, version, url)
    if holdout is not None and latest is not None and latest.value is not None:
        sign = 1.0 if spec.metric.direction == "maximize" else -1.0
        drop = sign * (holdout - latest.value)
        if drop > rule.performance_drop:
            fired.append(Trigger("performance", f"champion v{version}'s {spec.metric.name} on "
                                 f"matured labels of batch {latest.batch_id} is {latest.value:.4f}"
                                 f", {drop:.4f} below its holdout {holdout:.4f} (allowed "
                                 f"{rule.performance_drop})",
                                 {"holdout": holdout, "matured": latest.value, "drop": drop,
                                  "batch_id": latest.batch_id}))
    if rule.estimated_performance_drop is not None and holdout is not None:

        guess = latest_estimate(spec.name, version, url)
        if guess is not None and guess["metric"] == spec.metric.name:
            sign = 1.0 if spec.metric.direction == "maximize" else -1.0
            drop = sign * (holdout - guess["estimate"])
            if drop > rule.estimated_performance_drop:
                fired.append(Trigger(
                    "estimate", f"champion v{version}'s {spec.metric.name} estimated before "
                    f"labels on batch {guess['batch_id']} is {guess['estimate']:.4f} (CI "
                    f"{guess['ci_low']:.4f}..{guess['ci_high']:.4f}), {drop:.4f} below its "
                    f"holdout {holdout:.4f} (allowed {rule.estimated_performance_drop})",
                    {"holdout": holdout, "estimate": guess["estimate"], "drop": drop,
                     "batch_id": guess["batch_id"], "ci": [guess["ci_low"], guess["ci_high"]]}))
    return fired


def fired_triggers(spec: ProblemSpec, as_of: datetime, settings: Settings,
                   drift: dict[str, Any] | None = None) -> list[Trigger]:
    """Every trigger that fires for the champion as of ``as_of`` (data time)."""
    from croniter import croniter

    url, rule = settings.db_url, spec.retrain
    version = alias_holder(spec.name, url)
    if version is None:
        return []
    champion = get_version(spec.name, version, url)
    since = _champion_data_time(spec.name, list(champion.training_batch_ids), url)
    fired = []
    if rule.schedule and since is not None:
        due = croniter(rule.schedule, since).get_next(datetime)
        if due <= as_of:
            fired.append(Trigger("schedule", f"schedule '{rule.schedule}' was due at "
                                 f"{due:%Y-%m-%d %H:%M} UTC; champion v{version}'s newest "
                                 f"training data is from {since:%Y-%m-%d}",
                                 {"due": due.isoformat(), "champion_data_time": since.isoformat()}))
    if drift and (drift.get("dataset_drift") or drift.get("prediction_drift")):
        what = (f"{drift['drift_share']:.0%} of features drifted"
                + (f" ({', '.join(drift.get('drifted_columns') or [])})"
                   if drift.get("drifted_columns") else "")
                + ("; predictions drifted" if drift.get("prediction_drift") else ""))
        fired.append(Trigger("drift", f"batch {drift['batch_id']}: {what} vs champion "
                             f"v{version}", {"drift_share": drift["drift_share"],
                                             "prediction_drift": drift.get("prediction_drift")}))
    fired += _metric_triggers(spec, version, url)
    if rule.new_data_rows is not None:
        # every labelled batch the champion did not train on, up to data time: newer ones and
        # late ones (history loaded out of order) alike
        trained = set(champion.training_batch_ids)
        fresh = [b for b in published_batches(spec.name, url)
                 if spec.target.name in b.schema and b.event_time_min is not None
                 and b.batch_id not in trained and _utc(b.event_time_min) <= as_of]
        rows = sum(b.row_count for b in fresh)
        if rows >= rule.new_data_rows:
            fired.append(Trigger("new_data", f"{rows:,} labelled rows in {len(fresh)} batches "
                                 f"champion v{version} did not train on (threshold "
                                 f"{rule.new_data_rows:,})", {"rows": rows}))
    return fired


def assess(spec: ProblemSpec, batch_id: str, settings: Settings,
           drift: dict[str, Any] | None = None) -> PolicyDecision:
    """Decide for one monitored batch: file, merge, hold back (cooldown) or nothing."""
    batch = get_batch(spec.name, batch_id, settings.db_url)
    if batch.event_time_max is None:
        raise ValueError(f"batch {batch_id!r} of {spec.name!r} has no event time")
    as_of = _utc(batch.event_time_max)
    fired = fired_triggers(spec, as_of, settings, drift)
    if not fired:
        return PolicyDecision(spec.name, batch_id, as_of.isoformat(), "none", [], None,
                              "no trigger fired")
    for _attempt in range(2):  # a concurrent filer wins the unique index: merge into its request
        try:
            return _file(spec, batch_id, as_of, fired, settings.db_url)
        except IntegrityError:
            continue
    raise RuntimeError(f"could not file a retrain request for {spec.name!r}")


def _file(spec: ProblemSpec, batch_id: str, as_of: datetime, fired: list[Trigger],
          url: str) -> PolicyDecision:
    names = [t.name for t in fired]
    reason = "; ".join(f"{t.name}: {t.reason}" for t in fired)
    details = {"as_of": as_of.isoformat(), "batch_id": batch_id, "batches": [batch_id],
               "triggers": {t.name: t.numbers for t in fired}}

    def decision(action: str, request_id: int | None, why: str) -> PolicyDecision:
        return PolicyDecision(spec.name, batch_id, as_of.isoformat(), action,
                              [asdict(t) for t in fired], request_id, why)

    with session_scope(url) as s:
        pending = s.scalar(select(RetrainRequest).where(RetrainRequest.problem == spec.name,
                                                        RetrainRequest.state == PENDING))
        if pending is not None:
            merged = list(dict.fromkeys([*(pending.triggers or [pending.trigger]), *names]))
            pending.triggers = merged
            seen = (pending.details or {}).get("batches") or [pending.batch_id]
            if batch_id not in seen:  # the same batch assessed again (labels) adds no new text
                pending.reason = f"{pending.reason} | batch {batch_id}: {reason}"
                pending.details = {**(pending.details or {}), "batches": [*seen, batch_id]}
            return decision("merged", pending.id, f"merged into pending request "
                            f"#{pending.id}: {reason}")
        last = s.scalar(select(RetrainRequest).where(  # a failed retrain holds no cooldown
            RetrainRequest.problem == spec.name, RetrainRequest.state != FAILED)
            .order_by(RetrainRequest.id.desc()).limit(1))
        stamp = None if last is None else (last.details or {}).get("as_of")
        if last is not None and stamp:
            # data time can run backwards (a late batch, history loaded newest first): the
            # cooldown is the distance between the two requests' data, either way
            last_as_of = datetime.fromisoformat(stamp)
            gap = abs(as_of - last_as_of)
            if gap < timedelta(days=spec.retrain.cooldown_days):
                return decision("cooldown", None, f"cooldown: request #{last.id} was filed "
                                f"for data as of {last_as_of:%Y-%m-%d %H:%M}, "
                                f"{gap.total_seconds() / 86400:.1f} days from this batch's "
                                f"{as_of:%Y-%m-%d %H:%M} (cooldown "
                                f"{spec.retrain.cooldown_days:g} days); not filed: {reason}")
        request = RetrainRequest(problem=spec.name, trigger=names[0], triggers=names,
                                 reason=reason, batch_id=batch_id, details=details)
        s.add(request)
        s.flush()
        return decision("filed", request.id, reason)


def request_manual(problem: str, reason: str, url: str) -> int:
    """File (or merge into the pending) request by hand. Returns its id."""
    with session_scope(url) as s:
        pending = s.scalar(select(RetrainRequest).where(RetrainRequest.problem == problem,
                                                        RetrainRequest.state == PENDING))
        if pending is not None:
            pending.triggers = list(dict.fromkeys([*(pending.triggers or []), "manual"]))
            entry = f"manual: {reason}"
            if entry not in pending.reason.split(" | "):  # the same request filed twice: once
                pending.reason = f"{pending.reason} | {entry}"
            return pending.id
        request = RetrainRequest(problem=problem, trigger="manual", triggers=["manual"],
                                 reason=f"manual: {reason}",
                                 details={"as_of": utcnow().isoformat()})
        s.add(request)
        s.flush()
        return request.id


def pending_requests(problem: str, url: str) -> list[dict[str, Any]]:
    """The pending request (at most one), as plain dicts."""
    return [r for r in list_requests(problem, url) if r["state"] == PENDING]


def list_requests(problem: str, url: str) -> list[dict[str, Any]]:
    """Every retrain request, oldest first (what ``mlcore requests`` prints)."""
    with session_scope(url) as s:
        return [{"id": r.id, "trigger": r.trigger, "triggers": r.triggers or [r.trigger],
                 "reason": r.reason, "batch_id": r.batch_id, "state": r.state,
                 "resolved_by_version": r.resolved_by_version, "taken_by": r.taken_by,
                 "run_id": r.run_id, "error": r.error,
                 "resolved_at": None if r.resolved_at is None else _utc(r.resolved_at).isoformat(),
                 "created_at": r.created_at.isoformat()}
                for r in s.scalars(select(RetrainRequest).where(RetrainRequest.problem == problem)
                                   .order_by(RetrainRequest.id))]


def take_requests(problem: str, holder: str, run_id: str, url: str) -> list[dict[str, Any]]:
    """The retrain run ``run_id`` (holding the lease as ``holder``) answers the pending request:
    record the run on it. It stays pending (later triggers still merge into it) until training
    closes it, or ``fail_requests`` fails it. Returns the requests taken."""
    with session_scope(url) as s:
        s.execute(update(RetrainRequest).where(
            RetrainRequest.problem == problem, RetrainRequest.state == PENDING,
        ).values(taken_by=holder, run_id=run_id))
    return [r for r in list_requests(problem, url)
            if r["state"] == PENDING and r["run_id"] == run_id]


def close_retrain_requests(problem: str, version: int, url: str) -> int:
    """Mark every pending retrain request of ``problem`` as answered by ``version`` (training
    calls it once the version is registered). Returns how many."""
    with session_scope(url) as s:
        return int(s.execute(update(RetrainRequest).where(
            RetrainRequest.problem == problem, RetrainRequest.state == PENDING,
        ).values(state=TRAINED, resolved_by_version=version)).rowcount)  # type: ignore[attr-defined]


def claim_trained(problem: str, run_id: str, version: int, url: str) -> int:
    """Record ``run_id`` on requests its training closed without it (filed after the run took
    the pending one): if the run fails later, they fail with it. Returns how many."""
    with session_scope(url) as s:
        return int(s.execute(update(RetrainRequest).where(
            RetrainRequest.problem == problem, RetrainRequest.state == TRAINED,
            RetrainRequest.resolved_by_version == version, RetrainRequest.run_id.is_(None),
        ).values(run_id=run_id)).rowcount)  # type: ignore[attr-defined]


def fail_requests(problem: str, run_id: str, error: str, url: str) -> list[int]:
    """The retrain run ``run_id`` failed or timed out: each request it answered (taken, or
    already closed by its training) becomes ``failed`` with ``error``. A request already failed
    keeps its first, more precise error. Returns the ids failed now."""
    text = error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS - 1] + "…"
    with session_scope(url) as s:
        rows = list(s.scalars(select(RetrainRequest).where(
            RetrainRequest.problem == problem, RetrainRequest.run_id == run_id,
            RetrainRequest.state.in_((PENDING, TRAINED)))))
        for r in rows:
            r.state, r.error, r.resolved_at = FAILED, text, utcnow()
        return [r.id for r in rows]


class RetrainInFlight(RuntimeError):
    """Another retrain of the problem holds the lease."""


def acquire_lease(problem: str, holder: str, url: str, hours: float) -> None:
    """Take the problem's retrain lease (single-flight), or raise.

    A held lease is taken over only once expired (a crashed run frees the problem after
    ``hours``). Re-acquiring by the same holder (a task retry) renews it.

    Raises:
        RetrainInFlight: another holder has it.
    """
    now = utcnow()
    expires = now + timedelta(hours=hours)
    try:
        with session_scope(url) as s:
            s.add(RetrainLease(problem=problem, holder=holder, acquired_at=now,
                               expires_at=expires))
        return
    except IntegrityError:
        pass
    with session_scope(url) as s:
        taken = s.execute(update(RetrainLease).where(
            RetrainLease.problem == problem,
            (RetrainLease.expires_at < now) | (RetrainLease.holder == holder),
        ).values(holder=holder, acquired_at=now, expires_at=expires)).rowcount  # type: ignore[attr-defined]
        if taken == 1:
            return
        current = s.scalar(select(RetrainLease).where(RetrainLease.problem == problem))
    who = "someone" if current is None else f"{current.holder} (until {current.expires_at})"
    raise RetrainInFlight(f"{problem!r} is already being retrained by {who}")


def release_lease(problem: str, holder: str, url: str) -> bool:
    """Give the lease back (only its holder can). Returns whether it was held."""
    with session_scope(url) as s:
        return bool(s.execute(delete(RetrainLease).where(
            RetrainLease.problem == problem, RetrainLease.holder == holder)).rowcount)  # type: ignore[attr-defined]


def promotion_hold(problem: str, url: str) -> str | None:
    """Why a promotion must wait, or None: the newest batch the champion scored has no drift
    check against it (the check failed, ran out of budget, or has not run yet). Monitoring that
    failed must not be followed by a champion change nobody could vet."""
    champion = alias_holder(problem, url)
    if champion is None:
        return None
    with session_scope(url) as s:
        scored = select(Prediction.batch_id).where(
            Prediction.problem == problem, Prediction.model_version == champion).distinct()
        newest = s.scalar(select(Batch.batch_id).where(
            Batch.problem == problem, Batch.batch_id.in_(scored))
            .order_by(Batch.event_time_max.desc(), Batch.id.desc()).limit(1))
        if newest is None:
            return None
        checked = s.scalar(select(func.count()).select_from(DriftReport).where(
            DriftReport.problem == problem, DriftReport.batch_id == newest,
            DriftReport.model_version == champion))
    if checked:
        return None
    return (f"batch {newest} was scored by champion v{champion} but has no drift check against "
            "it (failed, over budget or not run): promotion held until monitor_model succeeds "
            "for it")
