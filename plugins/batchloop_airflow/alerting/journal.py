"""The sent-alerts journal: ``MLCORE_HOME/alerts/<dedup_key>.json``, one file per alert, and the
open episodes of lasting conditions (``alerts/episodes/<name>``: see ``episode``).

It is both the dedup (the first path to create the file sends; a task's own failure callback
and the DAG-level sweep that finds killed tasks never page twice for one failure) and the audit
trail (the payload plus, per channel, ``sent`` or why not). ``MLCORE_HOME`` is shared by workers,
the dag-processor and the triggerer (one host, or the compose stack's ``mlcore-state`` volume).
When the journal cannot be written the alert is sent anyway: a duplicate beats a lost page.

Light at import (stdlib only).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("batchloop.alerts")
STALE_SECONDS = 300  # a claim never completed (its sender died) is taken over after this


def journal_dir() -> Path | None:
    """``<MLCORE_HOME>/alerts`` (created), or None when it cannot be used."""
    try:
        from mlcore.config import Settings

        path = Settings().home / "alerts"
        path.mkdir(parents=True, exist_ok=True)
        return path
    except Exception as exc:  # noqa: BLE001 - no journal is a degraded mode, not a failure
        log.warning("BATCHLOOP ALERT journal unavailable (%s): alerts are not deduplicated",
                    type(exc).__name__)
        return None


class Claim:
    """The right to send one alert; ``record`` writes what each channel did."""

    def __init__(self, path: Path | None, payload: dict[str, Any]) -> None:
        self.path, self.payload = path, payload

    def record(self, deliveries: dict[str, str]) -> None:
        """Complete the journal entry with each channel's outcome (atomic rewrite)."""
        if self.path is None:
            return
        entry = {**self.payload, "deliveries": deliveries,
                 "completed_at": datetime.now(UTC).isoformat(timespec="seconds")}
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(entry, indent=2, default=str))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("BATCHLOOP ALERT journal entry %s not completed: %s", self.path.name, exc)


def claim(payload: dict[str, Any]) -> Claim | None:
    """Claim ``payload['dedup_key']``: a ``Claim`` to send it, or None if it was already sent
    (or is being sent) by another path."""
    folder = journal_dir()
    if folder is None:
        return Claim(None, payload)
    path = folder / f"{payload['dedup_key']}.json"
    entry = json.dumps({**payload, "claimed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "claimed_by_pid": os.getpid()}, indent=2, default=str)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(path):
                return None
            path.unlink(missing_ok=True)  # its sender died before completing it: take over
            continue
        except OSError as exc:
            log.warning("BATCHLOOP ALERT journal not writable (%s): sending undeduplicated", exc)
            return Claim(None, payload)
        with os.fdopen(fd, "w") as fh:
            fh.write(entry)
        return Claim(path, payload)
    return None


def _stale(path: Path) -> bool:
    try:
        entry = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return False
    return "deliveries" not in entry and age > STALE_SECONDS


def alerted(key_prefix: str, try_number: int | None) -> bool:
    """Whether an alert was journaled for this task instance (``ti_key``): for that try, or for
    any try when the try is unknown."""
    folder = journal_dir()
    if folder is None:
        return False
    if try_number is not None:
        return (folder / f"{key_prefix}-t{try_number}.json").exists()
    return any(folder.glob(f"{key_prefix}-t*.json"))


def read(dedup_key: str) -> dict[str, Any] | None:
    """A journal entry (for tests and operators), None if absent."""
    folder = journal_dir()
    path = folder / f"{dedup_key}.json" if folder else None
    if path is None or not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def episode(name: str) -> str:
    """The start (UTC, ISO) of the named condition's current episode: the one already open, else
    a new one from now. A condition that lasts keeps its start, so an alert keyed on it is sent
    once per episode (``end_episode`` when it clears; it then pages again if it comes back).
    Without a journal every call is a new episode (a duplicate beats a lost page)."""
    folder = journal_dir()
    now = datetime.now(UTC).isoformat()  # to the microsecond: a new episode is a new key
    if folder is None:
        return now
    path = folder / "episodes" / name
    try:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            return path.read_text().strip() or now
        except OSError:
            return now
    except OSError as exc:
        log.warning("BATCHLOOP ALERT episode %s not recorded: %s", name, exc)
        return now
    with os.fdopen(fd, "w") as fh:
        fh.write(now)
    return now


def end_episode(name: str) -> bool:
    """Close the named condition's episode (it cleared); True if one was open."""
    folder = journal_dir()
    if folder is None:
        return False
    path = folder / "episodes" / name
    try:
        path.unlink()
        return True
    except OSError:
        return False
