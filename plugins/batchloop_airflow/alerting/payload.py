"""What an on-call alert says: its kind, where, which batch, what broke and what to do.

Six kinds, one payload shape (a flat JSON object; ``alerting.channels`` renders it for humans):

* ``task_failed``: a task raised and failed for good (retries used up or a fail-fast error).
* ``task_killed``: a task failed without its own failure handler running: the process was
  SIGKILLed (the kernel's OOM killer) or its worker was lost. Found by the DAG-level sweep.
* ``deadline_missed``: a run was still unfinished at the spec's deadline for its stage.
* ``challenger_skipped``: scoring succeeded with the champion, but the shadow challenger's
  artifact could not be loaded (missing or tampered), so it was not scored.
* ``batch_stalled``: a published batch has been ready for a stage longer than the spec's
  deadline for it and the stage has not run on it (``mlcore.backlog``; the backlog sweep).
* ``stream_unhealthy``: online ingestion needs a look: lag or dead letters over the spec's
  ``stream:`` thresholds, a sealed segment rejected, or the stream engine unreachable
  (``batchloop_airflow.stream_health``; the backlog sweep).

Every alert links to the RUNBOOK.md section for its kind (or error class, or stage) and carries a
``dedup_key``: the same failure found by two paths (task callback and the sweep) is one alert.
Light at import (stdlib only): DAG files import it at parse time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import quote

KIND_FAILED, KIND_KILLED, KIND_DEADLINE = "task_failed", "task_killed", "deadline_missed"
KIND_CHALLENGER, KIND_STALLED = "challenger_skipped", "batch_stalled"
KIND_STREAM = "stream_unhealthy"
TITLES = {KIND_FAILED: "TASK FAILED", KIND_KILLED: "TASK KILLED", KIND_DEADLINE: "DEADLINE MISSED",
          KIND_CHALLENGER: "CHALLENGER SKIPPED", KIND_STALLED: "BATCH STALLED",
          KIND_STREAM: "STREAM UNHEALTHY"}

# RUNBOOK.md anchors (``<a id="...">``): by mlcore error class, else by kind, else by stage.
ERROR_ANCHORS = {
    "BatchRejected": "batch-rejected", "InvalidBatchId": "batch-rejected",
    "LabelsRejected": "batch-rejected", "BatchNotFound": "batch-not-found",
    "BatchConflict": "batch-conflict", "LabelConflict": "batch-conflict",
    "UnfairHoldout": "unfair-holdout", "DriftCheckFailed": "drift-check-failed",
    "DriftBudgetExceeded": "drift-check-failed", "NotEnoughData": "not-enough-data",
    "AliasConflict": "alias-conflict", "ArtifactTampered": "artifact-tampered",
    "ArtifactMissing": "artifact-tampered", "DataDamaged": "data-damaged",
    "ProblemNotFound": "bad-input", "FileNotFoundError": "bad-input",
}
KIND_ANCHORS = {KIND_KILLED: "task-killed", KIND_DEADLINE: "deadline-missed",
                KIND_CHALLENGER: "artifact-tampered", KIND_STALLED: "batch-stalled",
                KIND_STREAM: "stream-unhealthy"}
DELIVERY_ANCHOR = "alert-delivery-failed"
AIRFLOW_DEFAULT_BASE = "http://localhost:8080"  # [api] base_url unset: what ti.log_url uses
# Airflow's wrappers around the real error (fail_fast raises AirflowFailException from it).
_WRAPPERS = {"AirflowFailException", "AirflowException", "AirflowTaskTerminated"}


def runbook_link(anchor: str) -> str:
    """A link that opens the runbook at ``anchor``: ``<BATCHLOOP_RUNBOOK_URL>#<anchor>`` (a
    deployment's own copy, e.g. in its Git host), else the Batchloop view's runbook page on the
    Airflow UI (``<[api] base_url>/batchloop/runbook#<anchor>``)."""
    own = os.environ.get("BATCHLOOP_RUNBOOK_URL")
    return f"{own or ui_base() + '/batchloop/runbook'}#{anchor}"


def stage_anchor(stage: str) -> str:
    """The RUNBOOK.md section of a stage (``ingest_batch`` -> ``stage-ingest-batch``)."""
    return "stage-" + stage.replace("_", "-")


def anchor_for(kind: str, stage: str, error_class: str | None) -> str:
    """The most specific RUNBOOK.md section for an alert."""
    if kind == KIND_FAILED and error_class in ERROR_ANCHORS:
        return ERROR_ANCHORS[error_class]
    return KIND_ANCHORS.get(kind) or stage_anchor(stage)


def error_class(exc: BaseException | None) -> str | None:
    """The class name of the real error: the cause Airflow's fail-fast wrapper was raised from."""
    while exc is not None and type(exc).__name__ in _WRAPPERS and exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__ if exc is not None else None


def ti_key(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """A short stable hash naming one task instance (the prefix of its dedup keys)."""
    return hashlib.sha256(f"{dag_id}|{run_id}|{task_id}|{map_index}".encode()).hexdigest()[:12]


def dedup_key(dag_id: str, run_id: str, task_id: str, map_index: int,
              try_number: int | None) -> str:
    """One key per failed try of a task instance, whichever path reports it."""
    return f"{ti_key(dag_id, run_id, task_id, map_index)}-t{try_number or 0}"


def split_dag_id(dag_id: str) -> tuple[str, str]:
    """``<problem>__<stage>`` -> (problem, stage)."""
    problem, _, stage = dag_id.partition("__")
    return problem, stage or dag_id


# errors raised before a batch exists: `mlcore lineage` would only answer "unknown batch"
NO_BATCH_YET = {"FileNotFoundError", "ProblemNotFound", "InvalidBatchId"}


def rerun_command(dag_id: str, run_id: str, batch_id: str | None,
                  conf: dict[str, Any] | None) -> str | None:
    """``airflow dags trigger`` of a new run with the failed run's Params (an asset-triggered
    run: the batch it failed on). Not ``airflow dags clear --only-failed``: it answers a
    ``TypeError`` (CLI) or HTTP 500 (REST, UI "Clear") on a failed run whose stage has a
    deadline (apache/airflow#70368, Airflow 3.3), and every stage is idempotent per batch, so
    a new run redoes only what is missing. None for the sweep (it runs again by itself)."""
    _, stage = split_dag_id(dag_id)
    if stage == "sweep_backlog":
        return None
    given = {k: v for k, v in (conf or {}).items() if v not in (None, "", [])}
    if batch_id and stage in ("materialize_features", "score_batch", "monitor_model"):
        given["batch_id"] = batch_id  # the batch this alert is about (a run can map over many)
    if stage == "retrain_model":
        given["reason"] = f"re-run of {run_id}"
    from mlcore.errors import redact  # a source URL's password never goes out in an alert

    return (f"airflow dags trigger {shlex.quote(dag_id)} -c "
            f"{shlex.quote(redact(json.dumps(given)))}"
            "  # a new run with the same Params, once the cause is fixed")


def next_steps(kind: str, dag_id: str, run_id: str, batch_id: str | None,
               error_cls: str | None = None, conf: dict[str, Any] | None = None) -> list[str]:
    """The exact commands to inspect, re-run and (if a bad model went out) roll back."""
    problem, _ = split_dag_id(dag_id)
    dag, run = shlex.quote(dag_id), shlex.quote(run_id)
    steps = [f"airflow tasks states-for-dag-run {dag} {run}",
             f"mlcore batches --problem {problem}"]
    if batch_id and error_cls not in NO_BATCH_YET:
        steps.append(f"mlcore lineage --problem {problem} --batch {shlex.quote(batch_id)}")
    rerun = rerun_command(dag_id, run_id, batch_id, conf)
    if rerun and kind not in (KIND_DEADLINE, KIND_CHALLENGER):  # nothing failed: no re-run
        steps.append(rerun)
    steps.append(f"mlcore rollback --problem {problem} --reason '<why>'"
                 "  # only if a bad model was promoted")
    return steps


def task_payload(*, kind: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1,
                 try_number: int | None, batch_id: str | None, error: str | None,
                 error_cls: str | None = None, log_url: str | None = None,
                 exit_info: dict[str, Any] | None = None,
                 conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """The alert of one task instance that failed for good (``task_failed``/``task_killed``);
    ``conf`` is the run's (for the re-run command)."""
    problem, stage = split_dag_id(dag_id)
    return {
        "kind": kind, "title": TITLES[kind], "problem": problem, "stage": stage,
        "dag_id": dag_id, "task_id": task_id, "map_index": map_index, "run_id": run_id,
        "try_number": try_number, "batch_id": batch_id, "error": error, "error_class": error_cls,
        **({"exit": exit_info} if kind == KIND_KILLED else {}),
        "log_url": log_url, "runbook": runbook_link(anchor_for(kind, stage, error_cls)),
        "dedup_key": dedup_key(dag_id, run_id, task_id, map_index, try_number),
        "next_steps": next_steps(kind, dag_id, run_id, batch_id, error_cls, conf),
    }


def killed_error(exit_info: dict[str, Any] | None) -> str:
    """The ``error`` text of a killed task, with the signal/exit code when the log had it."""
    if exit_info and exit_info.get("signal"):
        return (f"task process killed by {exit_info['signal']} (exit code "
                f"{exit_info.get('exit_code')}): likely out of memory (OOM killer); its failure "
                "handler never ran")
    if exit_info and exit_info.get("exit_code") is not None:
        return (f"task process exited abnormally (exit code {exit_info['exit_code']}) without "
                "reporting an error")
    return ("task process died without reporting an error (killed, e.g. by the OOM killer, or "
            "its worker was lost); no exit code found in the task log")


def process_exit(dag_id: str, run_id: str, task_id: str, map_index: int,
                 try_number: int | None) -> dict[str, Any] | None:
    """How the task process ended, from the supervisor's lines in the local task log.

    The supervisor logs ``Process terminated by signal`` (with ``signal``/``signal_name``) or
    ``Process exited abnormally`` (``exit_code``). Reads the default log file layout under
    ``[logging] base_log_folder``; None when the file is not on this host.
    """
    path = task_log_dir(dag_id, run_id, task_id, map_index)
    if path is None or try_number is None:
        return None
    log_file = path / f"attempt={try_number}.log"
    try:
        with log_file.open("rb") as fh:
            fh.seek(max(0, log_file.stat().st_size - 65536))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "Process terminated by signal" not in line and "Process exited abnormally" not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        code = event.get("signal", event.get("exit_code"))
        return {"exit_code": code, "signal": event.get("signal_name"),
                "source": str(log_file.name)}
    return None


def task_log_dir(dag_id: str, run_id: str, task_id: str, map_index: int) -> Path | None:
    """The folder of a task instance's attempt logs (Airflow's default filename template)."""
    try:
        from airflow.configuration import conf

        base = Path(conf.get("logging", "base_log_folder"))
    except Exception:  # noqa: BLE001 - no Airflow config here: no local logs either
        return None
    path = base / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return path / f"map_index={map_index}" if map_index >= 0 else path


def last_attempt(dag_id: str, run_id: str, task_id: str, map_index: int) -> int | None:
    """The highest ``attempt=N.log`` of a task instance on this host, if any."""
    path = task_log_dir(dag_id, run_id, task_id, map_index)
    tries = [int(p.stem.split("=", 1)[1]) for p in (path.glob("attempt=*.log") if path else [])
             if p.stem.split("=", 1)[1].isdigit()]
    return max(tries) if tries else None


def ui_base() -> str:
    """The Airflow UI's base URL (``[api] base_url``), with the fallback Airflow's own task
    ``log_url`` uses, so every link of one alert points at the same host."""
    try:
        from airflow.configuration import conf

        base = str(conf.get("api", "base_url", fallback="") or "")
    except Exception:  # noqa: BLE001 - no Airflow config here: Airflow's own default
        base = ""
    return (base or AIRFLOW_DEFAULT_BASE).rstrip("/")


def run_url(dag_id: str, run_id: str) -> str:
    """The Airflow UI page of a DAG run (:func:`ui_base`)."""
    return f"{ui_base()}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def ti_log_url(dag_id: str, run_id: str, task_id: str, map_index: int,
               try_number: int | None) -> str | None:
    """The UI log page of a try (the same URL as Airflow's ``ti.log_url``)."""
    run = run_url(dag_id, run_id)
    mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
    return f"{run}/tasks/{task_id}{mapped}" + (f"?try_number={try_number}" if try_number else "")


def deadline_payload(*, dag_id: str, run_id: str, batch_id: str | None, minutes: float,
                     deadline_time: str | None, queued_at: str | None, state: str | None,
                     deadline_id: str | None) -> dict[str, Any]:
    """The alert of a run still unfinished at its stage's deadline (``deadline_missed``)."""
    problem, stage = split_dag_id(dag_id)
    key = hashlib.sha256(f"{dag_id}|{run_id}|{deadline_id}".encode()).hexdigest()[:12]
    return {
        "kind": KIND_DEADLINE, "title": TITLES[KIND_DEADLINE], "problem": problem,
        "stage": stage, "dag_id": dag_id, "task_id": None, "run_id": run_id,
        "try_number": None, "batch_id": batch_id,
        "error": (f"run not finished {minutes:g} min after it was queued (queued {queued_at}, "
                  f"deadline {deadline_time}, state now {state}); the spec's "
                  f"alerts.deadline_minutes.{stage}"),
        "error_class": None, "deadline_minutes": minutes, "deadline_time": deadline_time,
        "log_url": run_url(dag_id, run_id),
        "runbook": runbook_link(KIND_ANCHORS[KIND_DEADLINE]),
        "dedup_key": f"{key}-deadline",
        "next_steps": next_steps(KIND_DEADLINE, dag_id, run_id, batch_id),
    }


def challenger_payload(*, dag_id: str, run_id: str, task_id: str, map_index: int,
                       batch_id: str, version: int, reason: str) -> dict[str, Any]:
    """The alert of a scoring run that skipped its challenger (``challenger_skipped``): the
    champion's predictions stand; the challenger's shadow evidence has a gap until it is fixed."""
    problem, stage = split_dag_id(dag_id)
    key = hashlib.sha256(f"{ti_key(dag_id, run_id, task_id, map_index)}|v{version}".encode())
    return {
        "kind": KIND_CHALLENGER, "title": TITLES[KIND_CHALLENGER], "problem": problem,
        "stage": stage, "dag_id": dag_id, "task_id": task_id, "map_index": map_index,
        "run_id": run_id, "try_number": None, "batch_id": batch_id,
        "error": (f"challenger v{version} not scored on batch {batch_id} (the champion's "
                  f"scores are stored): {reason}"),
        "error_class": reason.split(":", 1)[0], "challenger_version": version,
        "log_url": run_url(dag_id, run_id),
        "runbook": runbook_link(KIND_ANCHORS[KIND_CHALLENGER]),
        "dedup_key": f"{key.hexdigest()[:12]}-challenger",
        "next_steps": [f"mlcore models --problem {problem}",
                       f"mlcore lineage --problem {problem} --model {version}",
                       *next_steps(KIND_CHALLENGER, dag_id, run_id, batch_id)[:1]],
    }


def stalled_payload(*, problem: str, stage: str, dag_stage: str, batch_id: str,
                    ready_since: str, minutes: float, sweep_dag_id: str,
                    sweep_run_id: str) -> dict[str, Any]:
    """The alert of a batch ready for ``stage`` (``mlcore.backlog``) for longer than the spec's
    deadline of its DAG, with no run having done it (``batch_stalled``); once per batch and
    stage. ``dag_id`` is the stalled stage's DAG; the sweep run that found it is in ``run_id``."""
    dag_id = f"{problem}__{dag_stage}"
    key = hashlib.sha256(f"{problem}|{stage}|{batch_id}".encode()).hexdigest()[:12]
    bid, dag = shlex.quote(batch_id), shlex.quote(dag_id)
    return {
        "kind": KIND_STALLED, "title": TITLES[KIND_STALLED], "problem": problem,
        "stage": dag_stage, "dag_id": dag_id, "task_id": None, "run_id": sweep_run_id,
        "try_number": None, "batch_id": batch_id,
        "error": (f"batch {batch_id} has been ready for {stage} since {ready_since} and is still "
                  f"missing it, past the {minutes:g}-minute deadline of {dag_stage} (an asset "
                  "event was lost or the stage's runs fail or are paused); the sweep nudged it"),
        "error_class": None, "deadline_minutes": minutes,
        "log_url": run_url(sweep_dag_id, sweep_run_id),
        "runbook": runbook_link(KIND_ANCHORS[KIND_STALLED]),
        "dedup_key": f"{key}-stalled",
        "next_steps": [f"mlcore backfill --problem {problem} --stage {stage} --batches {bid}",
                       f"airflow dags list-runs {dag} --state failed",
                       f"airflow dags trigger {dag} -c '{{\"batch_id\": \"{batch_id}\"}}'"],
    }


# what to run first per stream finding (after ``mlcore stream status``)
_STREAM_STEPS = {
    "lag": ["mlcore stream serve --problem {p}  # if no service is running for it (one per "
            "problem); else give it more CPU or a higher stream.read_count"],
    "dead_letters": ["redis-cli -u \"$MLCORE_STREAM_URL\" XREVRANGE {dead} + - COUNT 10  "
                     "# the newest dead letters with _rule and _reason"],
    "rejected": ["mlcore batches --problem {p}  # the rejected stream batch and its reason"],
    "unreachable": ["redis-cli -u \"$MLCORE_STREAM_URL\" ping  # then restart Redis; the "
                    "service reads on from its group's position"],
}


def stream_payload(*, problem: str, finding: str, text: str, status: dict[str, Any],
                   episode: str, thresholds: dict[str, int], sweep_dag_id: str,
                   sweep_run_id: str) -> dict[str, Any]:
    """The alert of one stream finding (``stream_unhealthy``; ``stream_health.health``).

    ``episode`` names the condition's occurrence (when it started, or for ``rejected`` how many
    segments were rejected): the dedup key is per problem, finding and episode, so a condition
    that lasts pages once and one that clears and comes back pages again."""
    key = hashlib.sha256(f"{problem}|stream|{finding}|{episode}".encode()).hexdigest()[:12]
    last = status.get("last_sealed") or {}
    batch = last.get("batch_id") if finding == "rejected" and last.get("state") == "rejected" \
        else None
    dead = f"batchloop:{problem}:dead"
    steps = [f"mlcore stream status --problem {problem} --json",
             *(s.format(p=problem, dead=dead) for s in _STREAM_STEPS.get(finding, []))]
    figures = {k: status.get(k) for k in ("lag", "pending", "dead_letters", "open_events",
                                          "events_taken") if k in status}
    return {
        "kind": KIND_STREAM, "title": TITLES[KIND_STREAM], "problem": problem,
        "stage": "stream", "dag_id": sweep_dag_id, "task_id": None, "run_id": sweep_run_id,
        "try_number": None, "batch_id": batch, "error": text, "error_class": None,
        "finding": finding, "since": episode, "stream": figures, "thresholds": thresholds,
        "log_url": run_url(sweep_dag_id, sweep_run_id),
        "runbook": runbook_link(KIND_ANCHORS[KIND_STREAM]),
        "dedup_key": f"{key}-stream",
        "next_steps": steps,
    }
