"""The CLI's error contract: every failure is one line (the cause, the batch when there is
one, the next command) and one documented exit code (README, "Exit codes").

Matched by class name along ``type(exc).__mro__`` (also of a DB-API error's ``.orig`` and of
``__cause__``), so the drivers (psycopg, sqlite3), sqlalchemy and pyarrow stay lazy imports.
"""

from __future__ import annotations

import errno
import os
import re

from mlcore.config import get_settings

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_REFUSED = 0, 1, 2, 3, 4
EXIT_UNAVAILABLE, EXIT_NO_SCHEMA, EXIT_STORAGE, EXIT_DAMAGED = 5, 6, 7, 8
EXIT_INTERRUPTED = 130

_CONFLICT = {"BatchConflict", "AliasConflict"}
_UNAVAILABLE = {"DatabaseUnavailable", "OperationalError", "InterfaceError"}
_NO_SCHEMA = {"SchemaMissing", "UndefinedTable", "NoSuchTableError"}
_DAMAGED = {"DataDamaged", "ArtifactTampered", "ArtifactMissing", "ArrowInvalid",
            "ArrowException", "ParserError", "EmptyDataError"}
_BAD_URL = {"ArgumentError"}
_DISK_FULL = {"DiskFull"}  # PostgreSQL SQLSTATE 53100
_STORAGE_ERRNO = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                  errno.EIO: "I/O error", errno.EROFS: "read-only file system"}
_BAD_INPUT_BUILTINS = (ValueError, LookupError, FileNotFoundError, NotADirectoryError,
                       IsADirectoryError)
_REPAIR = "run `mlcore repair --check` to list what is damaged"


def redact(text: str) -> str:
    """``text`` with the password of any URL (``://user:pass@``) or DSN (``password=``) hidden."""
    # greedy to the last "@" of the URL: an unescaped "@" in a password hides nothing of it
    text = re.sub(r"(://[^:/@\s'\"]*):[^\s'\"]*@", r"\1:***@", text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def one_line(text: str) -> str:
    """One stderr line: the message's lines joined, sqlalchemy's "Background on" link dropped."""
    lines = [ln.strip() for ln in str(text).splitlines()]
    lines = [ln for ln in lines if ln and ln != "^" and not ln.startswith(
        ("(Background on this error at", "LINE "))]  # + the SQL context of a server error
    return redact("; ".join(lines))


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the DB-API error it wraps (``.orig``), then its explicit causes, likewise."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 16:
        out.append(cur)
        orig = getattr(cur, "orig", None)
        if isinstance(orig, BaseException) and orig not in out:
            out.append(orig)
        cur = cur.__cause__
    return out


def _message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # sqlalchemy's str() adds the SQL and its parameters
    return one_line(str(orig if isinstance(orig, BaseException) else exc) or type(exc).__name__)


def _db_url() -> str:
    try:
        return get_settings().db_url
    except Exception:  # noqa: BLE001 - the settings themselves may be what failed
        return os.environ.get("MLCORE_DATABASE_URL", "")


def _sqlite_path(url: str) -> str | None:
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return path.split("?", 1)[0] or None


def _infra(exc: BaseException, command: str) -> tuple[int, str] | None:
    """Exit code and line for a database, storage or damaged-data failure; None otherwise."""
    rerun = f"then re-run `mlcore {command}`"
    url = _db_url()
    where = redact(url) or "the metadata store"
    db_file = _sqlite_path(url)
    names, text = _names(exc), _message(exc)
    low = text.lower()
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNO:
        label = _STORAGE_ERRNO[exc.errno]
        text = text if exc.filename is None or str(exc.filename) in text else (
            f"{text}: {exc.filename}")
        return EXIT_STORAGE, f"{label}: {text} (free space or fix the volume, {rerun})"
    if names & _DISK_FULL or any(s in low for s in (
            "database or disk is full", "disk i/o error", "attempt to write a readonly database")):
        return EXIT_STORAGE, (f"storage error: {text} ({where}; free space or fix the volume, "
                              f"{rerun})")
    if names & _NO_SCHEMA or "no such table" in low or (
            "relation" in low and "does not exist" in low):
        if "mlcore init" in text:
            return EXIT_NO_SCHEMA, text if low.startswith("metadata store") else (
                f"metadata store not initialised: {text}")
        return EXIT_NO_SCHEMA, (f"metadata store not initialised: {text} ({where}; "
                                "run `mlcore init`)")
    if "file is not a database" in low or "database disk image is malformed" in low:
        return EXIT_DAMAGED, (f"damaged metadata store: {text} ({where}; restore it from a "
                              "backup, or move it aside and run `mlcore init`)")
    if names & _DAMAGED:
        hint = "" if "mlcore repair" in text else f" ({_REPAIR}, {rerun})"
        label = "" if low.startswith("damaged") else "damaged data: "
        return EXIT_DAMAGED, f"{label}{text}{hint}"
    if names & _BAD_URL:
        return EXIT_BAD_INPUT, (f"bad database URL: {text} (check MLCORE_DATABASE_URL={where!r}: "
                                "e.g. postgresql+psycopg://user@host:5432/db or sqlite:///path)")
    if names & _UNAVAILABLE:
        if db_file is not None and "unable to open database file" in low:
            if not os.path.exists(db_file):
                return EXIT_NO_SCHEMA, (f"metadata store not initialised: {db_file} does not "
                                        "exist (run `mlcore init`)")
            return EXIT_STORAGE, (f"storage error: {text} ({db_file}; check its permissions, "
                                  f"{rerun})")
        hints = [] if "@" in url and url.split("@", 1)[1].split("/")[0] in text else [where]
        if "database is locked" in low:
            hints.append("another process holds the write lock")
        elif "MLCORE_DATABASE_URL" not in text:
            hints.append("check the database server and MLCORE_DATABASE_URL")
        label = "" if low.startswith("database") else "database unavailable: "
        return EXIT_UNAVAILABLE, f"{label}{text} ({'; '.join([*hints, rerun])})"
    return None


_REDIS_DOWN = {"ConnectionError", "TimeoutError", "BusyLoadingError"}


def classify(exc: BaseException, command: str = "<command>") -> tuple[int, str]:
    """The exit code and the one stderr line for an exception escaping a command."""
    names = _names(exc)
    if names & _CONFLICT:
        return EXIT_CONFLICT, f"conflict: {_message(exc)}"
    if any(type(e).__module__.startswith("redis") and type(e).__name__ in _REDIS_DOWN
           for e in _chain(exc)):
        return EXIT_UNAVAILABLE, (f"stream engine unavailable: {_message(exc)} (check the Redis "
                                  f"server and MLCORE_STREAM_URL, then re-run `mlcore {command}`)")
    # mlcore's own errors say what they mean; only infrastructure failures under them are looked
    # through (an ingestion rejection caused by an unreadable file stays a rejection).
    own = type(exc).__module__.split(".")[0] == "mlcore"
    for e in [exc] if own else _chain(exc):
        found = _infra(e, command)
        if found is not None:
            return found
    if own or type(exc).__module__.split(".")[0] in {"pydantic", "pydantic_core", "yaml"} or (
            type(exc).__module__ == "builtins" and isinstance(exc, _BAD_INPUT_BUILTINS)):
        return EXIT_BAD_INPUT, f"error: {_message(exc)}"
    if isinstance(exc, PermissionError):
        return EXIT_STORAGE, (f"permission denied: {_message(exc)} (check the owner and mode of "
                              f"MLCORE_HOME, then re-run `mlcore {command}`)")
    if isinstance(exc, OSError):
        return EXIT_STORAGE, f"storage error: {_message(exc)} (then re-run `mlcore {command}`)"
    return EXIT_FAILED, (f"internal error: {type(exc).__name__}: {_message(exc)} "
                         "(run with --debug for the traceback)")
