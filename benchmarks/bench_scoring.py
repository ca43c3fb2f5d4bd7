"""Batch-scoring benchmark: the whole ``score_batch`` task against the bare ``predict_proba``.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_scoring.py [--rounds 3] [--synthetic-rows 1000000] [--threads 1]
                                       [--json OUT] [--quick] [--check] [--profile]

Issue 7: "rows/s of the whole scoring task (load champion, fetch features, predict, write
predictions) / rows/s of bare ``predict_proba`` on the same matrix; target >= 0.3".

Setup (not timed): one fresh MLCORE home in a temp dir outside the repo (SQLite store, the
embedded Feast repo); the real 2015-2017 batches ingested + materialized; two models trained on
them with ``train_contender``: the loop's own pick (``algorithm=auto``: every candidate of
``problems/census_employment.yaml``, best on validation) and ``logistic_regression`` (a fast
predictor: the hardest ratio). Then the batches to score, ingested + materialized: the real
2018 batch (~70k rows) and a synthetic batch of ``--synthetic-rows`` (real 2015-2018 rows
resampled with replacement, as ``bench_scale.py`` does, ids moved above the real ones).

Each round (``--rounds``, medians reported), for every batch x model: the model becomes the
champion (no challenger: no shadow scoring) and the batch's earlier scores by it are deleted
(untimed: the batch arrives unscored; a re-run's delete is not in the figure), then
- whole task: ``mlcore.scoring.score_batch(spec, batch, settings)`` timed in-process (imports
  excluded, as on the other side); sub-stages timed by wrapping names in ``mlcore.scoring``
  (champion load: get_batch/alias_holder/get_version/load_model; feature fetch:
  require_materialized + ``batch_features``, the point-in-time frame; predict: ``_predict``
  (feature selection + ``predict_proba``); store: ``_store``; rest: key strings etc.);
- bare: ``mlcore.model.evaluation.predict_proba(model, X)`` (the pipeline's ``predict_proba``,
  column 1) of the same champion, loaded once, on ``X`` = the same rows and features, already in
  memory: ``mlcore.feast.bounded.point_in_time_features(spec, [batch], settings, with_target=False)
  [spec.feature_names]``, built once in setup.
Ratio = (rows / whole s) / (rows / bare s) = bare s / whole s, per round; median reported.
Verify on read (issue 14): the time inside ``mlcore.data.integrity.verified`` (size, footer rows and
SHA-256 of the batch's curated file and of every features partition of the problem), with the
per-process memo cleared before each round (an Airflow task is a fresh process: every check is
cold), reported as seconds and as a share of the whole task.
Each round also checks the stored scores' mean equals the bare scores' mean exactly (same
rows, same order, same model), and times a raw ``sqlite3`` ``executemany`` of as many rows into
a fresh predictions table (same schema and unique index): the floor of any SQLite store.
``OMP_NUM_THREADS=--threads`` (default 1) for both sides.
``--quick``: 2,000 real rows per year, a 10,000-row synthetic batch, 1 round (~40 s).
Exit 0; with ``--check``, exit 1 when a ratio is below the target.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # Feast imports feature_repo/*.py: write nothing into the repo
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    arg_parser,
    census_spec,
    code,
    init_home,
    load,
    log,
    machine,
    new_settings,
    openmp_threads,
    temp_work,
    utc_now,
)

DATA = ROOT / "data" / "census_ma_employment"
PROBLEM = "census_employment"
HISTORY, REAL = (2015, 2016, 2017), 2018
ID_OFFSET = 1_000_000_000  # synthetic ids start here (real ids are < 300,000)
TARGET = 0.3
# label -> names in mlcore.scoring whose calls are timed (exclusive of nested wrapped calls)
STAGES = {"champion load": ("get_batch", "alias_holder", "get_version", "load_model"),
          "feature fetch": ("require_materialized", "batch_features"),
          "predict": ("_predict",), "store": ("_store",)}


class VerifyTimer:
    """Seconds inside ``mlcore.data.integrity.verified`` (every verify-on-read check passes it)."""

    def __init__(self) -> None:
        import mlcore.data.integrity as integrity

        self.integrity, self.seconds = integrity, 0.0
        inner = integrity.verified

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        integrity.verified = timed

    def cold(self) -> None:
        """Forget what this process already verified (the next checks hash every file)."""
        self.integrity._verified.clear()

    def take(self) -> float:
        out, self.seconds = self.seconds, 0.0
        return out


class Stages:
    """Seconds per stage of ``score_batch``, by wrapping names in ``mlcore.scoring``."""

    def __init__(self) -> None:
        import mlcore.scoring as scoring

        self.seconds: dict[str, float] = {}
        for label, names in STAGES.items():
            for name in names:
                if hasattr(scoring, name):  # a renamed function is simply not split out
                    setattr(scoring, name, self._wrap(label, getattr(scoring, name)))

    def _wrap(self, label: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
        return wrapped

    def take(self, total: float) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        out["rest"] = total - sum(out.values())
        return out


def write_inputs(work: Path, per_year: int, synthetic: int) -> dict[str, Path]:
    """The real yearly files (first ``per_year`` rows if > 0) and the synthetic batch."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, tables = {}, []
    for year in (*HISTORY, REAL):
        t = pq.read_table(DATA / f"employment_{year}.parquet")
        tables.append(t)
        files[str(year)] = work / f"real-{year}.parquet"
        pq.write_table(t.slice(0, per_year) if per_year else t, files[str(year)])
    base = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    rng = np.random.default_rng(synthetic)
    chunk = base.take(pa.array(rng.integers(0, len(base), size=synthetic)))
    ids = pa.array(np.arange(ID_OFFSET, ID_OFFSET + synthetic, dtype=np.int64))
    chunk = chunk.set_column(base.schema.get_field_index("id"), "id", ids)
    files["synthetic"] = work / "synthetic.parquet"
    pq.write_table(chunk, files["synthetic"], row_group_size=131_072)
    return files


def setup(spec: Any, settings: Any, files: dict[str, Path], quick: bool) -> dict[str, Any]:
    """History, the two models, the batches to score; returns their ids and versions."""
    from mlcore.config import TrainConfig
    from mlcore.datasets import build_dataset
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.model.registry import get_version
    from mlcore.training import train_contender

    init_home(settings)
    rows = {}
    for name in [str(y) for y in HISTORY] + [str(REAL), "synthetic"]:
        t0 = time.perf_counter()
        m = ingest_batch(spec, str(files[name]), f"bench-{name}", settings)
        materialize_batch(spec, m.batch_id, settings)
        rows[m.batch_id] = m.published_rows
        log(f"  batch {m.batch_id}: {m.published_rows:,} rows in {time.perf_counter() - t0:.1f} s")
        if name == str(HISTORY[-1]):
            dataset = build_dataset(spec, settings)
    models = {}
    for algo in ("auto", "logistic_regression"):
        t0 = time.perf_counter()
        cfg = TrainConfig(algorithm=algo, max_train_rows=1_000_000)
        ref = train_contender(spec, dataset, cfg, settings)
        picked = get_version(spec.name, ref.version, settings.db_url).algorithm
        label = f"{picked} (loop's pick)" if algo == "auto" else picked
        models[label] = ref.version
        log(f"  v{ref.version}: {label} trained in {time.perf_counter() - t0:.1f} s")
    return {"rows": rows, "models": models, "train_rows": dataset.train_rows}


def make_champion(spec: Any, settings: Any, version: int) -> None:
    from mlcore.model.registry import alias_holder, move_alias

    current = alias_holder(spec.name, settings.db_url)
    if current != version:
        move_alias(spec.name, expected=current, new=version, reason="bench_scoring",
                   url=settings.db_url, actor="bench")


def clear_predictions(spec: Any, settings: Any, batch_id: str, version: int) -> None:
    """Untimed: the batch is unscored by this version, as when it arrives (a re-run's delete of
    the previous scores is not part of the figure)."""
    from sqlalchemy import delete

    from mlcore.store.models import Prediction
    from mlcore.store.session import session_scope

    with session_scope(settings.db_url) as s:
        s.execute(delete(Prediction).where(Prediction.batch_id == batch_id,
                                           Prediction.model_version == version))


def store_floor(work: Path, rows: int, batch_id: str) -> float:
    """Seconds of a raw ``sqlite3`` ``executemany`` of ``rows`` predictions (prebuilt tuples,
    one transaction, the metadata store's pragmas) into a fresh copy of the predictions table
    with its unique index: what any SQLite prediction store pays per row."""
    import sqlite3

    from sqlalchemy import create_engine

    from mlcore.store.models import Prediction

    path = work / "floor.db"
    path.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    Prediction.__table__.create(engine)  # type: ignore[attr-defined]
    engine.dispose()
    tuples = [(PROBLEM, batch_id, str(ID_OFFSET + i), 1, 0.5, "2026-01-01 00:00:00.000000")
              for i in range(rows)]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    t0 = time.perf_counter()
    conn.executemany("INSERT INTO predictions (problem, batch_id, entity_key, model_version, "
                     "score, created_at) VALUES (?, ?, ?, ?, ?, ?)", tuples)
    conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    path.unlink()
    return elapsed


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from mlcore.feast.bounded import point_in_time_features
    from mlcore.model.evaluation import predict_proba
    from mlcore.model.registry import get_version, load_model
    from mlcore.scoring import score_batch
    from mlcore.store.catalog import get_batch

    spec = census_spec()
    settings = new_settings(work / "home")
    log(f"setup in {settings.home} ...")
    files = write_inputs(work, args.rows_per_year, args.synthetic_rows)
    info = setup(spec, settings, files, args.quick)
    matrices = {}
    for batch_id in (f"bench-{REAL}", "bench-synthetic"):
        batch = get_batch(spec.name, batch_id, settings.db_url)
        frame = point_in_time_features(spec, [batch], settings, with_target=False)
        matrices[batch_id] = frame[spec.feature_names]
        del frame
    models = {label: load_model(get_version(spec.name, v, settings.db_url), settings)
              for label, v in info["models"].items()}
    stages, verify = Stages(), VerifyTimer()
    results: list[dict[str, Any]] = []
    profiler = None
    for r in range(args.rounds):
        for batch_id, X in matrices.items():
            for label, version in info["models"].items():
                make_champion(spec, settings, version)
                clear_predictions(spec, settings, batch_id, version)
                gc.collect()
                verify.cold()
                verify.take()
                if args.profile and r == args.rounds - 1:
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
                t0 = time.perf_counter()
                result = score_batch(spec, batch_id, settings)
                whole = time.perf_counter() - t0
                if profiler is not None:
                    profiler.disable()
                    print_profile(profiler, f"{batch_id} x {label}")
                    profiler = None
                split, verify_s = stages.take(whole), verify.take()
                gc.collect()
                t0 = time.perf_counter()
                bare = predict_proba(models[label], X)
                bare_s = time.perf_counter() - t0
                same = result.rows == len(X) and result.mean_score == float(bare.mean())
                floor = store_floor(work, result.rows, batch_id)
                results.append({"round": r + 1, "batch": batch_id, "model": label,
                                "rows": result.rows, "whole_s": whole, "bare_s": bare_s,
                                "ratio": bare_s / whole, "stages": split, "same_scores": same,
                                "verify_s": verify_s,
                                "store_floor_s": floor})
                log(f"  round {r + 1} {batch_id} {label}: whole {whole:.3f} s ("
                    + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
                    + f"; verify {verify_s:.4f}), bare {bare_s:.3f} s, "
                    f"ratio {bare_s / whole:.3f}, same scores {same}; "
                    f"raw SQLite store floor {floor:.3f} s")
    return {"info": info, "results": results}


def print_profile(profiler: Any, what: str) -> None:
    import pstats

    log(f"--- cProfile of score_batch, {what} (cumulative, top 30)")
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)


def render(data: dict[str, Any], meta: dict[str, Any]) -> tuple[str, bool]:
    results, met = data["results"], True
    lines = [f"Run: {meta['started']} to {meta['ended']}; code {meta['code']}.",
             f"Machine: {meta['machine']}; load before {meta['load_before']}, after "
             f"{meta['load_after']}; {meta['openmp']}.",
             f"Models trained on {data['info']['train_rows']:,} rows (the train part of the "
             "real 2015-2017 dataset): "
             + ", ".join(f"v{v} {k}" for k, v in data["info"]["models"].items()) + ".", "",
             "| batch | rows | model | round | whole task s | rows/s | bare predict_proba s | "
             "rows/s | ratio | same scores | raw SQLite store floor s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for x in results:
        lines.append(f"| {x['batch']} | {x['rows']:,} | {x['model']} | {x['round']} | "
                     f"{x['whole_s']:.3f} | {x['rows'] / x['whole_s']:,.0f} | {x['bare_s']:.3f} | "
                     f"{x['rows'] / x['bare_s']:,.0f} | {x['ratio']:.3f} | {x['same_scores']} | "
                     f"{x['store_floor_s']:.3f} |")
    labels = [*STAGES, "rest"]
    lines += ["", f"Medians (target ratio >= {TARGET}); stage seconds inside score_batch:", "",
              "| batch | model | whole s | bare s | ratio (median of rounds) | target met | "
              + " | ".join(labels) + " | verify on read s (share) |",
              "|---|---|---:|---:|---:|---|" + "---:|" * (len(labels) + 1)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for x in results:
        groups.setdefault((x["batch"], x["model"]), []).append(x)
    for (batch, model), xs in groups.items():
        ratio = statistics.median(x["ratio"] for x in xs)
        ok = ratio >= TARGET and all(x["same_scores"] for x in xs)
        met &= ok
        med = {k: statistics.median(x["stages"].get(k, 0.0) for x in xs) for k in labels}
        lines.append(f"| {batch} | {model} | {statistics.median(x['whole_s'] for x in xs):.3f} | "
                     f"{statistics.median(x['bare_s'] for x in xs):.3f} | **{ratio:.3f}** | "
                     f"{'yes' if ok else 'NO'} | " + " | ".join(f"{med[k]:.3f}" for k in labels)
                     + f" | {_verify_cell(xs)} |")
    return "\n".join(lines), met


def _verify_cell(xs: list[dict[str, Any]]) -> str:
    seconds = statistics.median(x.get("verify_s", 0.0) for x in xs)
    share = statistics.median(x.get("verify_s", 0.0) / x["whole_s"] for x in xs)
    return f"{seconds:.4f} ({share:.1%})"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "a ratio misses the target", json_out=True)
    p.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    p.add_argument("--synthetic-rows", type=int, default=1_000_000)
    p.add_argument("--rows-per-year", type=int, default=0,
                   help="first N rows of each real yearly file (0: all, the default)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (default 1)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile score_batch in the last round (stderr; inflates that round)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2,000 rows per year, 10,000 synthetic, 1 round")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.quick:
        args.rounds, args.synthetic_rows = 1, 10_000
        args.rows_per_year = args.rows_per_year or 2000
    if args.rounds < 1 or args.threads < 1 or args.synthetic_rows < 1:
        sys.exit("--rounds, --threads and --synthetic-rows must be >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before numpy / scikit-learn load
    meta: dict[str, Any] = {"started": utc_now(), "code": code(), "load_before": load()}
    with temp_work("bench-scoring-", args.workdir) as work, \
            contextlib.redirect_stdout(sys.stderr):  # Feast prints progress to stdout
        data = measure(args, work)
    meta.update(ended=utc_now(), machine=machine(), load_after=load(), openmp=openmp_threads())
    table, met = render(data, meta)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, **data}, indent=1, default=str))
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
