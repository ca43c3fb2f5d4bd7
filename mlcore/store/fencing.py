"""Fencing: a process that has lost the right to commit never commits.

An orchestrator runs each task try in a process it supervises (Airflow 3: the task SDK's
supervisor forks the task process). When the supervisor dies (its worker was killed, the host's
OOM killer picked it), the task process lives on as an orphan that nobody watches: the scheduler
later declares the try dead and retries it, while the orphan finishes its work and, unchecked,
registers a model or publishes a batch that a newer try is also producing (seen in an on-call
drill: a new model version registered after Airflow had marked the try failed).

:func:`bind_to_parent` ties the process's right to commit to the process that started it:

* every write transaction (:func:`mlcore.store.session.session_scope`) calls
  :func:`ensure_current` before it commits, so an orphan's commit is rolled back and raises
  :class:`TryNotCurrent`;
* a watchdog thread checks once per ``interval`` and ends an orphan at once (``os._exit``): it
  stops using memory and CPU, and whatever the orphan held (the retrain lease) can be released
  by the failure handlers without a live writer under it. Every writer is crash-safe (staged
  files, one transaction), so exiting mid-write leaves nothing half visible.

Plain CLI runs are not bound (nothing supervises them; Ctrl-C is their fence).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

EXIT_ORPHANED = 75  # EX_TEMPFAIL: the try is retried by its orchestrator


class TryNotCurrent(RuntimeError):
    """This process is no longer the live try of its task: it must not commit anything."""


@dataclass(frozen=True)
class _Binding:
    pid: int  # the bound process (a fork is not bound: it re-binds)
    parent: int  # the supervisor it must outlive
    alive: Callable[[], bool] | None  # the orchestrator's own "is my supervisor there" check


_binding: _Binding | None = None
_what = "this task try"  # the try the process runs now (updated by every bind)
_lock = threading.Lock()


def bind_to_parent(what: str, *, alive: Callable[[], bool] | None = None,
                   interval: float = 1.0, watchdog: bool = True) -> None:
    """Allow this process to commit only while its current parent lives and, when given,
    ``alive()`` holds (the orchestrator's own check, e.g. its supervisor channel is open: it
    also catches a process orphaned *before* it bound, whose parent is already the adopter).
    ``what`` names the try in the messages (e.g. ``dag/run/task try 2``). Idempotent per
    process: a second call only renames the try (in-process runs execute many tasks in one
    process). With ``watchdog``, an orphan found now or later exits at once."""
    global _binding, _what
    with _lock:
        _what = what
        if _binding is not None and _binding.pid == os.getpid():
            return
        _binding = binding = _Binding(pid=os.getpid(), parent=os.getppid(), alive=alive)
    if watchdog:
        if orphaned() is not None:
            _exit_orphaned()
        threading.Thread(target=_watch, args=(binding, interval), name="mlcore-fencing",
                         daemon=True).start()


def orphaned() -> str | None:
    """Why this process may no longer commit, or None while it may."""
    b = _binding
    if b is None or b.pid != os.getpid():
        return None
    if b.parent > 1 and os.getppid() != b.parent:  # bound under init: only ``alive`` tells
        gone = f"its supervisor (pid {b.parent}) is gone"
    elif b.alive is not None and not _safely(b.alive):
        gone = "its supervisor's channel is closed"
    else:
        return None
    return (f"{_what}: {gone}; the orchestrator will declare this try dead and retry it, so "
            "this process must not commit")


def _safely(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - a check that cannot answer does not fence
        return True


def ensure_current() -> None:
    """Raise :class:`TryNotCurrent` when this process was orphaned (see :func:`orphaned`)."""
    why = orphaned()
    if why is not None:
        raise TryNotCurrent(why)


def _exit_orphaned() -> None:
    why = orphaned()
    try:  # the log and stderr may be sockets to the dead supervisor: a broken pipe
        log.error("%s: exiting without committing", why)
        print(f"mlcore fencing: {why}: exiting without committing", file=sys.stderr, flush=True)
    except BaseException:  # noqa: BLE001, S110 - nothing may stop the exit
        pass
    finally:
        os._exit(EXIT_ORPHANED)


def _watch(binding: _Binding, interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        if _binding is not binding:
            return
        if orphaned() is not None:
            _exit_orphaned()
