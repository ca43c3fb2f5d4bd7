"""``mlcore``: what an operator does by hand.

Every failure is one line on stderr: the cause (naming the batch when there is one) and the next
command to run; ``--debug`` (or ``MLCORE_DEBUG=1``) prints the traceback before it. Exit codes:

  0 ok or no-op;  1 a backfill step failed, a reproduction differed, or an internal error
  (``internal error: <Type>: <message>``: a bug, re-run with --debug);  2 bad input (also a
  malformed ``MLCORE_DATABASE_URL``);  3 conflict;  4 refused by the promotion checks;
  5 database unreachable;  6 metadata store not initialised (run ``mlcore init``);
  7 storage error (disk full, quota, I/O error, read-only or permission denied);
  8 damaged data: a file differs from its record or cannot be read (``mlcore repair --check``),
  or the metadata store itself is not a readable database;  130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from mlcore.config import get_settings
from mlcore.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    classify,
    one_line,
    redact,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per operator verb)."""
    from mlcore import cli_commands as commands
    from mlcore import cli_stream
    from mlcore.backfill import ORDERS, POLICIES, STAGES

    parser = _Parser(prog="mlcore", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a failure (also MLCORE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def verb(name: str, fn: Callable[..., int | None], help_: str, read: bool = False) -> Any:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--problem", help="problem spec name (default: the only one)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of a failure (also MLCORE_DEBUG=1)")
        if read:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=fn)
        return p

    verb("init", commands.init,
         "create the home, migrate the metadata store, apply Feast definitions")
    p = verb("ingest", commands.ingest, "validate and publish a raw file as a batch")
    p.add_argument("file")
    p.add_argument("--batch-id", required=True)
    verb("batches", commands.batches, "list batch manifests", read=True)
    verb("models", commands.models, "list model versions and aliases", read=True)
    p = verb("promote", commands.promote, "make VERSION the champion if it passes the same checks "
             "as a retrain (compare-and-set), or set the challenger", read=True)
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true",
                   help="skip the checks (recorded as forced in the alias history)")
    p.add_argument("--alias", choices=("champion", "challenger"), default="champion")
    p = verb("reproduce", commands.reproduce, "rebuild a version's training set, retrain it and "
             "verify identical holdout predictions", read=True)
    p.add_argument("version", type=int)
    p = verb("rollback", commands.rollback, "move the champion back to the version it replaced")
    p.add_argument("--reason", required=True)
    p = verb("lineage", commands.lineage, "what a model came from, or what used a batch", read=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=int, metavar="V", help="a model version")
    which.add_argument("--batch", metavar="ID", help="a batch ID")
    p = verb("backfill", commands.backfill, "re-run a stage over published batches", read=True)
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--batches", required=True, metavar="ID,ID,...",
                   help="comma-separated batch IDs")
    p.add_argument("--policy", choices=POLICIES, default="missing",
                   help="missing: not done yet (default); failed: failed last time; all: every one")
    p.add_argument("--max-workers", type=int, default=1, help="batches run at once (1..8)")
    p.add_argument("--order", choices=ORDERS, default="given",
                   help="given (default) or the batches' event time, oldest first")
    verb("report", commands.report, "the loop's summary", read=True)
    p = verb("repair", commands.repair, "re-publish a damaged batch from its raw copy and "
             "re-derive its features, scores and drift; --check reports every damaged file",
             read=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--batch", metavar="ID", help="the batch to repair")
    which.add_argument("--check", action="store_true", help="only report (exit 8 if damaged)")
    p = verb("requests", commands.requests, "retrain requests (trigger, reason, what answered "
             "them); --file REASON files one by hand", read=True)
    p.add_argument("--file", metavar="REASON", help="file a manual retrain request")
    p = verb("labels", commands.labels, "store late ground-truth labels of a published batch")
    p.add_argument("file", help="parquet/CSV with the entity key and target columns")
    p.add_argument("--batch-id", required=True)
    p = verb("performance", commands.performance, "performance on matured labels beside the "
             "estimate made before labels (estimate [CI], err = realized - estimate): the "
             "history, or one batch measured now", read=True)
    p.add_argument("--batch", metavar="ID", help="measure every version that scored this batch")
    p.add_argument("--as-of", type=commands.timestamp, metavar="ISO",
                   help="with --batch: the evaluation time for maturity (default: now)")
    p = sub.add_parser("problem", help="problem specs")
    problem_sub = p.add_subparsers(dest="problem_command", required=True)
    p = problem_sub.add_parser("draft", help="draft a spec (commented YAML) from a sample "
                               "parquet/CSV file: kinds, vocabularies, ranges, target kind, "
                               "metric, candidates, a baseline floor")
    p.add_argument("file", help="sample parquet/CSV file (a batch as ingestion reads it)")
    p.add_argument("--target", required=True, metavar="COL", help="the target column")
    p.add_argument("--key", required=True, metavar="COL", help="the entity key column")
    p.add_argument("--time", required=True, metavar="COL",
                   help="the event time column (timestamps or plain years)")
    p.add_argument("--name", help="problem name (default: the file stem, sanitized)")
    p.add_argument("--out", metavar="PATH", help="write the draft here (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback of a failure (also MLCORE_DEBUG=1)")
    p.set_defaults(func=commands.problem_draft)
    cli_stream.add_parser(sub)
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line too (exit 2)."""

    def error(self, message: str) -> Any:  # argparse's signature is NoReturn
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _debug_requested(args: argparse.Namespace | None) -> bool:
    env = os.environ.get("MLCORE_DEBUG", "").strip().lower() not in {"", "0", "false", "no"}
    return env or bool(getattr(args, "debug", False))


def main(argv: list[str] | None = None) -> int:
    """Run one command; map errors to exit codes with one line (the reason) on stderr."""
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        code: int | None = args.func(args, get_settings())
        return code or EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the contract: every failure is one line + a code
        if args is None:
            raise  # building the parser failed: a broken install, not an operator error
        command = " ".join(c for c in (args.command, getattr(args, "problem_command", None)) if c)
        code, line = classify(exc, command)
        if _debug_requested(args):
            import traceback

            print(redact("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
        print(one_line(line), file=sys.stderr)
        return code
