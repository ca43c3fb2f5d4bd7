"""The retrain run's single flight and its answer to the retrain requests, whatever happens.

A run takes the problem's lease and the pending request (``start_retrain``), and gives the lease
back when done (``release_retrain``). Its training closes the request (``trained``). A run that
does not get there still answers the request, ``failed`` with the error and the run, so the
policy files a new one on the next trigger:

* a task that failed for good: its own failure callback (``RetrainTaskFailed``, in the task's
  process) fails the request with the task's error;
* a task killed without its callback (SIGKILL, OOM), a run past its ``dagrun_timeout`` (the
  lease's hours, plus the approval wait) or any other failed run: the DAG-level sweep
  (``RunFailureSweep(also=end_failed_run)``, in the dag-processor) fails what is still open and
  releases the lease (a timed-out run's teardown never runs).

Light at import (stdlib + ``airflow.sdk``): every DAG file imports the package at parse time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import AssetOrTimeSchedule, get_current_context, setup, task, teardown

from batchloop_airflow.alerting.callbacks import RunFailureSweep, _AlertNotifier, _error_text
from batchloop_airflow.alerting.payload import split_dag_id
from batchloop_airflow.assets import stage_asset
from batchloop_airflow.defaults import dag_kwargs
from batchloop_airflow.timetables import retrain_timetable

log = logging.getLogger("batchloop.retrain")
APPROVAL_HOURS = 24  # how long a promotion waits for a human (``approve_promotion``)
SUMMARY = """**{outcome}** — contender v{contender_version} vs champion v{champion_version}

{reason}

Run card: `{run_card}`"""


def run_hours(lease_hours: float, approval: bool) -> float:
    """How long a retrain run may take: the spec's lease, plus the approval wait if any. The
    lease is held that long, and the run times out (fails) after it."""
    return lease_hours + (APPROVAL_HOURS if approval else 0)


def holder_of(dag_id: str, run_id: str) -> str:
    """The lease holder name of a run."""
    return f"{dag_id}/{run_id}"


def end_failed_run_requests(dag_id: str, run_id: str, error: str, release: bool) -> list[int]:
    """Fail the requests the run answered (``error`` redacted) and, with ``release``, give its
    lease back. Returns the request ids failed now. Logs, never raises."""
    from batchloop_airflow.alerting.channels import redact
    from batchloop_airflow.connections import settings
    from mlcore.errors import one_line
    from mlcore.policy import fail_requests, release_lease

    problem, _ = split_dag_id(dag_id)
    try:
        url = settings().db_url
        failed = fail_requests(problem, run_id, str(redact(one_line(error))), url)
        if failed:
            log.error("retrain requests %s of %s failed with run %s: %s",
                      ", ".join(f"#{i}" for i in failed), problem, run_id, one_line(error))
        if release and release_lease(problem, holder_of(dag_id, run_id), url):
            log.warning("retrain lease of %s released (run %s ended failed)", problem, run_id)
        return failed
    except Exception:  # noqa: BLE001 - a callback that raises helps nobody
        log.exception("retrain requests of run %s could not be marked failed", run_id)
        return []


class RetrainTaskFailed(_AlertNotifier):
    """Task ``on_failure_callback`` of the retrain DAG: the task failed for good, so the run
    cannot answer its request: fail it with this task's error. The lease stays with the run
    until its teardown (or the DAG-level sweep) ends it: parallel tasks may still be running."""

    def notify(self, context: Any) -> None:
        """Fail the run's requests with ``<task>: <Class>: <message>`` (not for the teardown:
        a lease that could not be given back does not fail the run, nor its request)."""
        ti, exc = context["ti"], context.get("exception")
        if getattr(context.get("task"), "is_teardown", False):
            return
        what = _error_text(exc) if exc is not None else "task failed without an error"
        end_failed_run_requests(ti.dag_id, ti.run_id, f"{ti.task_id}: {what}", release=False)


def end_failed_run(context: Any, killed: list[dict[str, Any]]) -> None:
    """``RunFailureSweep`` hook of the retrain DAG (the run failed or timed out): fail what the
    run still had open (a killed task never ran its own callback; a timed-out run may have no
    failed task at all) and release its lease."""
    dag, run_id, ti = context["dag"], context["run_id"], context.get("ti")
    if context.get("reason") == "timed_out":
        error = (f"run timed out after {getattr(dag, 'dagrun_timeout', None)} (dagrun_timeout: "
                 f"the retrain lease's hours)"
                 + (f"; task {ti.task_id} was still unfinished" if ti is not None else ""))
    elif killed:
        error = "; ".join(f"{k['task_id']}: {k['error']}" for k in killed)
    else:
        error = (f"run failed ({context.get('reason') or 'unknown reason'})"
                 + (f"; task {ti.task_id}" if ti is not None else ""))
    end_failed_run_requests(dag.dag_id, run_id, error, release=True)


def retrain_dag_kwargs(problem: str, stage: str, doc: str | None, hours: float) -> dict[str, Any]:
    """``dag_kwargs`` plus what makes a failed retrain answer its request: the task callback,
    the sweep's hook and a ``dagrun_timeout`` of ``hours`` (the lease)."""
    kwargs = dag_kwargs(problem, stage, doc)
    args = kwargs["default_args"]
    return {**kwargs, "dagrun_timeout": timedelta(hours=hours),
            "on_failure_callback": RunFailureSweep(also=end_failed_run),
            "default_args": {**args, "on_failure_callback": [args["on_failure_callback"],
                                                             RetrainTaskFailed()]}}


def _start(problem: str, hours: float) -> dict[str, Any]:
    """Single flight: take the problem's lease for ``hours`` (skip the run if another retrain
    holds it) and the pending request this run answers (logged)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from batchloop_airflow.connections import settings
    from batchloop_airflow.tasks import fence_try
    from mlcore.policy import RetrainInFlight, acquire_lease, take_requests

    fence_try()
    ctx, url = get_current_context(), settings().db_url
    holder = holder_of(ctx["dag"].dag_id, ctx["run_id"])
    try:
        acquire_lease(problem, holder, url, hours)
    except RetrainInFlight as exc:
        raise AirflowSkipException(str(exc)) from exc
    requests = take_requests(problem, holder, ctx["run_id"], url)
    for r in requests:
        print(f"answering retrain request #{r['id']} ({', '.join(r['triggers'])}): "
              f"{r['reason']}")
    return {"holder": holder, "requests": requests}


def _release(problem: str, lease: dict[str, Any]) -> None:
    """Give the lease back, however the run went."""
    from batchloop_airflow.connections import settings
    from batchloop_airflow.tasks import fence_try
    from mlcore.policy import release_lease

    fence_try()
    release_lease(problem, lease["holder"], settings().db_url)


def retrain_schedule(problem: str, cron: str | None, run_missed: bool) -> Any:
    """Every retrain request, and the spec's cron when it has one (a tick missed while paused
    runs only if the spec asks: ``batchloop_airflow.timetables``)."""
    requests = stage_asset(problem, "retrain_requests")
    if cron is None:
        return [requests]
    return AssetOrTimeSchedule(timetable=retrain_timetable(cron, run_missed), assets=[requests])


def approval_gate(problem: str) -> Any:
    """The human approval before a promotion (Required Actions in the UI): no answer within
    ``APPROVAL_HOURS`` means reject. Its body is ``evaluate_contender``'s summary."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    return ApprovalOperator(
        task_id="approve_promotion", subject=f"Promote the {problem} contender?",
        body="{{ ti.xcom_pull(task_ids='evaluate_contender')['summary'] }}",
        defaults=["Reject"], response_timeout=timedelta(hours=APPROVAL_HOURS))


def promotion_gate(problem: str, decision: dict[str, Any]) -> bool:
    """Whether to promote: the decision, unless monitoring of the champion's newest batch
    failed (``mlcore.policy.promotion_hold``, logged)."""
    from batchloop_airflow.connections import settings
    from mlcore.policy import promotion_hold

    if not decision["promote"]:
        return False
    hold = promotion_hold(problem, settings().db_url)
    if hold:
        print(f"promotion held: {hold}")
    return hold is None


def claim_contender(problem: str, contender: dict[str, Any]) -> dict[str, Any]:
    """Mark the requests this run answers ``trained`` by ``contender`` (its XCom dict) and
    return it. Not under ``fail_fast``: a failure here fails the task like any other (retried)."""
    from batchloop_airflow.connections import settings
    from mlcore.policy import claim_trained

    claim_trained(problem, get_current_context()["run_id"], contender["version"],
                  settings().db_url)
    return contender


def with_summary(decision: dict[str, Any]) -> dict[str, Any]:
    """The decision plus its Markdown ``summary`` (the approval form's body), printed so the
    task log shows the outcome and where the run card is."""
    summary = SUMMARY.format(**decision)
    print(summary)
    return {**decision, "summary": summary}


# Built per DAG: a module-level @teardown can be called only once (Airflow 3.3.2 stores its
# trigger rule in the shared decorator, and the second DAG's call then refuses it).
def start_retrain(problem: str, hours: float) -> Any:
    """The setup task ``start_retrain`` of one retrain DAG (its XCom: the lease)."""
    return setup(task(task_id="start_retrain")(_start))(problem, hours)


def release_retrain(problem: str, lease: Any) -> Any:
    """The teardown task ``release_retrain`` of one retrain DAG."""
    return teardown(task(task_id="release_retrain")(_release))(problem, lease)
