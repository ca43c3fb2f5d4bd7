"""DAG defaults set once: retries, failure alerts, deadlines, tags, ids; the problem specs."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum

# Public airflow.sdk names; the 3.3.2 type stub (airflow/sdk/__init__.pyi) omits them.
from airflow.sdk import (  # type: ignore[attr-defined]
    AsyncCallback,
    DeadlineAlert,
    DeadlineReference,
)

from batchloop_airflow.alerting.callbacks import (
    deadline_missed,
    notify_failure,
    notify_lost_try,
    notify_run_failure,
)

_specs: dict[str, Any] = {}  # the specs problem_specs() loaded, for dag_kwargs' deadlines


def problem_specs() -> list[Any]:
    """Every declared problem (``problems/*.yaml``); each one gets a DAG per stage.

    ``mlcore.problems`` is light (yaml + pydantic, which Airflow loads anyway).
    """
    from mlcore.config import Settings
    from mlcore.problems import load_problems

    specs = load_problems(Settings().problems_dir)
    _specs.update(specs)
    return list(specs.values())


def default_args() -> dict[str, Any]:
    """Task defaults: two retries for transient faults (bad input fails fast, see tasks.py); an
    alert when a task has failed for good, or when a try was lost with its worker."""
    return {
        "owner": "batchloop",
        "retries": 2,
        "retry_delay": timedelta(seconds=int(os.environ.get("BATCHLOOP_RETRY_DELAY", "30"))),
        "on_failure_callback": notify_failure,
        "on_retry_callback": notify_lost_try,  # alerts only a lost try (its worker died)
    }


def deadlines_enabled() -> bool:
    """Whether DAGs get their deadlines in this process.

    Yes where Airflow parses DAGs for the scheduler (the dag-processor's parsing processes,
    which Airflow marks ``_AIRFLOW_PROCESS_CONTEXT=client``), no in a plain process running
    ``dag.test`` (``make demo``, the e2e tests): Airflow 3.3.2's ``dag.test`` crashes at the
    end of every successful run of a DAG with a deadline (it looks the deadline up by id in a
    DAG it only serialized in memory: ``'dict' object has no attribute 'hex'``), and nothing
    there checks deadlines anyway. ``BATCHLOOP_DEADLINES=on|off`` overrides.
    """
    forced = os.environ.get("BATCHLOOP_DEADLINES", "").strip().lower()
    if forced in ("on", "off"):
        return forced == "on"
    return os.environ.get("_AIRFLOW_PROCESS_CONTEXT") == "client"


def deadline(problem: str, stage: str) -> DeadlineAlert | None:
    """The run deadline of a stage from the spec (``alerts.deadline_minutes``): a run still
    unfinished that long after it was queued sends a ``deadline_missed`` alert. None when the
    spec sets none for the stage."""
    spec = _specs.get(problem)
    if spec is None:
        from mlcore.problems import get_problem

        spec = get_problem(problem)
    minutes = spec.alerts.deadline_minutes.get(stage)
    if minutes is None:
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                         interval=timedelta(minutes=minutes), name=f"{stage} deadline",
                         callback=AsyncCallback(deadline_missed, kwargs={"minutes": minutes}))


def start_paused() -> bool:
    """Whether new Batchloop DAGs are created paused: no by default, so the asset chain runs from
    the first trigger (Airflow 3.3 queues asset events only for unpaused consumers: a paused
    stage drops them). ``BATCHLOOP_START_PAUSED=true`` keeps them paused (Airflow's own
    ``dags_are_paused_at_creation`` still applies to other DAGs). Applies when a DAG is first
    created only: a DAG someone paused stays paused."""
    return os.environ.get("BATCHLOOP_START_PAUSED", "").strip().lower() in ("1", "true", "yes",
                                                                            "on")


def dag_kwargs(problem: str, stage: str, doc: str | None) -> dict[str, Any]:
    """The keyword arguments every Batchloop DAG shares: id ``<problem>__<stage>``, tags, docs,
    task defaults, active from creation (``start_paused``), the DAG-level alert sweep (tasks
    killed without their own callback) and the stage's deadline."""
    return {
        "dag_id": f"{problem}__{stage}",
        "doc_md": doc,
        "start_date": pendulum.datetime(2024, 1, 1, tz="UTC"),
        "catchup": False,
        "max_active_runs": 1,
        "is_paused_upon_creation": start_paused(),
        "tags": [f"problem:{problem}", f"stage:{stage}", "batchloop"],
        "default_args": default_args(),
        "on_failure_callback": notify_run_failure,
        "deadline": deadline(problem, stage) if deadlines_enabled() else None,
        "render_template_as_native_obj": False,
    }
