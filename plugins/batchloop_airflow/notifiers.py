"""Failure notifier: one structured line with what the on-call engineer needs to act."""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("batchloop.alerts")


def alert_payload(context: dict[str, Any]) -> dict[str, Any]:
    """The essentials of a failed task: where, which batch, what broke, what to do."""
    ti, params = context.get("ti"), context.get("params") or {}
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    problem = dag_id.split("__", 1)[0]
    exc = context.get("exception")
    return {
        "dag_id": dag_id, "task_id": getattr(ti, "task_id", None), "run_id": context.get("run_id"),
        "try_number": getattr(ti, "try_number", None),
        "batch_id": params.get("batch_id") or params.get("until_batch"),
        "error": f"{type(exc).__name__}: {exc}" if exc else context.get("reason"),
        "next_steps": [f"airflow tasks states-for-dag-run {dag_id} {context.get('run_id')}",
                       f"mlcore batches --problem {problem}",
                       f"mlcore rollback --problem {problem} --reason '<why>'  # if a bad "
                       "model was promoted"],
    }


def notify_failure(context: dict[str, Any]) -> None:
    """``on_failure_callback``: log the alert as one JSON line (picked up by log shipping)."""
    log.error("BATCHLOOP ALERT %s", json.dumps(alert_payload(context), default=str))
