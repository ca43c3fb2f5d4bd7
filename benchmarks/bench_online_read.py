"""Online-read benchmark (issue 7): ``mlcore.feast.online.online_features`` against a raw SQLite
``SELECT ... WHERE entity_key IN (...)`` of the same keys from the same table.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_online_read.py [--entities 1000000] [--rounds 3] [--calls 2000]
                                           [--profile] [--quick] [--check] [--workdir DIR]

Stores (setup, not timed): a fresh MLCORE home with the real 2018 batch materialized (70,131
entities x 16 features), and one with a synthetic batch of ``--entities`` (the real rows
resampled, unique ids), both in mlcore's SQLite online store. For each store and batch size (1
and 100 keys), ``--rounds`` rounds of ``--calls`` lookups (``--calls`` / 5 for 100 keys) of random
materialized keys, the same keys for every variant; the variants run call by call, interleaved,
order alternated, so the machine's noise hits them alike:

  * baseline: raw ``sqlite3`` SELECT of entity_key, event_ts and the 16 features of the keys
    (keys packed into Feast's entity-key bytes inside the clock), ``fetchall``; own connection.
  * direct: ``online_features(spec, keys, settings)``, the default: mlcore's store read directly
    (``FastSqliteOnlineStore.read_rows``), a DataFrame out.
  * via Feast: ``online_features(..., via_feast=True)``: ``FeatureStore.get_online_features`` on
    the process's cached store, ``to_dict``, a DataFrame out.
  * rows: ``online_feature_rows(spec, keys, settings)``: the same direct read, tuples out (no
    DataFrame).

Reported per variant: medians over rounds of the wall-clock p50 and p99, and of the p99 of the
call's CPU time (``time.thread_time``: what is left once preemption by other processes is taken
out); ratio = median p99 / median p99 of the baseline. Targets (wall): ratio <= 5x, p99 <= 10 ms
(1 key) and <= 50 ms (100 keys). ``--profile`` adds a cProfile of via-Feast lookups of 100
keys. Exit 0; ``--check``: exit 1 when the direct read misses a target. ``--quick``: 2,000 +
5,000 entities, 200 calls, 1 round.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sqlite3
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT, ReportHead, arg_parser, census_spec, log, machine, temp_work  # noqa: E402
from bench_materialize import batch_file

RATIO_TARGET = 5.0
ABS_TARGET_MS = {1: 10.0, 100: 50.0}
VARIANTS = ("baseline", "direct", "via Feast", "rows")


class Store:
    """A home with one batch materialized, and the four ways to read it."""

    def __init__(self, spec: Any, work: Path, name: str, source: Path) -> None:
        from mlcore.config import Settings
        from mlcore.feast.online import _online
        from mlcore.feast.store import apply_definitions
        from mlcore.features import materialize_batch
        from mlcore.ingestion import ingest_batch
        from mlcore.store.session import upgrade

        home = work / name / "home"
        home.mkdir(parents=True)
        self.spec = spec
        self.settings = Settings(home=home, problems_dir=ROOT / "problems",
                                 feature_repo=ROOT / "feature_repo")
        upgrade(self.settings.db_url)
        apply_definitions(self.settings)
        ingest_batch(spec, str(source), "b", self.settings)
        result = materialize_batch(spec, "b", self.settings)
        import pandas as pd

        self.keys = pd.read_parquet(result.offline_uri, columns=["id"])["id"].tolist()
        start = time.perf_counter()
        from mlcore.feast.online import online_features

        online_features(spec, self.keys[:1], self.settings, via_feast=True)
        self.first_call = time.perf_counter() - start
        online = _online(self.settings)
        from mlcore.feast.sqlite_online import db_path, table_name

        self.view = online.store.get_feature_view(spec.feature_view)
        cols = ", ".join(f'"{c}"' for c in ["entity_key", "event_ts", *spec.feature_names])
        self.sql = f'SELECT {cols} FROM "{table_name(online.store.config, self.view)}" WHERE ' \
                   "entity_key IN ({})"
        self.conn = sqlite3.connect(db_path(online.store.config))
        self.prefix = struct.pack("<III", 1, 2, 2) + b"id" + struct.pack("<II", 4, 8)

    def raw(self, keys: list[int]) -> Any:
        packed = [self.prefix + struct.pack("<q", k) for k in keys]
        return self.conn.execute(self.sql.format(", ".join("?" * len(packed))),
                                 packed).fetchall()

    def variants(self) -> dict[str, Callable[[list[int]], Any]]:
        from mlcore.feast.online import online_feature_rows, online_features

        spec, settings = self.spec, self.settings
        return {"baseline": self.raw,
                "direct": lambda k: online_features(spec, k, settings),
                "via Feast": lambda k: online_features(spec, k, settings, via_feast=True),
                "rows": lambda k: online_feature_rows(spec, k, settings)}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def race(store: Store, batch: int, calls: int,
         rounds: int) -> dict[str, list[tuple[float, ...]]]:
    """Per variant, (wall p50, wall p99, CPU p99) in ms of each round."""
    fns = store.variants()
    for fn in fns.values():  # warm
        for _ in range(20):
            fn(store.keys[:batch])
    out: dict[str, list[tuple[float, ...]]] = {v: [] for v in VARIANTS}
    rng = random.Random(batch)
    for r in range(rounds):
        wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(calls):
            keys = rng.sample(store.keys, batch)
            for v in VARIANTS[:: 1 if (i + r) % 2 == 0 else -1]:
                start, start_cpu = time.perf_counter(), time.thread_time()
                fns[v](keys)
                cpu[v].append(time.thread_time() - start_cpu)
                wall[v].append(time.perf_counter() - start)
        for v in VARIANTS:
            out[v].append((pct(wall[v], 0.5) * 1e3, pct(wall[v], 0.99) * 1e3,
                           pct(cpu[v], 0.99) * 1e3))
        log(f"  {batch} key(s) round {r + 1}: " + ", ".join(
            f"{v} p50 {out[v][-1][0]:.3f} p99 {out[v][-1][1]:.3f} (CPU {out[v][-1][2]:.3f}) ms"
            for v in VARIANTS))
    return out


def render(label: str, store: Store, results: dict[int, dict[str, list[tuple[float, ...]]]]
           ) -> tuple[list[str], bool]:
    lines = [f"**{label}: {len(store.keys):,} entities** (first call in the process, "
             f"FeatureStore + registry + imports: {store.first_call:.2f} s)", "",
             "| keys | variant | p50 ms | p99 ms | p99 rounds (ms) | p99 / baseline | "
             "CPU p99 ms | CPU p99 / baseline | targets (p99 <= 5x, <= 10 / 50 ms) |",
             "|---:|---|---:|---:|---|---:|---:|---:|---|"]
    ok = True
    for batch, res in results.items():
        med = {v: [statistics.median(x[i] for x in res[v]) for i in range(3)] for v in VARIANTS}
        base, base_cpu = med["baseline"][1], med["baseline"][2]
        for v in VARIANTS:
            p50, p99, cpu = med[v]
            verdict = ""
            if v != "baseline":
                met = p99 / base <= RATIO_TARGET and p99 <= ABS_TARGET_MS[batch]
                verdict = f"{'met' if met else 'NOT met'} ({p99 / base:.1f}x, {p99:.2f} ms)"
                ok &= met or v != "direct"
            lines.append(f"| {batch} | {v} | {p50:.3f} | {p99:.3f} | "
                         f"{' '.join(f'{x[1]:.2f}' for x in res[v])} | {p99 / base:.1f}x | "
                         f"{cpu:.3f} | {cpu / base_cpu:.1f}x | {verdict} |")
    return lines + [""], ok


def profile(store: Store, calls: int = 200) -> str:
    import cProfile
    import pstats

    from mlcore.feast.online import online_features

    prof = cProfile.Profile()
    prof.enable()
    for i in range(calls):
        online_features(store.spec, store.keys[i:i + 100], store.settings, via_feast=True)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
    return text.getvalue()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "a target is missed")
    p.add_argument("--entities", type=int, default=1_000_000, help="synthetic store size")
    p.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    p.add_argument("--calls", type=int, default=2000, help="lookups per round (1 key)")
    p.add_argument("--profile", action="store_true", help="cProfile of the via-Feast read")
    p.add_argument("--quick", action="store_true", help="smoke run: small stores, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.entities, args.rounds, args.calls = 5_000, 1, 200
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = census_spec()
    head = ReportHead("Online read (`bench_online_read.py`): issue 7", "bench_online_read.py")
    out, ok, profiles = [], True, []
    with temp_work("bench-online-read-", args.workdir) as work:
        for label, n, synthetic in [("real 2018 batch", 2_000 if args.quick else 10**9, False),
                                    ("synthetic", args.entities, True)]:
            key = label.split()[0]
            log(f"setup {label} in {work} ...")
            with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress to stdout
                store = Store(spec, work, key, batch_file(work, key, n, synthetic))
            results = {b: race(store, b, args.calls // (5 if b > 1 else 1), args.rounds)
                       for b in (1, 100)}
            lines, met = render(label, store, results)
            out += lines
            ok &= met
            if args.profile:
                profiles.append(f"{label}:\n{profile(store)}")
            store.conn.close()
    print("\n".join([*head.lines(
        f"{args.rounds} round(s) of {args.calls} (1 key) / {args.calls // 5} (100 keys) "
        "interleaved calls, medians over rounds.", f"Machine: {machine()}."), *out]))
    if args.quick:
        print("Quick mode (smoke run): the ratios mean little.")
    for text in profiles:
        print(f"\ncProfile, 200 via-Feast lookups of 100 keys, {text}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
