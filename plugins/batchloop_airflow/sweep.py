"""The backlog sweep's tasks: alert on batches stalled past their stage's deadline, nudge
each stage that has batches missing (``mlcore.backlog``) with one asset event, so a stage whose
events were lost (consumer paused, events coalesced) catches up even when no new batch comes,
and alert on online ingestion's health (``alert_stream``; ``stream_health``).

A nudge re-announces what is true (the batch's curated rows, features or predictions exist) on
the asset the stage is scheduled on, naming the oldest missing batch; the stage run then takes up
the others too (``CATCH_UP_PER_RUN``). Nothing is nudged that has been missing for less than
``BATCHLOOP_NUDGE_MINUTES`` (default 10): its own event is probably still on its way.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

# the asset each backlog stage is scheduled on (its input's output name)
UPSTREAM = {"materialize": "curated", "score": "features", "monitor": "predictions"}


def nudge_after() -> timedelta:
    """How long a batch may miss a stage before the sweep nudges it."""
    return timedelta(minutes=float(os.environ.get("BATCHLOOP_NUDGE_MINUTES", "10")))


def alert_stalled(problem: str, context: Any) -> list[dict[str, str]]:
    """Alert once per batch and stage stalled past the spec's deadline; returns what it found."""
    from batchloop_airflow.alerting.callbacks import deliver
    from batchloop_airflow.alerting.payload import stalled_payload
    from batchloop_airflow.connections import settings
    from mlcore.backlog import DAG_STAGE, stalled
    from mlcore.problems import get_problem

    spec = get_problem(problem)
    found = []
    for m in stalled(spec, settings().db_url):
        minutes = spec.alerts.deadline_minutes[DAG_STAGE[m.stage]]
        deliver(stalled_payload(
            problem=problem, stage=m.stage, dag_stage=DAG_STAGE[m.stage], batch_id=m.batch_id,
            ready_since=m.ready_since.isoformat(timespec="seconds"), minutes=minutes,
            sweep_dag_id=context["dag"].dag_id, sweep_run_id=context["run_id"]))
        found.append({"stage": m.stage, "batch_id": m.batch_id,
                      "ready_since": m.ready_since.isoformat()})
    print(f"stalled past their deadline: {found or 'none'}")
    return found


def nudge(problem: str, stage: str, asset: Any, context: Any) -> dict[str, Any]:
    """Emit one event on ``asset`` naming the oldest batch missing ``stage`` for longer than
    ``nudge_after()``; skip (no event) when there is none."""
    from airflow.sdk.exceptions import AirflowSkipException

    from batchloop_airflow.connections import settings
    from mlcore.backlog import missing

    late = datetime.now(UTC) - nudge_after()
    waiting = [m.batch_id for m in missing(problem, stage, settings().db_url)
               if m.ready_since <= late]
    if not waiting:
        raise AirflowSkipException(f"no batch has been missing {stage} for over {nudge_after()}")
    context["outlet_events"][asset].extra = {"batch_id": waiting[0], "nudged_by": "sweep"}
    print(f"{stage}: {len(waiting)} batch(es) missing it: {', '.join(waiting)}; nudged "
          f"{waiting[0]}")
    return {"stage": stage, "missing": waiting}


def alert_stream(problem: str, context: Any) -> list[dict[str, Any]]:
    """Alert once per stream finding (``stream_health``: lag or dead letters over the spec's
    ``stream:`` thresholds, a rejected segment, the engine unreachable) of a streamed problem.

    A lasting condition keeps its episode in the journal and so its dedup key: it pages once,
    not every sweep. An episode ends on the first sweep that can see it cleared (lag and dead
    letters cannot be seen while Redis is down), so it pages again if it comes back. Returns
    the findings with what delivery did."""
    from batchloop_airflow.alerting import journal
    from batchloop_airflow.alerting.callbacks import deliver
    from batchloop_airflow.alerting.payload import stream_payload
    from batchloop_airflow.connections import settings
    from batchloop_airflow.stream_health import EPISODIC, SWEEP_TIMEOUT_SECONDS, health
    from mlcore.problems import get_problem

    spec = get_problem(problem)
    h = health(spec, settings(), SWEEP_TIMEOUT_SECONDS)
    codes = {f["code"] for f in h["findings"]}
    seen = EPISODIC if h["unreachable"] is None else ("unreachable",)
    for code in set(seen) - codes:
        if journal.end_episode(f"stream-{problem}-{code}"):
            print(f"stream {code}: cleared")
    found = []
    for f in h["findings"]:
        episode = (journal.episode(f"stream-{problem}-{f['code']}") if f["code"] in EPISODIC
                   else f"{f['code']}-{h['status'].get('segments', {}).get('rejected', 0)}")
        outcome = deliver(stream_payload(
            problem=problem, finding=f["code"], text=f["text"], status=h["status"],
            episode=episode, sweep_dag_id=context["dag"].dag_id, sweep_run_id=context["run_id"],
            thresholds={"max_lag_events": spec.stream.max_lag_events,
                        "max_dead_letters": spec.stream.max_dead_letters}))
        found.append({**f, "since": episode, "delivered": outcome})
    print(f"stream {'not streamed' if not h['streamed'] else h['unreachable'] or 'reachable'}: "
          f"{found or 'no finding'}")
    return found
