"""Failure alerts: what the on-call engineer needs to act, as one structured log line and, when
``BATCHLOOP_ALERT_WEBHOOK`` is set, a JSON POST to that URL (a generic HTTP webhook; chat and
paging tools accept one). Airflow calls ``on_failure_callback`` only when a task has failed for
good, so retries do not alert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger("batchloop.alerts")


def alert_payload(context: dict[str, Any]) -> dict[str, Any]:
    """The essentials of a failed task: where, which batch, what broke, what to do."""
    ti, params = context.get("ti"), context.get("params") or {}
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    problem = dag_id.split("__", 1)[0]
    exc = context.get("exception")
    task_id = getattr(ti, "task_id", None)
    batch = params.get("batch_id") or params.get("until_batch")
    key = f"{dag_id}|{task_id}|{batch}|{type(exc).__name__ if exc else 'failed'}"
    return {
        "problem": problem, "dag_id": dag_id, "task_id": task_id, "run_id": context.get("run_id"),
        "try_number": getattr(ti, "try_number", None), "batch_id": batch,
        "error": f"{type(exc).__name__}: {exc}" if exc else context.get("reason"),
        "log_url": getattr(ti, "log_url", None),
        "runbook": "README.md#operator-cli",
        "dedup_key": hashlib.sha256(key.encode()).hexdigest()[:16],
        "next_steps": [f"airflow tasks states-for-dag-run {dag_id} {context.get('run_id')}",
                       f"mlcore batches --problem {problem}",
                       f"mlcore rollback --problem {problem} --reason '<why>'  # if a bad "
                       "model was promoted"],
    }


class FailureAlert(BaseNotifier):
    """``on_failure_callback``: log the alert as one JSON line (picked up by log shipping) and
    POST it to ``BATCHLOOP_ALERT_WEBHOOK`` when set. A sink that is down is logged, never
    raised: the alert must not mask the task's own failure."""

    def notify(self, context: Any) -> None:
        """Send one alert for a failed task."""
        body = json.dumps(alert_payload(context), default=str)
        log.error("BATCHLOOP ALERT %s", body)
        url = os.environ.get("BATCHLOOP_ALERT_WEBHOOK")
        if not url:
            return
        request = urllib.request.Request(url, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except OSError as exc:
            log.error("BATCHLOOP ALERT not delivered to the webhook: %s", exc)


notify_failure = FailureAlert()
