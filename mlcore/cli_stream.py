"""The ``mlcore stream`` commands: produce events, serve a problem's stream, seal now, status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlcore.cli_commands import _emit, _problem
from mlcore.config import Settings


def add_parser(sub: Any) -> None:
    """``mlcore stream {produce,serve,seal,status}``."""
    p = sub.add_parser("stream", help="online ingestion through the problem's event stream")
    verbs = p.add_subparsers(dest="problem_command", required=True)

    def verb(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=help_)
        v.add_argument("--problem", help="problem spec name (default: the only one)")
        v.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of a failure (also MLCORE_DEBUG=1)")
        v.set_defaults(func=fn)
        return v

    v = verb("produce", produce, "send JSON lines (one event each) to the problem's stream")
    v.add_argument("file", help="a file of JSON lines, or - for stdin")
    v.add_argument("--rate", type=float, metavar="N", help="at most N events per second")
    v = verb("serve", serve, "the online ingestion service: validate, write online, seal "
             "micro-batches (runs until SIGTERM)")
    v.add_argument("--consumer", help="consumer name in the group (default: serve-<hostname>)")
    v.add_argument("--max-seconds", type=float, help="stop after this long (tests, demos)")
    verb("seal", seal, "seal the open events into batches now")
    v = verb("status", status, "lag, pending, dead letters, open events, last sealed batch")
    v.add_argument("--json", action="store_true", help="machine-readable output")


def produce(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.streaming import produce as send

    spec = _problem(args, settings)
    if args.file == "-":
        n = send(spec, settings, sys.stdin, args.rate)
    else:
        with Path(args.file).open() as fh:
            n = send(spec, settings, fh, args.rate)
    print(f"sent {n} events to the stream of {spec.name}")


def serve(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.streaming import serve as run

    counts = run(_problem(args, settings), settings, args.consumer, args.max_seconds)
    print(json.dumps(counts.to_dict()))


def seal(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.streaming import seal as seal_now

    published = seal_now(_problem(args, settings), settings)
    print(f"sealed {len(published)} batches: {', '.join(published) or 'none'}")


def status(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.streaming import status as state

    _emit(args, state(_problem(args, settings), settings), _text)


def _text(s: dict[str, Any]) -> str:
    last = s["last_sealed"]
    lines = [f"stream {s['stream']}: lag {s['lag']}, pending {s['pending']}, "
             f"dead letters {s['dead_letters']}",
             f"events taken in: {s['events_taken']} (open, not sealed: {s['open_events']})",
             "last sealed: " + ("none" if last is None else
                                f"{last['batch_id']} ({last['state']}, {last['events']} events, "
                                f"{last['sealed_at']})")]
    lines += [f"ATTENTION: {a}" for a in s["attention"]]
    return "\n".join(lines)
