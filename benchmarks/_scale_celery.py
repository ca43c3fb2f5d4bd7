"""``bench_scale.py --executor celery --workers N``: the scale curve's batch stages as real DAG
runs on the CeleryExecutor (``tests/support/celery_stack.py``: scheduler, dag-processor,
api-server, N Celery workers, a private Redis broker, PostgreSQL for Airflow, mlcore's store
and Feast's registry + online store).

Per size: the synthesized input (as the local curve), fresh PostgreSQL databases and a fresh
stack; a logistic-regression champion seeded from the real 2015 rows through mlcore's API; then
one REST trigger of ``ingest_batch`` and the Asset chain runs ingest -> materialize_features ->
score_batch -> monitor_model by itself. Per stage: the DAG run's wall time (queued -> end), its
stage task's time (TI start -> end), and the peak summed RSS of a worker's session sampled
every 0.25 s while the task ran (the worker, its pool, the supervisor and the task process: the
busier worker's). The training-set retrieval stage needs a retrain run and is not measured
here.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from _common import MAKEFILE_ENV, ROOT, log
from celery_stack import CeleryStack, proc_stat
from pg_database import feast_pg_env, fresh_databases, pg_url

PROBLEM = "census_employment"
# (stage name in the local curve, DAG, the task doing the stage's work)
CHAIN = (("ingest", "ingest_batch", "ingest_batch"),
         ("features", "materialize_features", "materialize_batch"),
         ("scoring", "score_batch", "score_batch"),
         ("drift", "monitor_model", "detect_drift"))


class GroupRss:
    """Samples the summed RSS of every process in each worker's session (``/proc``): the
    worker, its pool, the supervisor and the task process (a process group of its own)."""

    def __init__(self, stack: CeleryStack, every: float = 0.25) -> None:
        self.stack, self.every = stack, every
        self.samples: list[tuple[float, int, float]] = []  # (time, worker, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GroupRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            workers = {p.pid: i for i in range(self.stack.workers)
                       if (p := self.stack.procs.get(f"worker{i}")) is not None}
            totals = dict.fromkeys(workers.values(), 0.0)
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and (st := proc_stat(entry.name)) is not None \
                        and (worker := workers.get(st.session)) is not None:
                    totals[worker] += st.rss_bytes / 2**20
            now = time.time()
            self.samples.extend((now, w, mib) for w, mib in totals.items())

    def peak(self, worker: int | None, start: float, end: float) -> float | None:
        got = [m for t, w, m in self.samples if (worker is None or w == worker)
               and start <= t <= end]
        return max(got) if got else None


def _seed(settings: Any, spec: Any) -> int:
    """A champion trained on the real 2015 rows, IDs shifted (mlcore's API; no Airflow run, no
    events)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mlcore.config import TrainConfig
    from mlcore.datasets import build_dataset
    from mlcore.feast.store import apply_definitions
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.model.registry import move_alias
    from mlcore.training import train_contender

    apply_definitions(settings)
    # the real 2015 rows with their IDs moved past any synthesized one: the synthesized input
    # numbers its rows 0..n-1 at the same event times, and those (key, event time) pairs would
    # be rejected as duplicates of this published batch
    table = pq.read_table(ROOT / "data" / "census_ma_employment" / "employment_2015.parquet")
    pos = table.schema.get_field_index("id")
    table = table.set_column(pos, "id", pc.add(table.column("id"), pa.scalar(10**12)))
    source = settings.home.parent / "seed-2015.parquet"
    pq.write_table(table, source)
    ingest_batch(spec, str(source), "seed-2015", settings)
    materialize_batch(spec, "seed-2015", settings)
    model = train_contender(spec, build_dataset(spec, settings),
                            TrainConfig(algorithm="logistic_regression"), settings)
    move_alias(spec.name, expected=None, new=model.version, reason="benchmark seed",
               url=settings.db_url, actor="bench")
    return int(model.version)


def _epoch(value: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def run_size(n: int, src: Path, work: Path, workers: int, timeout: float) -> dict[str, Any]:
    """The chain at ``n`` rows on a fresh Celery stack; {stage: figures}."""
    with fresh_databases("af", "ml", "feast") as dbs:
        return _run_on(n, src, work / f"celery-{n}", dbs, workers, timeout)


def _run_on(n: int, src: Path, home: Path, dbs: dict[str, str], workers: int,
            timeout: float) -> dict[str, Any]:
    """``run_size``'s body over ``dbs`` (af: Airflow, ml: mlcore's store, feast)."""
    from mlcore.config import Settings
    from mlcore.problems import get_problem
    from mlcore.store.session import get_engine, upgrade

    mlcore_home, mlcore_url = home / "mlcore", pg_url(dbs["ml"])
    feast_env = feast_pg_env(dbs["feast"])
    feast_config = ROOT / "deploy" / "feature_store.postgres.yaml"
    stack = CeleryStack(home, pg_url(dbs["af"]), pg_url(dbs["af"], "postgresql+psycopg"), {
        **feast_env, "MLCORE_HOME": str(mlcore_home), "MLCORE_FEAST_CONFIG": str(feast_config),
        # what pytest's conftest sets for the live tests (and the Makefile for `make up`):
        # without it the stack parses $AIRFLOW_HOME/dags and Airflow's examples
        **{k: MAKEFILE_ENV[k] for k in ("AIRFLOW__CORE__DAGS_FOLDER",
                                        "AIRFLOW__CORE__PLUGINS_FOLDER",
                                        "AIRFLOW__CORE__LOAD_EXAMPLES", "PYTHONWARNINGS")},
        "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"),
        "MLCORE_FEATURE_REPO": str(ROOT / "feature_repo"),
        "AIRFLOW_CONN_MLCORE_DB": pg_url(dbs["ml"], "postgresql"),
        "MLCORE_REQUIRE_DATABASE": "true", "MLCORE_DATABASE_URL": None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "BATCHLOOP_START_PAUSED": "true", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1"},
        workers=workers, dag_ids=tuple(f"{PROBLEM}__{dag}" for _, dag, _ in CHAIN))
    out: dict[str, Any] = {}
    try:
        stack.start()
        mlcore_home.mkdir(parents=True)
        upgrade(mlcore_url)
        settings = Settings(home=mlcore_home, database_url=mlcore_url, feast_config=feast_config,
                            problems_dir=ROOT / "problems", feature_repo=ROOT / "feature_repo")
        os.environ.update({**feast_env, "MLCORE_HOME": str(mlcore_home)})
        _seed(settings, get_problem(PROBLEM, ROOT / "problems"))
        stack.wait_ready(timeout=300)
        for _, dag, _ in CHAIN[1:]:
            stack.api(f"/dags/{PROBLEM}__{dag}", {"is_paused": False}, "PATCH")
        with GroupRss(stack) as rss:
            stack.trigger(f"{PROBLEM}__ingest_batch", {"batch_id": f"scale-{n}",
                                                       "source": str(src)})
            for stage, dag, task in CHAIN:
                [run] = stack.finished(f"{PROBLEM}__{dag}", timeout)
                dag_id, run_id = f"{PROBLEM}__{dag}", run["dag_run_id"]
                # the stage task is mapped (one per batch) except in ingest: every instance
                tis = [t for t in stack.api(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
                       ["task_instances"] if t["task_id"] == task]
                start = min((_epoch(t.get("start_date")) or 0 for t in tis), default=None)
                end = max((_epoch(t.get("end_date")) or 0 for t in tis), default=None)
                out[stage] = {
                    "ok": run["state"] == "success", "state": run["state"],
                    "run_seconds": (_epoch(run["end_date"]) or 0) - (_epoch(run["queued_at"]) or 0),
                    "seconds": (end or 0) - (start or 0),
                    "peak_rss_mib": rss.peak(None, start or 0, end or 0)}
                log(f"  celery {stage:9s} {out[stage]['seconds']:8.2f} s task, "
                    f"{out[stage]['run_seconds']:8.2f} s run; peak worker RSS "
                    f"{out[stage]['peak_rss_mib'] or 0:,.0f} MiB ({run['state']})")
    finally:
        stack.stop()
        get_engine(mlcore_url).dispose()
    return out


def render(results: dict[int, dict[str, Any]], workers: int) -> str:
    lines = [f"CeleryExecutor, {workers} workers (one task each at a time), PostgreSQL stores:",
             "", "| stage | rows | task seconds | run seconds (queued -> end) | rows/s (task) "
             "| peak RSS of a worker's processes MiB |", "|---|---:|---:|---:|---:|---:|"]
    for n in sorted(results):
        for stage, r in results[n].items():
            rate = n / r["seconds"] if r.get("seconds") else 0
            lines.append(f"| {stage} | {n:,} | {r['seconds']:.2f} | {r['run_seconds']:.2f} | "
                         f"{rate:,.0f} | {r['peak_rss_mib'] or 0:,.0f} |")
    return "\n".join(lines)
