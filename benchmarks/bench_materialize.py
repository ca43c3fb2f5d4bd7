"""Materialization benchmark (issues 7, 19): the feature step's online write into each online
store against a raw write of the same rows: mlcore's SQLite store against a plain SQLite
``executemany``, PostgreSQL against a ``COPY``, Redis against a pipelined ``HSET``; and against
Feast's own ``FeatureStore.materialize``.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_materialize.py [--entities 1000000] [--rounds 3] [--bare-rounds-big 1]
        [--stores sqlite postgres redis] [--bare-rounds-servers 1] [--quick] [--check]
        [--workdir DIR] [--keep]

Data: the real 2018 batch (70,131 entities x 16 features) and a synthetic batch of
``--entities`` (the real 2015-2018 rows resampled with replacement, unique ids, year 2018). Each
gets its own fresh MLCORE home (setup, not timed: ingested, definitions applied, materialized
once) and, for the server stores, its own fresh PostgreSQL database (Feast's SQL registry, and
the online table for ``postgres``; dropped after) on ``BATCHLOOP_BENCH_PG`` (default
postgresql://postgres@127.0.0.1:5432) and a private ``redis-server`` (no persistence) on a free
port, started and stopped by the bench. Feast is configured by deploy/feature_store.<store>.yaml.
Per dataset and store, ``--rounds`` rounds, the order of the variants alternated each round,
every variant on an empty store (SQLite: a fresh file; PostgreSQL: the table truncated; Redis:
the db flushed):

  * ours: ``materialize_batch`` (the whole step: read curated, engineer, write the offline
    partition, open the store + registry check, online write, record) and, timed inside it,
    its online part (SQLite: ``write_online``, bulk newer-wins upsert; PostgreSQL / Redis:
    ``materialize_online``, ``OnlineWriter``'s newer-wins write; both + the registry's
    materialization interval); then ``materialize_batch`` again over the full store (an
    idempotent re-run). After each, Feast's own ``get_online_features`` reads 200 entities
    back and they must equal the engineered frame (not timed; the bench fails otherwise).
  * baseline, SQLite: the engineered frame's values (id, event time, 16 features) as one wide
    row per entity, ``executemany`` into a fresh SQLite file and table in one transaction
    (default pragmas); building the tuples from the frame is inside the clock.
  * baseline, PostgreSQL: psycopg2 ``copy_expert`` of a text-format buffer into a fresh table
    ``LIKE`` Feast's (its primary key and index included): one row per entity x feature, the
    columns ours writes (entity_key, feature_name, value, value_text, event_ts, created_ts).
    The serialized keys and values are ready before the clock; the buffer is built inside it.
  * baseline, Redis: one redis-py pipeline (transaction=False) of one ``HSET`` per entity of
    Feast's hash (its key, ``_ts:<view>`` and the mmh3 field per feature), the same bytes ours
    writes, ready before the clock; the commands are built inside it.
  * bare Feast: ``FeatureStore.materialize`` of the batch window (SQLite: into Feast's own
    SQLite store, a second config with ``type: sqlite``; PostgreSQL / Redis: Feast's own write
    into the same store). At the big size it takes minutes: ``--bare-rounds-big`` rounds for
    SQLite, ``--bare-rounds-servers`` for the server stores on both datasets (0 skips it).

Targets: online part / baseline <= 20x (SQLite), <= 3x (PostgreSQL, Redis). Exit 0; with
``--check``, exit 1 when one is missed.
``--quick``: 2,000 + 5,000 entities, 1 round; a smoke run whose ratios mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import ROOT, ReportHead, arg_parser, census_spec, code, log, machine, temp_work  # noqa: E402
from _materialize_servers import (
    BASELINE,
    Server,
    bare_materialize,
    clock,
    ours_step,
    pg_database,
    redis_server,
)

sys.dont_write_bytecode = True

DATA = ROOT / "data" / "census_ma_employment"
TARGETS = {"sqlite": 20.0, "postgres": 3.0, "redis": 3.0}
STORES = tuple(TARGETS)
NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL", "redis": "Redis"}
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
        self.kind = "sqlite"
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

        self.fresh_online(self.ours)
        return ours_step(self, self.ours, feast_store, "write_online")

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
        self.fresh_online(self.stock)
        return {"materialize": bare_materialize(self, self.stock)}


def race(ds: Dataset | Server, rounds: int, bare_rounds: int) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    fns = {"ours": ds.ours_run, "baseline": ds.baseline_run, "bare Feast": ds.bare_run}
    for i in range(rounds):
        order = [v for v in VARIANTS if v != "bare Feast" or i < bare_rounds]
        for variant in order[:: 1 if i % 2 == 0 else -1]:
            runs[variant].append(fns[variant]())
            log(f"  {ds.label} {ds.kind} round {i + 1} {variant}: " + ", ".join(
                f"{k} {v:.3f} s" for k, v in runs[variant][-1].items()))
    return runs


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def render(ds: Dataset | Server, runs: dict[str, list[dict[str, float]]],
           ) -> tuple[list[str], bool]:
    """SQLite's table as before issue 19; a server store's rows say which store they are."""
    kind, name, target = ds.kind, NAMES[ds.kind], TARGETS[ds.kind]
    sql = kind == "sqlite"
    base = med(runs["baseline"], BASELINE[kind])
    each = lambda v, k: " ".join(f"{r[k]:.2f}" for r in runs[v])  # noqa: E731
    label = lambda v: v if sql else f"{v} ({name})"  # noqa: E731
    lines = [f"**{ds.label}: {ds.rows:,} entities x {len(ds.spec.feature_names)} features"
             f"{'' if sql else ', ' + name + ' online store'}**", "",
             "| variant | median s | rounds (s) | / baseline |", "|---|---:|---|---:|"]
    for variant, key in [("ours", "online part"), ("ours", "whole step"),
                         ("ours", "re-run online part"), ("ours", "re-run whole step"),
                         ("baseline", BASELINE[kind]), ("baseline", "COPY: of it, building "
                                                        "the buffer"),
                         ("bare Feast", "materialize")]:
        if runs[variant] and key in runs[variant][0]:
            m = med(runs[variant], key)
            lines.append(f"| {label(variant)}: {key} | {m:.3f} | {each(variant, key)} | "
                         f"{m / base:.1f}x |")
    online = med(runs["ours"], "online part") / base
    met = online <= target
    lines += ["", ("Online part" if sql else f"{name} online part") + " / baseline"
              f"{'' if sql else ' (' + BASELINE[kind] + ')'}: **{online:.1f}x** (target <= "
              f"{target:g}x: **{'met' if met else 'NOT met'}**); whole step / baseline: "
              f"{med(runs['ours'], 'whole step') / base:.1f}x; {ds.rows / base:,.0f} entities/s "
              f"baseline, {ds.rows / med(runs['ours'], 'online part'):,.0f} ours."]
    if runs["bare Feast"]:
        bare = med(runs["bare Feast"], "materialize")
        lines.append(f"Bare Feast `materialize` (Feast's {name} store) / baseline: "
                     f"{bare / base:.1f}x; ours / bare Feast: online part "
                     f"{med(runs['ours'], 'online part') / bare:.3f}, whole step "
                     f"{med(runs['ours'], 'whole step') / bare:.3f} "
                     f"({len(runs['bare Feast'])} bare round(s)).")
    return lines + [""], met


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "a target is missed", keep=True)
    p.add_argument("--entities", type=int, default=1_000_000, help="synthetic batch size")
    p.add_argument("--real-rows", type=int, default=0, help="first N rows of 2018 (0: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    p.add_argument("--bare-rounds-big", type=int, default=1,
                   help="bare Feast rounds on the synthetic batch, SQLite (0: skip)")
    p.add_argument("--bare-rounds-servers", type=int, default=1,
                   help="bare Feast rounds per batch on PostgreSQL / Redis (0: skip)")
    p.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES),
                   help="online stores measured (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2k + 5k entities, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.entities, args.real_rows, args.rounds = 5_000, 2_000, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec, commit = census_spec(), code()  # the code as the run starts
    head = ReportHead("Materialization (`bench_materialize.py`): issues 7, 19",
                      "bench_materialize.py")
    out, ok = [], True
    servers = [s for s in STORES if s in args.stores and s != "sqlite"]
    with temp_work("bench-materialize-", args.workdir, args.keep) as work, \
            redis_server(work) if "redis" in servers else contextlib.nullcontext():
        for name, n, synthetic, bare in [
                ("real 2018 batch", args.real_rows or 10**9, False, args.rounds),
                ("synthetic", args.entities, True, args.bare_rounds_big)]:
            log(f"setup {name} in {work} ...")
            key = name.split()[0]
            with pg_database(bool(servers)), contextlib.redirect_stdout(sys.stderr):
                ds = Dataset(spec, work, key, name, batch_file(work, key, n, synthetic))
                targets: list[Dataset | Server] = [ds] if "sqlite" in args.stores else []
                targets += [Server(ds, s) for s in servers]
                for target in targets:
                    lines, met = render(target, race(
                        target, args.rounds,
                        bare if target.kind == "sqlite" else args.bare_rounds_servers))
                    out += lines
                    ok &= met
    print("\n".join([*head.lines(f"{args.rounds} round(s), order alternated, medians. "
                                 f"Code at the start: {commit}.",
                                 f"Machine: {machine('feast', 'pandas', 'numpy', 'pyarrow')}, "
                                 f"SQLite {sqlite3.sqlite_version}."), *out]))
    if args.quick:
        print("Quick mode (smoke run): the ratios mean little.")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
