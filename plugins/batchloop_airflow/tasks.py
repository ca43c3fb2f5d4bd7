"""Task helpers: where a run's batch IDs come from, and failing fast on bad input."""

from __future__ import annotations

import os
import select
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

BATCH_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # mlcore.batches.BATCH_ID_RE, checked
# again there: the form refuses bad IDs early, mlcore refuses them whatever the caller.


def batch_id_param(what: str) -> Param:
    """The optional ``batch_id`` Param of stages that act on batches named by asset events."""
    return Param(None, type=["null", "string"], pattern=BATCH_ID_PATTERN, title="Batch ID",
                 description=f"Manual runs: the batch to {what}. Empty: the batches of the "
                             "triggering asset events.")


# DAG stage -> the stage in mlcore.backlog (stages whose batches come from asset events)
BACKLOG_STAGES = {"materialize_features": "materialize", "score_batch": "score",
                  "monitor_model": "monitor"}


@task
def resolve_batches() -> list[str]:
    """The run's batch IDs (Param, or asset events plus the stage's backlog): the list the
    per-batch task maps over."""
    return batch_ids_from_context(get_current_context())


def batch_ids_from_context(context: Any) -> list[str]:
    """The run's batches: the ``batch_id`` Param if given (run whatever its state); else the
    triggering asset events' batches not done yet, plus up to ``CATCH_UP_PER_RUN`` published
    batches the metadata store shows as missing this stage (``mlcore.backlog``): a dropped or
    coalesced event delays a batch, never skips it.

    Raises:
        AirflowFailException: no Param and no event (a manual run must name its batch).
        AirflowSkipException: every event's batch is done and nothing is missing.
    """
    explicit = (context.get("params") or {}).get("batch_id")
    if explicit:
        return [explicit]
    ids: list[str] = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            bid = (event.extra or {}).get("batch_id")
            if bid and bid not in ids:
                ids.append(bid)
    if not ids:
        raise AirflowFailException("no batch_id: set the batch_id Param or trigger from an asset "
                                   "event that carries one")
    problem, _, dag_stage = str(context["dag"].dag_id).partition("__")
    stage = BACKLOG_STAGES.get(dag_stage)
    if stage is None:
        return ids
    from batchloop_airflow.connections import settings
    from mlcore.backlog import batches_to_run

    run, done, caught_up = batches_to_run(problem, stage, ids, settings().db_url)
    print(f"events: {', '.join(ids)}; already done (skipped): {', '.join(done) or 'none'}; "
          f"caught up (missing {stage}, no event seen): {', '.join(caught_up) or 'none'}")
    if not run:
        raise AirflowSkipException(f"nothing to do: {', '.join(done)} already had {stage}, "
                                   "and no published batch is missing it")
    return run


def fence_try() -> None:
    """Tie this task process's right to commit to its supervisor (``mlcore.store.fencing``): a try
    whose worker or supervisor was killed is declared dead by the scheduler and retried; its
    orphaned process must neither register a model nor publish a batch meanwhile, nor hold on
    to the retrain lease. The watchdog ends it within a second; a commit it reaches first is
    rolled back."""
    from mlcore.store.fencing import bind_to_parent

    try:
        ti = get_current_context()["ti"]
        what = f"{ti.dag_id}/{ti.run_id}/{ti.task_id} try {ti.try_number}"
    except Exception:  # noqa: BLE001 - outside a task (a helper called directly): still fence
        what = "this task try"
    channel = supervisor_channel()
    bind_to_parent(what, alive=None if channel is None else partial(peer_open, channel))


def supervisor_channel() -> int | None:
    """The file descriptor of the task process's socket to its supervisor (Airflow's task SDK
    talks to it over a socketpair), or None in-process (``dag.test``) or when unknown."""
    try:
        from airflow.sdk.execution_time import task_runner

        sock = getattr(getattr(task_runner, "SUPERVISOR_COMMS", None), "socket", None)
        fd = sock.fileno() if sock is not None else -1
        return fd if fd >= 0 and stat.S_ISSOCK(os.fstat(fd).st_mode) else None
    except Exception:  # noqa: BLE001 - SDK internals moved: the parent-pid check still fences
        return None


def peer_open(fd: int) -> bool:
    """Whether the other end of the stream socket ``fd`` is still open (poll, reads nothing).
    A supervisor that died closed its end, even when this process was orphaned before it
    bound (its parent is then already the adopter, so only this tells)."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP | select.POLLHUP)
    return not any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in poller.poll(0))


@contextmanager
def fail_fast() -> Iterator[None]:
    """The stage task's preamble: fence the try (:func:`fence_try`), then turn mlcore's
    bad-input errors into a failure without retries (retrying cannot help); "nothing to do yet"
    (no champion) into a skip. Anything else stays retryable."""
    fence_try()
    from mlcore.batches import BatchConflict, BatchError
    from mlcore.model.registry import AliasConflict, ArtifactIntegrityError, ModelNotFound
    from mlcore.model.splits import NotEnoughData
    from mlcore.problems import ProblemNotFound

    try:
        yield
    except ModelNotFound as exc:
        raise AirflowSkipException(str(exc)) from exc
    except (BatchError, BatchConflict, NotEnoughData, ProblemNotFound, AliasConflict,
            ArtifactIntegrityError, FileNotFoundError, ValueError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


@task(trigger_rule="none_failed")
def publish_monitoring_page(problem: str) -> str:
    """Rewrite the problem's static monitoring page (after each monitoring or retrain run) and
    log where it is."""
    from batchloop_airflow.connections import settings
    from mlcore.reports.monitoring_page import write_monitoring_page

    page = write_monitoring_page(problem, settings())
    print(f"monitoring page: {page.path} ({page.bytes:,} bytes)")
    return str(page.path)
