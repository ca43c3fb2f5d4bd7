"""Freshness: a batch's arrival (REST trigger of ingest_batch) -> first online read of its new
values, under a real scheduler, against the in-process compute of ingest + validate +
materialize of the same batch.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_freshness.py [--rounds 3] [--synthetic-rows 1000000] [--quick]
                                         [--stock-executor] [--json OUT]

Issue 7: "batch arrival -> first online read of its new values, / the in-process compute time of
ingest + validate + materialize; target <= 1.5x".

Setup (not timed): a fresh MLCORE home under a temp dir with 2015-2017 of the census demo ingested
and materialized (``mlcore`` in-process); snapshotted. A private ``airflow standalone``
(``tests/support/airflow_stack.py``: SQLite metadata, LocalExecutor as the Makefile ships it, the
repo's dags/ and plugins/) with ``ingest_batch`` and ``materialize_features`` unpaused. The other
DAGs stay paused, so the ``features`` asset event queues a ``score_batch`` run that is never
created (scoring/monitoring are not part of freshness and would load the 2 cores meanwhile).

Batches: the real 2018 file (70,131 rows) and a synthesized one (``--synthetic-rows``, 1M:
real 2015-2018 rows resampled as ``bench_ingest.write_input`` does, ids offset past every real id,
year 2018). Their ids are new, so before the batch nothing is online for them and after it their
features are: "new values" = a 100-key sample (seeded) read back with all features present.

Each round restores the home from the snapshot before each side, and alternates the order:
- DAG: t0 = just before ``POST /dags/census_employment__ingest_batch/dagRuns`` (a new batch id,
  the file as ``source``); then ``mlcore.feast.online.online_feature_rows`` (the product's read
  path) is polled every 0.1 s from this process until every sampled key has its features;
  freshness = that moment - t0. The materialize run it caused is waited out before the next side.
- compute: a fresh process imports mlcore, Feast and pandas first (excluded), then times
  ``ingest_batch`` (read, validate, publish) + ``materialize_batch`` (engineer, offline
  partition, online write) of the same file into the restored home.
Ratio = median freshness / median compute. Breakdown (medians, from the metadata DB and task
logs): trigger -> ingest task start, ingest task (startup / callable / finish), ingest end ->
materialize run queued (asset event), -> materialize_batch start (via resolve_batches), the
materialize_batch task, its end -> read seen. ``--quick``: 1,500-row history, 2,000-row 2018
slice, 20,000 synthetic rows, 1 round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # Feast imports feature_repo/*.py: write nothing into the repo
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PROBLEM,
    ROOT,
    arg_parser,
    bench_stack,
    code,
    finish,
    load_line,
    log,
    machine,
    new_settings,
    scheduler_args,
    seed_home,
    slice_files,
    stack_env,
    task_breakdown,
    temp_work,
    utc_now,
)
from airflow_stack import Stack  # noqa: E402

INGEST, MATERIALIZE = f"{PROBLEM}__ingest_batch", f"{PROBLEM}__materialize_features"
TARGET = 1.5
SAMPLE = 100
ID_OFFSET = 1_000_000_000  # synthesized ids: past every real id


# ---------------------------------------------------------------------------- inputs

def synthesize(path: Path, rows: int) -> Path:
    """``rows`` real rows resampled (seeded), new ids past every real id, year 2018."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_ingest import ROW_GROUP, load_real

    base = load_real()
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, base.schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            chunk = base.take(pa.array(rng.integers(0, len(base), size=n)))
            chunk = chunk.set_column(chunk.schema.get_field_index("id"), "id", pa.array(
                np.arange(ID_OFFSET + start, ID_OFFSET + start + n, dtype=np.int64)))
            chunk = chunk.set_column(chunk.schema.get_field_index("year"), "year",
                                     pa.array(np.full(n, 2018, dtype=np.int64)))
            writer.write_table(chunk, row_group_size=ROW_GROUP)
    return path


def sample_keys(path: Path) -> list[int]:
    import numpy as np
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["id"])["id"].to_numpy()
    return [int(k) for k in np.random.default_rng(1).choice(ids, size=min(SAMPLE, len(ids)),
                                                           replace=False)]


# ---------------------------------------------------------------------------- compute side

def compute_child(home: str, source: str, batch_id: str) -> None:
    # Imports excluded: the same modules the shipped executor preloads, before the clock starts.
    from batchloop_airflow.executor import preload

    preload()
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.problems import get_problem

    settings = new_settings(Path(home))
    spec = get_problem(PROBLEM, settings.problems_dir)
    t0 = time.perf_counter()
    manifest = ingest_batch(spec, source, batch_id, settings)
    t1 = time.perf_counter()
    result = materialize_batch(spec, batch_id, settings)
    t2 = time.perf_counter()
    print(json.dumps({"ingest": t1 - t0, "materialize": t2 - t1, "total": t2 - t0,
                      "rows": manifest.published_rows, "online_rows": result.rows}))


def run_compute(home: Path, source: Path, batch_id: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--compute-child", str(home), str(source),
                          batch_id], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"compute side failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------- DAG side

def run_dag(stack: Stack, home: Path, source: Path, batch_id: str,
            keys: list[int]) -> dict[str, Any]:
    from mlcore.feast.online import online_feature_rows
    from mlcore.problems import get_problem

    settings = new_settings(home)
    spec = get_problem(PROBLEM, settings.problems_dir)
    if any(online_feature_rows(spec, keys, settings)):
        sys.exit("the sampled keys are already online before the batch arrived")
    t0 = time.time()
    run_id = stack.trigger(INGEST, {"batch_id": batch_id, "source": str(source)})
    polls = 0
    while True:
        rows = online_feature_rows(spec, keys, settings)
        polls += 1
        if all(r is not None and all(v is not None for v in r) for r in rows):
            seen = time.time()
            break
        if time.time() - t0 > 3600:
            sys.exit(f"no online values after an hour\n{stack.tail()}")
        if polls % 50 == 0 and stack.run_state(INGEST, run_id) == "failed":
            sys.exit(f"ingest run failed\n{stack.tail()}")
        time.sleep(0.1)
    ingest = stack.run_times(INGEST, run_id)
    mat_id = stack.wait("the materialize run", lambda: next(
        (r["run_id"] for r in stack.query(
            "select run_id from dag_run where dag_id = ? order by id desc limit 1", MATERIALIZE)
         if r["run_id"] not in seen_runs), None), 600)
    seen_runs.add(mat_id)
    if stack.wait_run(MATERIALIZE, mat_id, 3600) != "success":
        sys.exit(f"materialize run {mat_id} failed\n{stack.tail()}")
    mat = stack.run_times(MATERIALIZE, mat_id)
    ing_ti = ingest["tasks"][0]
    mat_ti = next(t for t in mat["tasks"] if t["task_id"] == "materialize_batch")
    ing_parts = task_breakdown(stack, INGEST, run_id, ingest)[0]
    mat_parts = next(t for t in task_breakdown(stack, MATERIALIZE, mat_id, mat)
                     if t["task_id"] == "materialize_batch")
    return {"freshness": seen - t0, "polls": polls, "parts": {
        "trigger → ingest task start": ing_ti["start"] - t0,
        "ingest task: startup": ing_parts["startup"],
        "ingest task: callable": ing_parts["callable"],
        "ingest task: finish": ing_parts["finish"],
        "ingest end → materialize run queued (asset event)": mat["queued"] - ing_ti["end"],
        "materialize queued → materialize_batch start (incl. resolve_batches)":
            mat_ti["start"] - mat["queued"],
        "materialize_batch task: startup": mat_parts["startup"],
        "materialize_batch task: callable": mat_parts["callable"],
        "materialize_batch: callable end → read seen (< 0: readable before it returned)":
            seen - (mat_ti["start"] + (mat_parts["startup"] or 0) + (mat_parts["callable"] or 0)),
    }}


seen_runs: set[str] = set()


# ---------------------------------------------------------------------------- report

def _med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def render(res: dict[str, Any]) -> tuple[str, bool]:
    lines = [f"Run: {res['started']} to {res['ended']}; code {res['code']}. Executor: "
             f"{res['executor']}. Settings beyond the Makefile's: "
             f"{res.get('airflow_env') or 'none'}.",
             f"{load_line(res)} History online: "
             + ", ".join(f"{y}: {n:,} rows" for y, n in res["seed"]["rows"].items())
             + f". Standalone start {res['stack_start']:.0f} s, warm-up run (200 rows) "
             f"{res['warmup']:.1f} s (neither counted).", ""]
    met = True
    for ds in res["datasets"]:
        rounds, n = ds["rounds"], len(ds["rounds"])
        fresh = _med([r["dag"]["freshness"] for r in rounds])
        comp = _med([r["compute"]["total"] for r in rounds])
        ratio = fresh / comp
        met = met and ratio <= TARGET
        head = " | ".join(f"round {i + 1}" for i in range(n))
        lines += [f"**{ds['label']} ({ds['rows']:,} rows): freshness {fresh:.2f} s / compute "
                  f"{comp:.2f} s = {ratio:.2f}×** (target ≤ {TARGET:g}×: "
                  f"**{'met' if ratio <= TARGET else 'NOT met'}**)", "",
                  f"| | {head} | median |", "|---|" + "---:|" * (n + 1)]

        def row(label: str, xs: list[float], bold: bool = False) -> str:
            m = f"{_med(xs):.2f}"
            return (f"| {label} | " + " | ".join("–" if x is None else f"{x:.2f}" for x in xs)
                    + f" | {'**' + m + '**' if bold else m} |")
        lines.append(row("**arrival → first online read** (s)",
                         [r["dag"]["freshness"] for r in rounds], True))
        for part in rounds[0]["dag"]["parts"]:
            lines.append(row(f"&nbsp;&nbsp;↳ {part}", [r["dag"]["parts"][part] for r in rounds]))
        lines += [row("**compute: ingest + validate + materialize** (s)",
                      [r["compute"]["total"] for r in rounds], True),
                  row("&nbsp;&nbsp;↳ `ingest_batch`", [r["compute"]["ingest"] for r in rounds]),
                  row("&nbsp;&nbsp;↳ `materialize_batch`",
                      [r["compute"]["materialize"] for r in rounds]),
                  "| ratio | " + " | ".join(
                      f"{r['dag']['freshness'] / r['compute']['total']:.2f}×" for r in rounds)
                  + f" | **{ratio:.2f}×** (median / median) |", ""]
    return "\n".join(lines), met


# ---------------------------------------------------------------------------- main

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "the target is missed", json_out=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--synthetic-rows", type=int, default=1_000_000, help="0: skip it")
    p.add_argument("--history-rows", type=int, default=0, help="rows per history year (0: all)")
    p.add_argument("--real-rows", type=int, default=0, help="rows of the 2018 file (0: all)")
    p.add_argument("--quick", action="store_true", help="small data, 1 round")
    scheduler_args(p)
    p.add_argument("--compute-child", nargs=3, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.compute_child:
        compute_child(*args.compute_child)
        return 0
    if args.quick:
        args.rounds, args.history_rows = 1, args.history_rows or 1500
        args.real_rows, args.synthetic_rows = args.real_rows or 2000, min(args.synthetic_rows,
                                                                          20_000)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res: dict[str, Any] = {"started": utc_now(), "code": code(), "load_before": os.getloadavg(),
                           "machine": machine("apache-airflow", "feast"),
                           "executor": "stock LocalExecutor" if args.stock_executor
                           else "shipped (Makefile)", "datasets": []}
    with temp_work("bench-freshness-", args.workdir) as tmp:
        home, snapshot = tmp / "home", tmp / "snapshot"
        log(f"seeding {home} ...")
        res["seed"] = seed_home(new_settings(home), slice_files(
            args.history_rows, tmp, (2015, 2016, 2017)), train=False)
        shutil.copytree(home, snapshot)
        batches = [("real 2018 batch", slice_files(args.real_rows, tmp, (2018,))[2018])]
        if args.synthetic_rows:
            batches.append(("synthetic batch", synthesize(tmp / "synthetic.parquet",
                                                          args.synthetic_rows)))
        res["airflow_env"] = env = stack_env(args)
        with bench_stack(tmp / "airflow", home, env, dag_ids=(INGEST, MATERIALIZE)) as stack:
            res["stack_start"] = stack.start_seconds
            log(f"standalone up in {stack.start_seconds:.0f} s")
            for dag_id in (INGEST, MATERIALIZE):
                stack.set_paused(dag_id, False)
            # Warm-up, discarded: the first task processes after a start are slower (~8 s).
            warm = slice_files(200, tmp / "warmup", (2018,))[2018]
            res["warmup"] = run_dag(stack, home, warm, "warmup", sample_keys(warm))["freshness"]
            log(f"warm-up run (discarded): {res['warmup']:.1f} s")
            for label, src in batches:
                import pyarrow.parquet as pq

                ds = {"label": label, "rows": pq.read_metadata(src).num_rows, "rounds": []}
                keys = sample_keys(src)
                for i in range(args.rounds):
                    r: dict[str, Any] = {}
                    for side in (("dag", "compute") if i % 2 == 0 else ("compute", "dag")):
                        shutil.rmtree(home)
                        shutil.copytree(snapshot, home)
                        bid = f"fresh-{label.split()[0]}-{side}-r{i + 1}"
                        r[side] = (run_dag(stack, home, src, bid, keys) if side == "dag"
                                   else run_compute(home, src, bid, stack.env))
                    ds["rounds"].append(r)
                    log(f"  {label} round {i + 1}: freshness {r['dag']['freshness']:.2f} s, "
                        f"compute {r['compute']['total']:.2f} s, ratio "
                        f"{r['dag']['freshness'] / r['compute']['total']:.2f}x")
                res["datasets"].append(ds)
    return finish(res, render, args)


if __name__ == "__main__":
    sys.exit(main())
