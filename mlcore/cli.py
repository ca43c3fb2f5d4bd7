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
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mlcore.config import Settings, get_settings
from mlcore.errors import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_DAMAGED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_SCHEMA,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STORAGE,
    EXIT_UNAVAILABLE,
    classify,
    one_line,
    redact,
)

# the exit codes stay importable from here (mlcore.errors owns them)
__all__ = ["EXIT_BAD_INPUT", "EXIT_CONFLICT", "EXIT_DAMAGED", "EXIT_FAILED", "EXIT_INTERRUPTED",
           "EXIT_NO_SCHEMA", "EXIT_OK", "EXIT_REFUSED", "EXIT_STORAGE", "EXIT_UNAVAILABLE",
           "build_parser", "main"]


def _problem(args: argparse.Namespace, settings: Settings) -> Any:
    from mlcore.problems import get_problem, load_problems

    if args.problem:
        return get_problem(args.problem, settings.problems_dir)
    specs = load_problems(settings.problems_dir)
    if len(specs) != 1:
        raise ValueError(f"--problem is required (problems: {', '.join(sorted(specs)) or 'none'})")
    return next(iter(specs.values()))


def _emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text(data))


def cmd_init(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.features import apply_definitions
    from mlcore.store.session import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    views = apply_definitions(settings)
    print(f"initialized {settings.home}: metadata store at head, Feast views {views}")


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.ingestion import ingest_batch

    m = ingest_batch(_problem(args, settings), args.file, args.batch_id, settings)
    verb = "published" if m.created else "already published (no-op)"
    print(f"batch {m.batch_id} {verb}: {m.published_rows} rows, {m.quarantine_count} "
          f"quarantined, sha256 {m.sha256}")


def cmd_batches(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.reporting import batches
    from mlcore.store.session import read_only

    with read_only():
        rows = batches(_problem(args, settings).name, settings.db_url)
    _emit(args, rows, lambda rs: "\n".join(
        f"{r['batch_id']:<12} {r['state']:<9} rows {r['rows']:>8} quarantined "
        f"{r['quarantined']:>6} sha256 {r['sha256'][:12]}"
        + (f"\n    {r['reason']}" if r["reason"] else "") for r in rs) or "no batches")


def cmd_models(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.model.registry import list_versions
    from mlcore.store.session import read_only

    with read_only():
        rows = list_versions(_problem(args, settings).name, settings.db_url)
    _emit(args, rows, lambda rs: "\n".join(
        f"v{r['version']:<4} {r['algorithm']:<24} {','.join(r['aliases']):<9} "
        f"batches {','.join(r['training_batch_ids'])}  {r['artifact_uri']}" for r in rs)
        or "no models")


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    from mlcore.evaluation import promote_version
    from mlcore.model.registry import CHAMPION, alias_holder, get_version, move_alias

    spec = _problem(args, settings)
    current = alias_holder(spec.name, settings.db_url, args.alias)
    if current == args.version:
        print(f"v{args.version} is already {args.alias} (no-op)")
        return EXIT_OK
    if args.alias != CHAMPION:  # the challenger is only shadow-scored: no checks to pass
        get_version(spec.name, args.version, settings.db_url)
        move_alias(spec.name, expected=current, new=args.version, reason=args.reason,
                   url=settings.db_url, action="manual", alias=args.alias, settings=settings)
        print(f"{args.alias} of {spec.name}: v{current} -> v{args.version}")
        return EXIT_OK
    result = promote_version(spec, args.version, args.reason, settings, force=args.force)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif result["promoted"]:
        print(f"champion of {spec.name}: v{current} -> v{args.version} ({result['outcome']}: "
              f"{result['reason']})")
    else:
        print(one_line(f"refused: v{args.version} {result['outcome']}: {result['reason']}; "
                        f"run card: {result['run_card']} (`mlcore promote {args.version} "
                        f"--reason ... --force` skips the checks)"), file=sys.stderr)
    return EXIT_OK if result["promoted"] else EXIT_REFUSED


def cmd_reproduce(args: argparse.Namespace, settings: Settings) -> int:
    from mlcore.training import reproduce_version

    result = reproduce_version(_problem(args, settings), args.version, settings)
    _emit(args, result.to_dict(), lambda r: "\n".join([
        f"v{r['version']}: {'VERIFIED' if r['verified'] else 'NOT REPRODUCED'} in "
        f"{r['seconds']:.1f} s",
        f"  training set rebuilt identical: {r['dataset_identical']}",
        f"  holdout predictions identical to the record ({r['rows']} rows): "
        f"{r['predictions_identical']}",
        f"  identical to the registered artifact: {r['matches_registered']} "
        f"(max |diff| {r['max_abs_diff']:.3g})", *(f"  note: {n}" for n in r["notes"])]))
    return EXIT_OK if result.verified else EXIT_FAILED


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.model.registry import rollback

    problem = _problem(args, settings).name
    old, new = rollback(problem, args.reason, settings.db_url, settings=settings)
    print(f"champion of {problem} rolled back: v{old} -> v{new}")


def cmd_lineage(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.lineage import batch_lineage, model_lineage

    problem = _problem(args, settings).name
    data = (model_lineage(problem, args.model, settings.db_url) if args.batch is None
            else batch_lineage(problem, args.batch, settings.db_url))
    _emit(args, data, lambda d: json.dumps(d, indent=2, default=str))


def _backfill_text(data: dict[str, Any]) -> str:
    head = (f"backfill {data['stage']} of {data['problem']} (policy {data['policy']}): "
            + ", ".join(f"{n} {status}" for status, n in data["counts"].items()))
    return "\n".join([head, *(
        f"  {b['batch_id'][:64]:<12} {b['status']}"
        + (f": {b['detail']}" if b["detail"] else "") for b in data["batches"])])


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from mlcore.backfill import run_backfill

    result = run_backfill(_problem(args, settings), args.stage, args.batches.split(","),
                          settings, policy=args.policy, order=args.order,
                          max_workers=args.max_workers)
    _emit(args, result.to_dict(), _backfill_text)
    for o in result.outcomes:
        if o.status == "failed":
            print(one_line(f"error: {o.stage}: {o.error}"), file=sys.stderr)
    return EXIT_BAD_INPUT if result.bad_input else EXIT_FAILED if result.failed else EXIT_OK


def cmd_labels(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.labels import ingest_labels

    r = ingest_labels(_problem(args, settings), args.file, args.batch_id, settings)
    head = (f"labels for batch {r.batch_id}: {r.inserted} stored, {r.unchanged} already stored"
            if r.inserted else f"labels for batch {r.batch_id} already stored (no-op): "
                               f"{r.rows} labels")
    print(f"{head}; {r.batch_labels} of {r.batch_rows} rows of the batch labelled; "
          f"sha256 {r.sha256}")


def _estimate_text(e: dict[str, Any] | None) -> str:
    """``est 0.8794 [0.8769, 0.8820] err +0.0032`` (err = realized - estimate), or why not."""
    if e is None:
        return ""
    if e["estimate"] is None:
        return f"  {e['reason']}"
    err = f" err {e['error']:+.4f}" if e["error"] is not None else ""
    return f"  est {e['estimate']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]{err}"


def _performance_text(rows: list[dict[str, Any]], empty: str) -> str:
    return "\n".join(
        f"{r['batch_id']:<12} v{r['model_version']:<4} {r['role']:<10} {r['metric']} "
        + (f"{r['value']:.4f}" if r["value"] is not None else "n/a   ")
        + (f"  labelled {r['labelled_rows']}/{r['predicted_rows']} ({r['coverage']:.1%}), "
           f"matured {r['matured_rows']}" if r.get("labelled_rows") is not None
           else "  no labels measured yet")
        + (f"  ({r['details']['reason']})" if (r.get("details") or {}).get("reason") else "")
        + _estimate_text(r.get("estimate"))
        for r in rows) or empty


def _with_estimates(rows: list[dict[str, Any]], estimates: list[dict[str, Any]],
                    batch: str | None) -> list[dict[str, Any]]:
    """Each performance row with its estimate made before labels (``estimate``: None if none);
    batches estimated but not measured yet as rows of their own (value None), after them."""
    keys = ("estimate", "ci_low", "ci_high", "rows", "method", "reason", "error")
    found = {(e["batch_id"], e["model_version"]): e for e in estimates
             if batch is None or e["batch_id"] == batch}
    out = [{**r, "estimate": {k: found[key][k] for k in keys}
            if (key := (r["batch_id"], r["model_version"])) in found else None} for r in rows]
    seen = {(r["batch_id"], r["model_version"]) for r in rows}
    out += [{"batch_id": e["batch_id"], "model_version": e["model_version"], "role": e["role"],
             "metric": e["metric"], "value": None, "estimate": {k: e[k] for k in keys}}
            for key, e in found.items() if key not in seen]
    return out


def cmd_performance(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.estimation import estimate_history
    from mlcore.labels import measure_performance, performance_history

    spec = _problem(args, settings)
    if args.as_of is not None and args.batch is None:
        raise ValueError("--as-of needs --batch (the history shows what was recorded)")
    rows = (performance_history(spec.name, settings.db_url) if args.batch is None else
            [r.to_dict() for r in measure_performance(spec, args.batch, settings, args.as_of)])
    rows = _with_estimates(rows, estimate_history(spec.name, settings.db_url), args.batch)
    empty = ("no performance reports yet (mlcore labels FILE --batch-id ID)" if args.batch is None
             else f"batch {args.batch}: no model version has scored it yet; nothing to measure")
    _emit(args, rows, lambda rs: _performance_text(rs, empty))


def _timestamp(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_requests(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.policy import list_requests, request_manual

    problem = _problem(args, settings).name
    if args.file:
        request_id = request_manual(problem, args.file, settings.db_url)
        print(f"retrain request #{request_id} pending (trigger retrain_model, or wait for its "
              "asset-scheduled run)")
        return
    _emit(args, list_requests(problem, settings.db_url), lambda rs: "\n".join(
        f"#{r['id']:<3} {r['created_at'][:19]} {'+'.join(r['triggers']):<22} {r['state']:<8}"
        + (f" -> v{r['resolved_by_version']}" if r["resolved_by_version"] else "")
        + f"\n     {r['reason']}"
        + (f"\n     failed in run {r.get('run_id')}: {r['error']}" if r.get("error") else "")
        for r in rs) or "no retrain requests")


def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    from mlcore.repair import check, repair_batch

    spec = _problem(args, settings)
    if args.check:
        found = [f.__dict__ for f in check(spec, settings)]
        _emit(args, found, lambda fs: "\n".join(f"{f['batch_id']:<12} {f['what']:<9} "
                                                f"{f['problem']}" for f in fs)
              or "every recorded file matches its record")
        return EXIT_DAMAGED if found else EXIT_OK
    if not args.batch:
        raise ValueError("repair needs --batch ID (or --check for every batch)")
    result = repair_batch(spec, args.batch, settings)
    _emit(args, result.to_dict(), lambda r: f"batch {r['batch_id']}: " + (
        f"repaired {', '.join(r['repaired'])}" if r["repaired"] else "intact (no-op)"))
    return EXIT_OK


def cmd_report(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.reporting import format_summary, summary
    from mlcore.store.session import read_only

    with read_only():
        data = summary(_problem(args, settings).name, settings)
    _emit(args, data, format_summary)


def cmd_problem_draft(args: argparse.Namespace, settings: Settings) -> None:
    """Draft a spec from a sample file: to ``--out`` (never over a file unless ``--force``),
    else to stdout; then check that every row of the sample passes the draft's validation."""
    from collections import Counter
    from pathlib import Path

    from mlcore.batches import BatchRejected
    from mlcore.data.validation import validate_rows
    from mlcore.draft import default_name, draft_yaml, read_sample

    path, out = Path(args.file), Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise ValueError(f"{out} exists (--force overwrites it)")
    df = read_sample(path)
    text, spec = draft_yaml(df, target=args.target, key=args.key, time=args.time,
                            name=args.name or default_name(path), source=path.name)
    try:
        bad = validate_rows(df, spec, f"draft sample {path.name}").quarantined_rows
        check = f"{len(df) - bad} of {len(df)} sample rows pass its validation"
    except BatchRejected as exc:
        check = f"WARNING: the sample fails its validation: {exc}"
    kinds = Counter(f.kind for f in spec.features)
    summary = (f"problem {spec.name}: {spec.target.kind} target {spec.target.name} "
               f"({spec.metric_name}), features " + ", ".join(f"{n} {k}" for k, n in
                                                          kinds.items()) + f"; {check}")
    if out is None:
        print(text, end="")
        print(summary, file=sys.stderr)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}: {summary}\nreview the comments that say review; as "
          f"problems/{spec.name}.yaml it is that problem's spec")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per operator verb)."""
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

    verb("init", cmd_init, "create the home, migrate the metadata store, apply Feast definitions")
    p = verb("ingest", cmd_ingest, "validate and publish a raw file as a batch")
    p.add_argument("file")
    p.add_argument("--batch-id", required=True)
    verb("batches", cmd_batches, "list batch manifests", read=True)
    verb("models", cmd_models, "list model versions and aliases", read=True)
    p = verb("promote", cmd_promote, "make VERSION the champion if it passes the same checks as "
             "a retrain (compare-and-set), or set the challenger", read=True)
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true",
                   help="skip the checks (recorded as forced in the alias history)")
    p.add_argument("--alias", choices=("champion", "challenger"), default="champion")
    p = verb("reproduce", cmd_reproduce, "rebuild a version's training set, retrain it and "
             "verify identical holdout predictions", read=True)
    p.add_argument("version", type=int)
    p = verb("rollback", cmd_rollback, "move the champion back to the version it replaced")
    p.add_argument("--reason", required=True)
    p = verb("lineage", cmd_lineage, "what a model came from, or what used a batch", read=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=int, metavar="V", help="a model version")
    which.add_argument("--batch", metavar="ID", help="a batch ID")
    p = verb("backfill", cmd_backfill, "re-run a stage over published batches", read=True)
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--batches", required=True, metavar="ID,ID,...",
                   help="comma-separated batch IDs")
    p.add_argument("--policy", choices=POLICIES, default="missing",
                   help="missing: not done yet (default); failed: failed last time; all: every one")
    p.add_argument("--max-workers", type=int, default=1, help="batches run at once (1..8)")
    p.add_argument("--order", choices=ORDERS, default="given",
                   help="given (default) or the batches' event time, oldest first")
    verb("report", cmd_report, "the loop's summary", read=True)
    p = verb("repair", cmd_repair, "re-publish a damaged batch from its raw copy and re-derive "
             "its features, scores and drift; --check reports every damaged file", read=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--batch", metavar="ID", help="the batch to repair")
    which.add_argument("--check", action="store_true", help="only report (exit 8 if damaged)")
    p = verb("requests", cmd_requests, "retrain requests (trigger, reason, what answered them); "
             "--file REASON files one by hand", read=True)
    p.add_argument("--file", metavar="REASON", help="file a manual retrain request")
    p = verb("labels", cmd_labels, "store late ground-truth labels of a published batch")
    p.add_argument("file", help="parquet/CSV with the entity key and target columns")
    p.add_argument("--batch-id", required=True)
    p = verb("performance", cmd_performance, "performance on matured labels beside the estimate "
             "made before labels (estimate [CI], err = realized - estimate): the history, or "
             "one batch measured now", read=True)
    p.add_argument("--batch", metavar="ID", help="measure every version that scored this batch")
    p.add_argument("--as-of", type=_timestamp, metavar="ISO",
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
    p.set_defaults(func=cmd_problem_draft)
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
