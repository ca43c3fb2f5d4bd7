"""DAG defaults set once: retries, failure notifier, tags, ids; and the problem specs to build."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum

from batchloop_airflow.notifiers import notify_failure


def problem_specs() -> list[Any]:
    """Every declared problem (``problems/*.yaml``); each one gets a DAG per stage.

    ``mlcore.problems`` is light (yaml + pydantic, which Airflow loads anyway).
    """
    from mlcore.config import Settings
    from mlcore.problems import load_problems

    return list(load_problems(Settings().problems_dir).values())


def default_args() -> dict[str, Any]:
    """Task defaults: two retries for transient faults (bad input fails fast, see tasks.py)."""
    return {
        "owner": "batchloop",
        "retries": 2,
        "retry_delay": timedelta(seconds=int(os.environ.get("BATCHLOOP_RETRY_DELAY", "30"))),
        "on_failure_callback": notify_failure,
    }


def dag_kwargs(problem: str, stage: str, doc: str | None) -> dict[str, Any]:
    """The keyword arguments every Batchloop DAG shares: id ``<problem>__<stage>``, tags, docs."""
    return {
        "dag_id": f"{problem}__{stage}",
        "doc_md": doc,
        "start_date": pendulum.datetime(2024, 1, 1, tz="UTC"),
        "catchup": False,
        "max_active_runs": 1,
        "tags": [f"problem:{problem}", f"stage:{stage}", "batchloop"],
        "default_args": default_args(),
        "render_template_as_native_obj": False,
    }
