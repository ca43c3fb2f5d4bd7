"""What the Batchloop view reads from and asks of Airflow: DAG runs, paused DAGs, triggers,
permissions. Imported only inside request handlers of the api-server.

Why the ORM and not the REST API: the view runs *inside* the api-server, whose process already
has Airflow's metadata session configured (``airflow.settings.Session``). Reading ``DagRun``,
``TaskInstance`` and ``DagModel`` there needs no token, no base URL and no HTTP call back into
the same single-worker server (a sync handler waiting on its own server can starve the thread
pool). Triggering uses ``airflow.api.common.trigger_dag.trigger_dag``, the function Airflow's
own trigger endpoint runs. Authorization stays Airflow's: every action asks the configured auth
manager (``is_authorized_dag``) for the logged-in user, exactly as the REST API would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# The DAGs of a problem are ``<problem>__<stage>`` (batchloop_airflow.defaults.dag_kwargs).
STAGE_DAGS = {"materialize": "materialize_features", "score": "score_batch",
              "monitor": "monitor_model"}
PIPELINE_STAGES = ("ingest_batch", "materialize_features", "score_batch", "monitor_model",
                   "retrain_model", "ingest_labels")
MAX_RUNS = 20


def dag_id(problem: str, stage: str) -> str:
    """``<problem>__<stage>``."""
    return f"{problem}__{stage}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def problem_dags(problem: str) -> dict[str, dict[str, Any]]:
    """The problem's DAGs known to Airflow: ``{dag_id: {paused, stale, stage}}``."""
    from airflow.models import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    prefix = problem.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_\\_"
    with create_session() as session:
        rows = session.scalars(select(DagModel).where(
            DagModel.dag_id.like(prefix + "%", escape="\\")))
        return {d.dag_id: {"paused": bool(d.is_paused), "stale": bool(d.is_stale),
                           "stage": d.dag_id.partition("__")[2]} for d in rows}


def attention_runs(problem: str) -> dict[str, list[dict[str, Any]]]:
    """Runs that need a look: ``failed`` runs newer than their DAG's last successful run
    (a later success answered them), and task instances waiting to retry."""
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import func, select

    dags = [d for d, info in problem_dags(problem).items() if not info["stale"]]
    if not dags:
        return {"failed": [], "retrying": []}
    with create_session() as session:
        last_ok = dict(session.execute(
            select(DagRun.dag_id, func.max(DagRun.run_after))
            .where(DagRun.dag_id.in_(dags), DagRun.state == DagRunState.SUCCESS)
            .group_by(DagRun.dag_id)).all())
        failed = []
        for run in session.scalars(
                select(DagRun).where(DagRun.dag_id.in_(dags), DagRun.state == DagRunState.FAILED)
                .order_by(DagRun.run_after.desc()).limit(MAX_RUNS)):
            ok = last_ok.get(run.dag_id)
            if ok is not None and run.run_after is not None and ok > run.run_after:
                continue
            tis = session.execute(
                select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.try_number)
                .where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id,
                       TaskInstance.state == TaskInstanceState.FAILED)).all()
            failed.append({"dag_id": run.dag_id, "run_id": run.run_id,
                           "stage": run.dag_id.partition("__")[2],
                           "batch_id": (run.conf or {}).get("batch_id"),
                           "at": _iso(run.end_date or run.run_after),
                           "tasks": [{"task_id": t, "map_index": m, "try_number": n}
                                     for t, m, n in tis]})
        retrying = [{"dag_id": d, "run_id": r, "stage": d.partition("__")[2], "task_id": t,
                     "try_number": n, "at": _iso(e)}
                    for d, r, t, n, e in session.execute(
                        select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id,
                               TaskInstance.try_number, TaskInstance.end_date)
                        .where(TaskInstance.dag_id.in_(dags),
                               TaskInstance.state == TaskInstanceState.UP_FOR_RETRY)
                        .limit(MAX_RUNS)).all()]
    return {"failed": failed, "retrying": retrying}


def run_path(dag: str, run_id: str) -> str:
    """The Airflow UI page of a run, relative to the UI root (``dags/<dag>/runs/<run>``)."""
    from urllib.parse import quote

    return f"dags/{quote(dag, safe='')}/runs/{quote(run_id, safe='')}"


def may(user: Any, action: str, dag: str) -> bool:
    """Whether Airflow's auth manager lets ``user`` do ``action`` on ``dag``: ``edit`` (PUT on
    the DAG: the model actions) or ``trigger`` (POST a DAG run)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    if action == "trigger":
        return bool(get_auth_manager().is_authorized_dag(
            method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag),
            user=user))
    return bool(get_auth_manager().is_authorized_dag(method="PUT", details=DagDetails(id=dag),
                                                     user=user))


def trigger(dag: str, conf: dict[str, Any], user_name: str, note: str) -> str:
    """Trigger a run of ``dag`` with ``conf`` as ``user_name`` (like the UI's trigger button).
    Returns the run ID.

    Raises:
        LookupError: Airflow does not know the DAG.
    """
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound
    from airflow.utils.types import DagRunTriggeredByType

    try:
        run = trigger_dag(dag, triggered_by=DagRunTriggeredByType.UI, conf=conf,
                          triggering_user_name=user_name, note=note[:1000])
    except DagNotFound as exc:
        raise LookupError(f"Airflow has no DAG {dag!r} (not parsed yet?)") from exc
    if run is None:
        raise LookupError(f"Airflow did not create a run of {dag!r}")
    return str(run.run_id)
