"""What each ``mlcore`` command does: read its arguments, call the stage or read-side query, print
the result (text, or JSON with ``--json``). ``mlcore.cli`` builds the parser and maps failures
to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mlcore.config import Settings
from mlcore.errors import (
    EXIT_BAD_INPUT,
    EXIT_DAMAGED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    one_line,
)


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


def init(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.feast.store import apply_definitions
    from mlcore.store.session import upgrade

    if settings.home_is_local:
        settings.home.mkdir(parents=True, exist_ok=True)
    else:
        _check_bucket(settings)
    upgrade(settings.db_url)
    views = apply_definitions(settings)
    print(f"initialized {settings.home_uri}: metadata store at head, Feast views {views}")


def _check_bucket(settings: Settings) -> None:
    """An object-storage home is a prefix (nothing to make): check that a probe object can be
    written, found and removed there, so a wrong bucket, endpoint or credential fails ``init``
    naming the home instead of the first ingest.

    Raises:
        StorageError: naming ``MLCORE_HOME`` and the failed call.
    """
    import uuid

    from mlcore.objstore import StorageError

    home = settings.store_home()
    probe = home.uri(f".init-probe-{uuid.uuid4().hex[:12]}")
    try:
        with home.open(probe, "wb") as fh:
            fh.write(b"batchloop init probe\n")
        if not home.exists(probe):
            raise StorageError(f"the probe object {probe} was written but is not found")
        home.rm(probe)
    except OSError as exc:  # StorageError, FileNotFoundError (no such bucket), PermissionError
        text = f"MLCORE_HOME {settings.home_uri} is not reachable for writing: {exc}"
        raise (StorageError(text) if exc.errno is None else StorageError(exc.errno, text)) from exc


def ingest(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.ingestion import ingest_batch

    m = ingest_batch(_problem(args, settings), args.file, args.batch_id, settings)
    verb = "published" if m.created else "already published (no-op)"
    print(f"batch {m.batch_id} {verb}: {m.published_rows} rows, {m.quarantine_count} "
          f"quarantined, sha256 {m.sha256}")


def batches(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.reporting import batches
    from mlcore.store.session import read_only

    with read_only():
        rows = batches(_problem(args, settings).name, settings.db_url)
    _emit(args, rows, lambda rs: "\n".join(
        f"{r['batch_id']:<12} {r['state']:<9} rows {r['rows']:>8} quarantined "
        f"{r['quarantined']:>6} sha256 {r['sha256'][:12]}"
        + (f"\n    {r['reason']}" if r["reason"] else "") for r in rs) or "no batches")


def models(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.model.registry import list_versions
    from mlcore.store.session import read_only

    with read_only():
        rows = list_versions(_problem(args, settings).name, settings.db_url)
    _emit(args, rows, lambda rs: "\n".join(
        f"v{r['version']:<4} {r['algorithm']:<24} {','.join(r['aliases']):<9} "
        f"batches {','.join(r['training_batch_ids'])}  {r['artifact_uri']}" for r in rs)
        or "no models")


def promote(args: argparse.Namespace, settings: Settings) -> int:
    from mlcore.model.registry import CHAMPION, alias_holder
    from mlcore.promotion import promote_version, set_challenger

    spec = _problem(args, settings)
    current = alias_holder(spec.name, settings.db_url, args.alias)
    if current == args.version:
        print(f"v{args.version} is already {args.alias} (no-op)")
        return EXIT_OK
    if args.alias != CHAMPION:  # the challenger is only shadow-scored: no checks to pass
        set_challenger(spec.name, args.version, args.reason, settings, expected=current)
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


def reproduce(args: argparse.Namespace, settings: Settings) -> int:
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


def rollback(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.promotion import rollback

    problem = _problem(args, settings).name
    old, new = rollback(problem, args.reason, settings.db_url, settings=settings)
    print(f"champion of {problem} rolled back: v{old} -> v{new}")


def lineage(args: argparse.Namespace, settings: Settings) -> None:
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


def backfill(args: argparse.Namespace, settings: Settings) -> int:
    from mlcore.backfill import run_backfill

    result = run_backfill(_problem(args, settings), args.stage, args.batches.split(","),
                          settings, policy=args.policy, order=args.order,
                          max_workers=args.max_workers)
    _emit(args, result.to_dict(), _backfill_text)
    for o in result.outcomes:
        if o.status == "failed":
            print(one_line(f"error: {o.stage}: {o.error}"), file=sys.stderr)
    return EXIT_BAD_INPUT if result.bad_input else EXIT_FAILED if result.failed else EXIT_OK


def labels(args: argparse.Namespace, settings: Settings) -> None:
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


def performance(args: argparse.Namespace, settings: Settings) -> None:
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


def timestamp(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def requests(args: argparse.Namespace, settings: Settings) -> None:
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


def repair(args: argparse.Namespace, settings: Settings) -> int:
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


def report(args: argparse.Namespace, settings: Settings) -> None:
    from mlcore.reporting import format_summary, summary
    from mlcore.store.session import read_only

    with read_only():
        data = summary(_problem(args, settings).name, settings)
    _emit(args, data, format_summary)


def problem_draft(args: argparse.Namespace, settings: Settings) -> None:
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
