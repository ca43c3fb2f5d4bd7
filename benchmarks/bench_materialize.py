"""Materialization benchmark (issue 7): the feature step's online write into mlcore's SQLite
online store against a plain SQLite ``executemany`` of the same values; and against Feast's own
``FeatureStore.materialize`` into Feast's own SQLite store.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_materialize.py [--entities 1000000] [--rounds 3] [--bare-rounds-big 1]
                                           [--quick] [--check] [--workdir DIR] [--keep]

Data: the real 2018 batch (70,131 entities x 16 features) and a synthetic batch of
``--entities`` (the real 2015-2018 rows resampled with replacement, unique ids, year 2018). Each
gets its own fresh MLCORE home (setup, not timed: ingested, definitions applied, materialized
once). Per dataset, ``--rounds`` rounds, the order of the variants alternated each round, every
variant on a fresh online store file:

  * ours: ``materialize_batch`` (the whole step: read curated, engineer, write the offline
    partition, open the store + registry check, online write, record) and, timed inside it,
    its online part ``_write_online`` (bulk newer-wins upsert + the registry's materialization
    interval); then ``materialize_batch`` again over the full store (an idempotent re-run).
  * baseline: the engineered frame's values (id, event time, 16 features) as one wide row per
    entity, ``executemany`` into a fresh SQLite file and table in one transaction (default
    pragmas); building the tuples from the frame is inside the clock.
  * bare Feast: ``FeatureStore.materialize`` of the batch window into Feast's own SQLite store
    (same home, a second config with ``type: sqlite``). At the big size it takes minutes and
    ~5 GB: ``--bare-rounds-big`` rounds (0 skips it).

Target: online part / baseline <= 20x. Exit 0; with ``--check``, exit 1 when it is missed.
``--quick``: 2,000 + 5,000 entities, 1 round; a smoke run whose ratios mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT, ReportHead, arg_parser, census_spec, log, machine, temp_work  # noqa: E402

sys.dont_write_bytecode = True

DATA = ROOT / "data" / "census_ma_employment"
TARGET = 20.0
VARIANTS = ("ours", "baseline", "bare Feast")


def batch_file(work: Path, name: str, entities: int, synthetic: bool) -> Path:
    """The real 2018 file (first ``entities`` rows), or a resampled synthetic one."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not synthetic:
        table = pq.read_table(DATA / "employment_2018.parquet")
        table = table.slice(0, entities) if entities < table.num_rows else table
    else:
        files = sorted(DATA.glob("employment_*.parquet"))
        real = pa.concat_tables([pq.read_table(p) for p in files]).unify_dictionaries()
        real = real.combine_chunks()
        pick = np.random.default_rng(0).integers(0, real.num_rows, entities)
        table = real.take(pa.array(pick))
        table = table.set_column(table.schema.get_field_index("id"), "id",
                                 pa.array(np.arange(entities, dtype="int64") + 10_000_000))
        table = table.set_column(table.schema.get_field_index("year"), "year",
                                 pa.array(np.full(entities, 2018), type=table["year"].type))
    path = work / f"{name}.parquet"
    pq.write_table(table, path)
    return path


class Dataset:
    """One home with its batch ingested and materialized once, ours and Feast's stock config."""

    def __init__(self, spec: Any, work: Path, name: str, label: str, source: Path) -> None:
        from mlcore.config import Settings
        from mlcore.data.io import read_curated
        from mlcore.feast.store import apply_definitions
        from mlcore.features import materialize_batch
        from mlcore.ingestion import ingest_batch
        from mlcore.store.catalog import get_batch
        from mlcore.store.session import upgrade

        self.spec, self.work, self.name, self.label = spec, work, name, label
        home = work / name / "home"
        home.mkdir(parents=True)
        self.ours = Settings(home=home, problems_dir=ROOT / "problems",
                             feature_repo=ROOT / "feature_repo")
        stock = work / name / "feature_store.stock.yaml"
        stock.write_text((ROOT / "feature_repo" / "feature_store.yaml").read_text()
                         .replace("mlcore.feast.sqlite_online.FastSqliteOnlineStore", "sqlite")
                         .replace("/feast/registry.db", "/feast/stock_registry.db")
                         .replace("/feast/online_store.db", "/feast/stock_online.db"))
        self.stock = self.ours.model_copy(update={"feast_config": stock})
        upgrade(self.ours.db_url)
        apply_definitions(self.ours)
        apply_definitions(self.stock)
        ingest_batch(spec, str(source), "b", self.ours)
        self.result = materialize_batch(spec, "b", self.ours)  # also warms imports and caches
        from mlcore.features import engineer

        self.frame = engineer(read_curated(get_batch(spec.name, "b", self.ours.db_url)), spec)
        self.rows = len(self.frame)

    def fresh_online(self, settings: Any) -> None:
        """Remove the online store file; Feast's own store needs its table back first."""
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        from mlcore.feast.store import feature_store

        for path in (settings.home / "feast").glob("*online*.db*"):
            if ("stock" in path.name) == (settings is self.stock):
                path.unlink()
        if settings is self.stock:
            store = feature_store(settings)
            view = store.get_feature_view(self.spec.feature_view)
            online = SqliteOnlineStore()
            online.update(store.config, [], [view], [], [], False)
            online._conn.close()  # type: ignore[union-attr]

    def ours_run(self) -> dict[str, float]:
        """The whole step on a fresh store with its online part, then a re-run over it."""
        import mlcore.feast.store as feast_store
        import mlcore.features as features

        spent: list[float] = []
        real = feast_store.write_online

        def timed(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                real(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

        self.fresh_online(self.ours)
        feast_store.write_online = timed  # type: ignore[assignment]
        try:
            step = clock(lambda: features.materialize_batch(self.spec, "b", self.ours))
            rerun = clock(lambda: features.materialize_batch(self.spec, "b", self.ours))
        finally:
            feast_store.write_online = real  # type: ignore[assignment]
        return {"whole step": step, "online part": spent[0], "re-run whole step": rerun,
                "re-run online part": spent[1]}

    def baseline_run(self) -> dict[str, float]:
        import pandas as pd

        path = self.work / self.name / "baseline.db"
        path.unlink(missing_ok=True)
        names = self.spec.feature_names
        cols = ", ".join(f'"{n}" {"REAL" if self.frame[n].dtype.kind == "f" else "INTEGER"}'
                         for n in names)

        def run() -> None:
            conn = sqlite3.connect(path)
            conn.execute(f"CREATE TABLE t (id INTEGER, event_ts INTEGER, {cols})")
            ts = pd.DatetimeIndex(self.frame["event_timestamp"]).as_unit("us").asi8.tolist()
            rows = zip(self.frame["id"].tolist(), ts, *(self.frame[n].tolist() for n in names),
                       strict=True)
            with conn:
                conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' * (len(names) + 2))})",
                                 rows)
            conn.close()

        return {"executemany": clock(run)}

    def bare_run(self) -> dict[str, float]:
        from datetime import datetime

        from mlcore.feast.store import feature_store

        self.fresh_online(self.stock)
        store = feature_store(self.stock)
        start = datetime.fromisoformat(self.result.window_start)
        end = datetime.fromisoformat(self.result.window_end)
        with contextlib.redirect_stdout(sys.stderr):
            return {"materialize": clock(lambda: store.materialize(
                start_date=start, end_date=end, feature_views=[self.spec.feature_view]))}


def clock(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def race(ds: Dataset, rounds: int, bare_rounds: int) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    fns = {"ours": ds.ours_run, "baseline": ds.baseline_run, "bare Feast": ds.bare_run}
    for i in range(rounds):
        order = [v for v in VARIANTS if v != "bare Feast" or i < bare_rounds]
        for variant in order[:: 1 if i % 2 == 0 else -1]:
            runs[variant].append(fns[variant]())
            log(f"  {ds.label} round {i + 1} {variant}: " + ", ".join(
                f"{k} {v:.3f} s" for k, v in runs[variant][-1].items()))
    return runs


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def render(ds: Dataset, runs: dict[str, list[dict[str, float]]]) -> tuple[list[str], bool]:
    base = med(runs["baseline"], "executemany")
    each = lambda v, k: " ".join(f"{r[k]:.2f}" for r in runs[v])  # noqa: E731
    lines = [f"**{ds.label}: {ds.rows:,} entities x {len(ds.spec.feature_names)} features**", "",
             "| variant | median s | rounds (s) | / baseline |", "|---|---:|---|---:|"]
    for variant, key in [("ours", "online part"), ("ours", "whole step"),
                         ("ours", "re-run online part"), ("ours", "re-run whole step"),
                         ("baseline", "executemany"), ("bare Feast", "materialize")]:
        if runs[variant]:
            m = med(runs[variant], key)
            lines.append(f"| {variant}: {key} | {m:.3f} | {each(variant, key)} | "
                         f"{m / base:.1f}x |")
    online = med(runs["ours"], "online part") / base
    met = online <= TARGET
    lines += ["", f"Online part / baseline: **{online:.1f}x** (target <= {TARGET:g}x: "
              f"**{'met' if met else 'NOT met'}**); whole step / baseline: "
              f"{med(runs['ours'], 'whole step') / base:.1f}x."]
    if runs["bare Feast"]:
        bare = med(runs["bare Feast"], "materialize")
        lines.append(f"Bare Feast `materialize` (Feast's SQLite store) / baseline: "
                     f"{bare / base:.1f}x; ours / bare Feast: online part "
                     f"{med(runs['ours'], 'online part') / bare:.3f}, whole step "
                     f"{med(runs['ours'], 'whole step') / bare:.3f} "
                     f"({len(runs['bare Feast'])} bare round(s)).")
    return lines + [""], met


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "the target is missed", keep=True)
    p.add_argument("--entities", type=int, default=1_000_000, help="synthetic batch size")
    p.add_argument("--real-rows", type=int, default=0, help="first N rows of 2018 (0: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    p.add_argument("--bare-rounds-big", type=int, default=1,
                   help="bare Feast rounds on the synthetic batch (0: skip)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2k + 5k entities, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.entities, args.real_rows, args.rounds = 5_000, 2_000, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = census_spec()
    head = ReportHead("Materialization (`bench_materialize.py`): issue 7", "bench_materialize.py")
    out, ok = [], True
    with temp_work("bench-materialize-", args.workdir, args.keep) as work:
        for name, n, synthetic, bare in [
                ("real 2018 batch", args.real_rows or 10**9, False, args.rounds),
                ("synthetic", args.entities, True, args.bare_rounds_big)]:
            log(f"setup {name} in {work} ...")
            with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress to stdout
                key = name.split()[0]
                ds = Dataset(spec, work, key, name, batch_file(work, key, n, synthetic))
            lines, met = render(ds, race(ds, args.rounds, bare))
            out += lines
            ok &= met
    print("\n".join([*head.lines(f"{args.rounds} round(s), order alternated, medians.",
                                 f"Machine: {machine('feast', 'pandas', 'numpy', 'pyarrow')}, "
                                 f"SQLite {sqlite3.sqlite_version}."), *out]))
    if args.quick:
        print("Quick mode (smoke run): the ratios mean little.")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
