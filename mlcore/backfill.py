"""Backfill: re-run one stage (materialize, score, monitor) over a list of batch IDs.

A pure planner decides, per batch, whether to run, skip or reject it under a reprocess policy;
the runner executes the plan with bounded concurrency. Every attempt is appended to a JSONL
ledger, ``<home>/backfill/problem=<p>/<stage>.jsonl`` (``{batch_id, status, error, at}``), whose
latest line per batch is what the ``failed`` policy reads.

"Done" is read from the metadata store, never from the ledger: ``materialize`` has a
materializations row, ``score`` has predictions by the current champion, ``monitor`` has a drift
report against the current champion.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, StringConstraints
from sqlalchemy import exists, select

from mlcore.batches import BATCH_ID_RE, BatchError, InvalidBatchId, check_batch_id
from mlcore.config import Settings, _RunConfig
from mlcore.data.integrity import DataDamaged, verified
from mlcore.feast.store import ensure_definitions
from mlcore.features import materialize_batch
from mlcore.model.registry import alias_holder
from mlcore.monitoring import detect_drift
from mlcore.problems import ProblemSpec
from mlcore.scoring import score_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import Batch, DriftReport, Materialization, Prediction, utcnow
from mlcore.store.session import session_scope

Stage = Literal["materialize", "score", "monitor"]
log = logging.getLogger(__name__)
Policy = Literal["missing", "failed", "all"]
Order = Literal["given", "event_time"]
STAGES: tuple[str, ...] = get_args(Stage)
POLICIES: tuple[str, ...] = get_args(Policy)
ORDERS: tuple[str, ...] = get_args(Order)
MAX_BATCHES, MAX_WORKERS = 500, 8


class BackfillConfig(_RunConfig):
    """Knobs of ``backfill_batches`` (the DAG's Params, same bounds)."""

    stage: Stage
    batch_ids: tuple[Annotated[str, StringConstraints(pattern=BATCH_ID_RE.pattern)], ...] = Field(
        min_length=1, max_length=MAX_BATCHES)
    policy: Policy = "missing"
    order: Order = "given"
    max_active: int = Field(1, ge=1, le=MAX_WORKERS)


@dataclass(frozen=True)
class PlanItem:
    """What the planner decided for one batch, and why."""

    batch_id: str
    action: Literal["run", "skip", "reject"]
    reason: str


@dataclass(frozen=True)
class StageState:
    """What the planner reads: published batches (with event time), done ones, ledger statuses."""

    published: Mapping[str, datetime | None]
    done: frozenset[str]
    last_status: Mapping[str, str]


@dataclass(frozen=True)
class BatchOutcome:
    """One batch of a backfill: ``ok``, ``skipped`` (``detail`` says why) or ``failed``."""

    batch_id: str
    stage: str
    status: Literal["ok", "skipped", "failed"]
    error: str | None = None
    detail: str = ""
    bad_input: bool = False  # unknown or invalid batch ID: the caller's mistake, not a fault


@dataclass(frozen=True)
class BackfillResult:
    """Every batch's outcome, in plan order."""

    problem: str
    stage: str
    policy: str
    outcomes: tuple[BatchOutcome, ...]

    @property
    def failed(self) -> bool:
        """Whether any batch failed."""
        return any(o.status == "failed" for o in self.outcomes)

    @property
    def bad_input(self) -> bool:
        """Whether any batch failed because its ID was invalid or unknown."""
        return any(o.bad_input for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("ok", "skipped", "failed")}
        return {"problem": self.problem, "stage": self.stage, "policy": self.policy,
                "counts": counts, "batches": [asdict(o) for o in self.outcomes]}


def ledger_path(settings: Settings, problem: str, stage: str) -> Path:
    """``<home>/backfill/problem=<p>/<stage>.jsonl``."""
    return settings.home / "backfill" / f"problem={problem}" / f"{stage}.jsonl"


def record_attempt(settings: Settings, problem: str, stage: str, batch_id: str,
                   error: str | None) -> None:
    """Append one attempt (``ok`` when ``error`` is None, else ``failed``) to the ledger."""
    entry = {"batch_id": batch_id, "status": "failed" if error else "ok", "error": error,
             "at": utcnow().isoformat()}
    path = ledger_path(settings, problem, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Threads of one runner append, and so do the mapped tasks of a DAG run (other processes):
    # flock holds per open file, so it serializes both.
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(entry) + "\n")


def last_status(settings: Settings, problem: str, stage: str) -> dict[str, str]:
    """Latest ledger status per batch (a torn last line from a crash is ignored)."""
    path = ledger_path(settings, problem, stage)
    statuses: dict[str, str] = {}
    if not path.is_file():
        return statuses
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
                statuses[str(entry["batch_id"])] = str(entry["status"])
            except (ValueError, KeyError, TypeError):
                continue
    return statuses


def _is_valid(batch_id: str) -> bool:
    try:
        check_batch_id(batch_id)
    except InvalidBatchId:
        return False
    return True


def _utc(ts: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC.
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def load_state(problem: str, stage: str, batch_ids: Sequence[str],
               settings: Settings) -> StageState:
    """Read what the planner needs about ``batch_ids`` (already checked with ``check_batch_id``)."""
    with session_scope(settings.db_url) as s:
        published = {b: _utc(t) for b, t in s.execute(
            select(Batch.batch_id, Batch.event_time_max).where(
                Batch.problem == problem, Batch.state == "published",
                Batch.batch_id.in_(list(batch_ids))))}
    done = stage_done(problem, stage, sorted(published), settings.db_url)
    return StageState(published, done, last_status(settings, problem, stage))


def stage_done(problem: str, stage: str, batch_ids: list[str], url: str) -> frozenset[str]:
    """The batches of ``batch_ids`` that have ``stage``'s output (see the module docstring)."""
    if not batch_ids:
        return frozenset()
    if stage == "materialize":
        return _materialized(problem, batch_ids, url)
    else:
        champion = alias_holder(problem, url)
        if champion is None:
            return frozenset()
        table = Prediction if stage == "score" else DriftReport
        # EXISTS stops at the first prediction of the batch: never counts millions of rows.
        cond = exists().where(table.problem == problem, table.batch_id == Batch.batch_id,
                              table.model_version == champion)
    with session_scope(url) as s:
        return frozenset(s.scalars(select(Batch.batch_id).where(
            Batch.problem == problem, Batch.batch_id.in_(batch_ids), cond)))


def _materialized(problem: str, batch_ids: list[str], url: str) -> frozenset[str]:
    """Batches whose features partition is on disk as recorded (size and footer rows: a
    deleted or truncated partition is not done, whatever the database says)."""
    with session_scope(url) as s:
        rows = list(s.scalars(select(Materialization).where(
            Materialization.problem == problem, Materialization.batch_id.in_(batch_ids))))
    done = set()
    for m in rows:
        if not Path(m.offline_uri).exists():
            continue
        try:
            verified(Path(m.offline_uri), m.files, f"batch {m.batch_id!r}", full=False)
        except DataDamaged as exc:
            log.warning("%s: not done", exc)
            continue
        done.add(m.batch_id)
    return frozenset(done)


def plan_backfill(batch_ids: Sequence[str], policy: Policy, order: Order,
                  state: StageState) -> list[PlanItem]:
    """Decide per batch (pure): rejected IDs first, then the rest in the requested order.

    Duplicates are dropped (first one wins). ``event_time`` sorts by the manifests' newest event
    time; ties keep the given order.
    """
    rejected: list[PlanItem] = []
    candidates: list[str] = []
    for batch_id in dict.fromkeys(batch_ids):
        try:
            check_batch_id(batch_id)
        except InvalidBatchId as exc:
            rejected.append(PlanItem(batch_id, "reject", str(exc)))
            continue
        if batch_id not in state.published:
            rejected.append(PlanItem(batch_id, "reject", f"batch {batch_id!r} is not published"))
        else:
            candidates.append(batch_id)
    if order == "event_time":
        oldest = datetime.min.replace(tzinfo=UTC)
        candidates.sort(key=lambda b: state.published[b] or oldest)
    return rejected + [_decide(b, policy, state) for b in candidates]


def _decide(batch_id: str, policy: Policy, state: StageState) -> PlanItem:
    if policy == "all":
        return PlanItem(batch_id, "run", "policy all")
    if policy == "missing":
        if batch_id in state.done:
            return PlanItem(batch_id, "skip", "already done")
        return PlanItem(batch_id, "run", "not done yet")
    last = state.last_status.get(batch_id)
    if last == "failed":
        return PlanItem(batch_id, "run", "failed last time")
    return PlanItem(batch_id, "skip", f"did not fail last time (last attempt: {last or 'none'})")


def plan(spec: ProblemSpec, stage: Stage, batch_ids: Sequence[str], settings: Settings,
         policy: Policy = "missing", order: Order = "given") -> list[PlanItem]:
    """Read the state of the valid IDs (invalid ones never reach SQL), then plan."""
    _check_choice("stage", stage, STAGES)
    _check_choice("policy", policy, POLICIES)
    _check_choice("order", order, ORDERS)
    valid = [b for b in batch_ids if _is_valid(b)]
    return plan_backfill(batch_ids, policy, order, load_state(spec.name, stage, valid, settings))


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; one of {', '.join(allowed)}")


def _stage_fn(stage: str) -> Callable[[ProblemSpec, str, Settings], Any]:
    if stage == "materialize":
        return materialize_batch
    if stage == "score":
        return score_batch
    return detect_drift


def run_stage(spec: ProblemSpec, stage: Stage, batch_id: str,
              settings: Settings) -> dict[str, Any]:
    """Run ``stage`` for one published batch and append the attempt to the ledger.

    Returns:
        The stage's result as a dict.

    Raises:
        InvalidBatchId, BatchNotFound: bad input; nothing is run or recorded.
        Exception: whatever the stage raised (recorded as ``failed`` first).
    """

    _check_choice("stage", stage, STAGES)
    get_batch(spec.name, batch_id, settings.db_url)  # checks the ID, then that it is published
    try:
        result: dict[str, Any] = _stage_fn(stage)(spec, batch_id, settings).to_dict()
    except Exception as exc:
        record_attempt(settings, spec.name, stage, batch_id, f"{type(exc).__name__}: {exc}")
        raise
    record_attempt(settings, spec.name, stage, batch_id, None)
    return result


def _attempt(spec: ProblemSpec, stage: Stage, batch_id: str, settings: Settings) -> BatchOutcome:
    try:
        run_stage(spec, stage, batch_id, settings)
    except Exception as exc:  # one batch's failure must not stop the others
        return BatchOutcome(batch_id, stage, "failed", f"{type(exc).__name__}: {exc}",
                            bad_input=isinstance(exc, BatchError)
                            and not isinstance(exc, DataDamaged))
    return BatchOutcome(batch_id, stage, "ok")


def _planned(stage: str, item: PlanItem) -> BatchOutcome:
    if item.action == "skip":
        return BatchOutcome(item.batch_id, stage, "skipped", detail=item.reason)
    return BatchOutcome(item.batch_id, stage, "failed", item.reason, bad_input=True)


def _register_features(spec: ProblemSpec, settings: Settings) -> None:
    # materialize_batch registers the Feast objects on first use, and that chdir()s: do it
    # once here, before worker threads could race on the process-wide working directory.

    ensure_definitions(spec, settings)


def run_backfill(spec: ProblemSpec, stage: Stage, batch_ids: Sequence[str], settings: Settings,
                 *, policy: Policy = "missing", order: Order = "given",
                 max_workers: int = 1) -> BackfillResult:
    """Plan, then run ``stage`` for every batch to run, at most ``max_workers`` at a time.

    Batches are started in plan order; a failing batch is recorded and the others go on.
    Skipped batches are not touched (nothing rewritten, no ledger line).

    Raises:
        ValueError: an unknown stage/policy/order, or ``max_workers``/batch count out of bounds.
    """
    if not 1 <= max_workers <= MAX_WORKERS:
        raise ValueError(f"max_workers must be between 1 and {MAX_WORKERS}, got {max_workers}")
    if not 1 <= len(batch_ids) <= MAX_BATCHES:
        raise ValueError(f"give between 1 and {MAX_BATCHES} batch ids, got {len(batch_ids)}")
    items = plan(spec, stage, batch_ids, settings, policy, order)
    todo = [i.batch_id for i in items if i.action == "run"]
    if todo and stage == "materialize" and max_workers > 1:
        _register_features(spec, settings)
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        ran = dict(zip(todo, pool.map(lambda b: _attempt(spec, stage, b, settings), todo),
                       strict=True))
    outcomes = tuple(ran[i.batch_id] if i.batch_id in ran else _planned(stage, i) for i in items)
    return BackfillResult(spec.name, stage, policy, outcomes)
