"""The backlog sweep's tasks: alert on batches stalled past their stage's deadline, and nudge
each stage that has batches missing (``mlcore.backlog``) with one asset event, so a stage whose
events were lost (consumer paused, events coalesced) catches up even when no new batch comes.

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
