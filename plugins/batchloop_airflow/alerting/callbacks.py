"""On-call alerts that always arrive: a task's failure callback, a DAG-level sweep for tasks that
were killed, and the per-stage run deadline.

* ``notify_failure`` (every task's ``on_failure_callback``): Airflow calls it only when a task
  has failed for good, so retries do not alert. It runs in the task's own process.
* ``notify_lost_try`` (every task's ``on_retry_callback``): a try whose worker died (no
  heartbeat) alerts ``task_killed`` at once, while Airflow retries it elsewhere.
* ``notify_run_failure`` (every DAG's ``on_failure_callback``): runs in the dag-processor when a
  run fails. A task whose process was SIGKILLed (OOM killer) never runs its own callback
  (apache/airflow#60858: the supervisor reports it failed, nobody calls back), so the sweep
  alerts every failed task of the run that has no journaled alert, as ``task_killed`` with the
  signal from the task log.
* ``deadline_missed``: the ``AsyncCallback`` of the stage's ``DeadlineAlert`` (triggerer).
* ``skipped_challenger``: called by the scoring task when it succeeded without its shadow
  challenger (artifact missing or tampered): nothing failed, but someone must look.

Every alert is journaled (``alerting.journal``: dedup + audit), logged as one JSON line and sent to
each configured channel (``alerting.channels``). Nothing here raises into Airflow: an alert that
cannot be sent must not mask the task's failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseNotifier

from batchloop_airflow.alerting import journal as alert_journal
from batchloop_airflow.alerting.channels import redact, send_all
from batchloop_airflow.alerting.payload import (
    KIND_FAILED,
    KIND_KILLED,
    challenger_payload,
    deadline_payload,
    error_class,
    killed_error,
    last_attempt,
    process_exit,
    task_payload,
    ti_key,
    ti_log_url,
)

log = logging.getLogger("batchloop.alerts")


def deliver(payload: dict[str, Any]) -> dict[str, str]:
    """Journal, log and send one alert unless its dedup key was already sent.

    Returns each channel's outcome (``{"journal": "duplicate"}`` when deduplicated).
    """
    payload = redact(payload)
    claim = alert_journal.claim(payload)
    if claim is None:
        log.info("BATCHLOOP ALERT %s already sent (dedup); not sending again",
                 payload["dedup_key"])
        return {"journal": "duplicate"}
    log.error("BATCHLOOP ALERT %s", json.dumps(payload, default=str))
    outcomes = send_all(payload)
    claim.record(outcomes)
    return outcomes


def skipped_challenger(context: Any, batch_id: str, skipped: dict[str, Any] | None) -> None:
    """Alert once that a scoring task skipped its challenger (``ScoringResult.skipped_challenger``);
    nothing when none was skipped. Logs, never raises: the champion's scoring succeeded."""
    if not skipped:
        return
    try:
        ti = context["ti"]
        deliver(challenger_payload(
            dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=_map_index(ti),
            batch_id=batch_id, version=int(skipped["version"]), reason=str(skipped["reason"])))
    except Exception:  # noqa: BLE001 - the task succeeded; a failed alert must not fail it
        log.exception("BATCHLOOP ALERT for the skipped challenger could not be sent")


def _map_index(ti: Any) -> int:
    value = getattr(ti, "map_index", None)
    return value if isinstance(value, int) else -1


def batch_of(context: Any, ti: Any, map_index: int) -> str | None:
    """The batch a failed task worked on: the run's Param, else what ``resolve_batches`` handed
    the mapped task, else the triggering asset events' batch IDs. None when unknown."""
    params = context.get("params") or {}
    if explicit := params.get("batch_id") or params.get("until_batch"):
        return str(explicit)
    dag = context.get("dag")
    try:
        if ti is not None and dag is not None and "resolve_batches" in dag.task_ids:
            ids = ti.xcom_pull(task_ids="resolve_batches", map_indexes=-1) or []
            if ids:
                return str(ids[map_index]) if 0 <= map_index < len(ids) else ",".join(ids)
        events = context.get("triggering_asset_events") or {}
        ids = [str(e.extra["batch_id"]) for evs in events.values() for e in evs
               if (e.extra or {}).get("batch_id")]
        return ",".join(dict.fromkeys(ids)) or None
    except Exception:  # noqa: BLE001 - the batch enriches the alert; never lose the alert for it
        return None


def run_conf(context: Any) -> dict[str, Any] | None:
    """The run's conf (its Params as triggered), for the alert's re-run command."""
    try:
        conf = getattr(context.get("dag_run"), "conf", None)
        return dict(conf) if conf else None
    except Exception:  # noqa: BLE001 - the conf enriches the alert; never lose the alert for it
        return None


def _error_text(exc: BaseException) -> str:
    """``<Class>: <message>``, the class being the real error's (fail_fast's wrapper message
    already starts with it)."""
    message = str(exc)
    return message if message.startswith(f"{error_class(exc)}:") else (
        f"{type(exc).__name__}: {message}")


def task_alert(context: Any, exit_info: dict[str, Any] | None = None,
               exit_read: bool = False) -> dict[str, Any]:
    """The alert of the task in ``context`` that failed for good. Without an exception the
    process died without reporting one (the scheduler found it): ``task_killed``, with how its
    process ended (``process_exit``; ``exit_read``: the caller already read it: ``exit_info``)."""
    ti, exc = context["ti"], context.get("exception")
    dag_id, run_id, map_index = ti.dag_id, ti.run_id, _map_index(ti)
    kind = KIND_FAILED if exc is not None else KIND_KILLED
    if exc is not None:
        exit_info = None
    elif not exit_read:
        exit_info = process_exit(dag_id, run_id, ti.task_id, map_index, ti.try_number)
    error = _error_text(exc) if exc is not None else killed_error(exit_info)
    return task_payload(kind=kind, dag_id=dag_id, run_id=run_id, task_id=ti.task_id,
                        map_index=map_index, try_number=ti.try_number,
                        batch_id=batch_of(context, ti, map_index), error=error,
                        error_cls=error_class(exc),
                        log_url=getattr(ti, "log_url", None), exit_info=exit_info,
                        conf=run_conf(context))


def failed_tasks(dag: Any, run_id: str) -> list[tuple[str, int]]:
    """(task_id, map_index) of every failed task instance of the run (via the Task SDK)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    states = RuntimeTaskInstance.get_task_states(dag_id=dag.dag_id, run_ids=[run_id])
    failed = []
    for key, state in (states.get(run_id) or {}).items():
        if str(state) != "failed":
            continue
        if key in dag.task_ids:
            failed.append((key, -1))
        else:  # a mapped instance: "<task_id>_<map_index>"
            task_id, _, index = key.rpartition("_")
            failed.append((task_id, int(index)) if index.isdigit() else (key, -1))
    return failed


def killed_alerts(context: Any) -> list[dict[str, Any]]:
    """``task_killed`` alerts for the run's failed tasks that have no journaled alert."""
    dag, run_id, ti = context["dag"], context["run_id"], context.get("ti")
    known = (ti.task_id, _map_index(ti)) if ti is not None else None
    try:
        failed = failed_tasks(dag, run_id)
    except Exception as exc:  # noqa: BLE001 - fall back to the task the scheduler named
        log.warning("BATCHLOOP ALERT sweep: task states unavailable (%s)", type(exc).__name__)
        failed = []
    if known and known not in failed:
        failed.append(known)
    alerts = []
    for task_id, map_index in failed:
        mine = (task_id, map_index) == known
        try_number = ti.try_number if mine else last_attempt(dag.dag_id, run_id, task_id,
                                                             map_index)
        if alert_journal.alerted(ti_key(dag.dag_id, run_id, task_id, map_index), try_number):
            log.info("BATCHLOOP ALERT sweep: %s.%s try %s already alerted by its own callback",
                     dag.dag_id, task_id, try_number)
            continue
        exit_info = process_exit(dag.dag_id, run_id, task_id, map_index, try_number)
        alerts.append(task_payload(
            kind=KIND_KILLED, dag_id=dag.dag_id, run_id=run_id, task_id=task_id,
            map_index=map_index, try_number=try_number, error=killed_error(exit_info),
            batch_id=batch_of(context, ti, map_index), exit_info=exit_info,
            log_url=ti_log_url(dag.dag_id, run_id, task_id, map_index, try_number),
            conf=run_conf(context)))
    return alerts


class _AlertNotifier(BaseNotifier):
    """A notifier without templates: nothing to render (and ``dag.test`` hands DAG callbacks a
    SerializedDAG, which has no template environment to render with)."""

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """No template fields: nothing to do."""


class FailureAlert(_AlertNotifier):
    """Task ``on_failure_callback``: alert once for a task that failed for good."""

    def notify(self, context: Any) -> None:
        """Send the task's alert; log (never raise) if that fails."""
        try:
            deliver(task_alert(context))
        except Exception:  # noqa: BLE001 - must not mask the task's own failure
            log.exception("BATCHLOOP ALERT could not be built or sent")


class LostTryAlert(_AlertNotifier):
    """Task ``on_retry_callback``: alert when a try was lost with its worker: the task and its
    supervisor died together (a worker or host killed), the scheduler found the try by its
    missing heartbeat and the dag-processor calls this without an exception. Quiet when the
    try raised (an ordinary retry) or when its supervisor lived to log how the task process
    ended (a killed task process: its final failure alerts, as before). At most one such
    alert per task instance and run (``<ti>-lost``), whatever the number of lost tries."""

    def notify(self, context: Any) -> None:
        """Send ``task_killed`` for the lost try, saying that it is retried; log, never raise."""
        if context.get("exception") is not None:
            return
        try:
            ti = context["ti"]
            if process_exit(ti.dag_id, ti.run_id, ti.task_id, _map_index(ti), ti.try_number):
                return  # its supervisor saw the task process end: not a lost worker
            payload = task_alert(context, exit_info=None, exit_read=True)
            tries = getattr(ti, "max_tries", None)
            payload["error"] = (f"{payload['error']}; Airflow retries it (try "
                                f"{ti.try_number + 1}{f' of {tries + 1}' if tries else ''})")
            key = ti_key(ti.dag_id, ti.run_id, ti.task_id, _map_index(ti))
            payload["dedup_key"] = f"{key}-lost"
            deliver(payload)
        except Exception:  # noqa: BLE001 - a callback that raises helps nobody
            log.exception("BATCHLOOP ALERT for the lost try could not be built or sent")


class RunFailureSweep(_AlertNotifier):
    """DAG ``on_failure_callback``: alert the run's failed tasks nobody alerted (killed ones).
    ``also(context, killed_alerts)`` then runs for a stage's own clean-up (the retrain DAG
    fails its retrain requests and releases its lease: ``retrain_tasks.end_failed_run``)."""

    def __init__(self, also: Callable[[Any, list[dict[str, Any]]], None] | None = None) -> None:
        super().__init__()
        self.also = also

    def notify(self, context: Any) -> None:
        """Send a ``task_killed`` alert per unalerted failed task, then run ``also``; log (never
        raise) on error."""
        killed: list[dict[str, Any]] = []
        try:
            killed = killed_alerts(context)
            for payload in killed:
                deliver(payload)
        except Exception:  # noqa: BLE001 - a callback that raises helps nobody
            log.exception("BATCHLOOP ALERT sweep failed")
        if self.also is not None:
            try:
                self.also(context, killed)
            except Exception:  # noqa: BLE001 - as above
                log.exception("run failure clean-up %s failed", getattr(self.also, "__name__", ""))


async def deadline_missed(context: dict[str, Any], minutes: float = 0.0) -> str:
    """``AsyncCallback`` of a stage's ``DeadlineAlert`` (runs in the triggerer): alert that the
    run was not finished in time. Returns each channel's outcome as JSON."""
    run = context.get("dag_run") or {}
    conf = run.get("conf") or {}
    payload = deadline_payload(
        dag_id=str(run.get("dag_id")), run_id=str(run.get("dag_run_id")),
        batch_id=conf.get("batch_id") or conf.get("until_batch"), minutes=minutes,
        deadline_time=str((context.get("deadline") or {}).get("deadline_time")),
        queued_at=run.get("queued_at"), state=run.get("state"),
        deadline_id=(context.get("deadline") or {}).get("id"))
    try:
        outcomes = await asyncio.to_thread(deliver, payload)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the triggerer's callback
        log.exception("BATCHLOOP ALERT deadline alert failed")
        outcomes = {"deliver": f"failed: {type(exc).__name__}"}
    return json.dumps(outcomes)


notify_failure = FailureAlert()
notify_lost_try = LostTryAlert()
notify_run_failure = RunFailureSweep()
