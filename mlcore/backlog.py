"""No batch left behind: which published batches still lack a stage's output.

Stages are chained by asset events, and Airflow can drop or coalesce them (a consumer paused when
the event came, events arriving while a run of the consumer is already queued). So each stage
run also takes up, oldest first and a bounded number per run, the batches the metadata store
shows as ready for the stage but never done ("caught up"); and skips the event batches it finds
already done, so a batch caught up by one run is not redone by the run its own event queued.
A batch can be delayed by a lost event, never skipped; ``stalled`` finds the ones delayed past
the spec's deadline for the stage, for the sweep to alert on and nudge.

Ready and missing, per stage (read from the metadata store, never from Airflow):

* ``materialize``: published, no materialization recorded (ready since it was published);
* ``score``: materialized while a champion existed, no predictions by any version (ready since
  it was materialized; a batch materialized before the first champion waits for a backfill);
* ``monitor``: scored by the current champion, no drift report against it (ready since the
  champion's predictions were written).

"Done" for an event's batch is ``backfill``'s definition (score and monitor: by the current
champion), so a re-run asked for after a promotion still runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, func, select

from mlcore.backfill import stage_done
from mlcore.model.registry import CHAMPION, alias_holder
from mlcore.problems import ProblemSpec
from mlcore.store.models import AliasHistory, Batch, DriftReport, Materialization, Prediction
from mlcore.store.session import session_scope

STAGES = ("materialize", "score", "monitor")
# the DAG of each stage (``alerts.deadline_minutes`` is keyed by DAG stage)
DAG_STAGE = {"materialize": "materialize_features", "score": "score_batch",
             "monitor": "monitor_model"}
CATCH_UP_PER_RUN = 10  # missing batches a stage run takes up besides its events


@dataclass(frozen=True)
class Missing:
    """A published batch ready for ``stage`` that has not had it, and since when it was ready."""

    batch_id: str
    stage: str
    ready_since: datetime


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts  # SQLite drops the zone


def missing(problem: str, stage: str, url: str, limit: int | None = None) -> list[Missing]:
    """The batches ready for ``stage`` that lack its output, oldest event time first."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    published = and_(Batch.problem == problem, Batch.state == "published")
    made = and_(Materialization.problem == problem, Materialization.batch_id == Batch.batch_id)
    if stage == "materialize":
        query = select(Batch.batch_id, Batch.published_at).where(published, ~exists().where(made))
    elif stage == "score":
        first = select(func.min(AliasHistory.created_at)).where(
            AliasHistory.problem == problem, AliasHistory.alias == CHAMPION).scalar_subquery()
        scored = exists().where(Prediction.problem == problem,
                                Prediction.batch_id == Batch.batch_id)
        query = (select(Batch.batch_id, Materialization.created_at).join(Materialization, made)
                 .where(published, ~scored, Materialization.created_at >= first))
    else:
        champion = alias_holder(problem, url)
        if champion is None:
            return []
        by_champion = and_(Prediction.problem == problem, Prediction.batch_id == Batch.batch_id,
                           Prediction.model_version == champion)
        checked = exists().where(DriftReport.problem == problem,
                                 DriftReport.batch_id == Batch.batch_id,
                                 DriftReport.model_version == champion)
        since = select(func.min(Prediction.created_at)).where(by_champion).scalar_subquery()
        query = select(Batch.batch_id, since).where(published, exists().where(by_champion),
                                                    ~checked)
    query = query.order_by(Batch.event_time_max, Batch.batch_id)
    if limit is not None:
        query = query.limit(limit)
    with session_scope(url) as s:
        rows = s.execute(query).all()
    return [Missing(b, stage, _utc(t)) for b, t in rows if t is not None]


def batches_to_run(problem: str, stage: str, event_ids: list[str], url: str,
                   limit: int = CATCH_UP_PER_RUN) -> tuple[list[str], list[str], list[str]]:
    """What a stage run triggered by ``event_ids`` should do: (run, already done, caught up).

    ``run`` is the event batches not done yet, then up to ``limit`` missing batches no event
    named (oldest first); ``already done`` the event batches another run did meanwhile.
    """
    done = stage_done(problem, stage, event_ids, url)
    fresh = [b for b in dict.fromkeys(event_ids) if b not in done]
    extra = [m.batch_id for m in missing(problem, stage, url, limit + len(event_ids))
             if m.batch_id not in event_ids][:limit]
    return fresh + extra, [b for b in event_ids if b in done], extra


def stalled(spec: ProblemSpec, url: str, now: datetime | None = None) -> list[Missing]:
    """Missing batches ready for longer than the spec's deadline for their stage's DAG
    (``alerts.deadline_minutes``; a stage without a deadline is never reported)."""
    now = now or datetime.now(UTC)
    out = []
    for stage in STAGES:
        minutes = spec.alerts.deadline_minutes.get(DAG_STAGE[stage])
        if minutes is None:
            continue
        late = now - timedelta(minutes=minutes)
        out += [m for m in missing(spec.name, stage, url) if m.ready_since <= late]
    return out
