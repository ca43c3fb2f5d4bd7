"""Ingestion benchmark: streamed ``ingest_batch`` against a plain pyarrow read + write.

Not a test (STYLE.md: no timed assertions inside the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_ingest.py [--rows 1000000] [--big-rows 10000000] [--rounds 3]
                                      [--skip-big] [--bad-share 0.01] [--check]

(a) Ratio at ``--rows``: in this one process, interleaved and repeated ``--rounds`` times,
    baseline = ``pq.read_table(path)`` + ``pq.write_table(table, out)``;
    candidate = ``ingest_batch`` of the same file into a fresh MLCORE home (new batch id).
    Medians are reported; target candidate/baseline <= 3.
(b) Peak memory at ``--big-rows``: ``ingest_batch`` in a child process; its peak RSS is
    measured from outside (``/usr/bin/time -v`` when present, else ``RUSAGE_CHILDREN``).
    Target <= 2 GiB. Wall time and rows/s of that child are reported too.

Inputs are synthetic but realistic: the real 2015-2018 census rows resampled with
replacement, every row given a unique ``id``, ``year`` kept, so every row passes the spec.
``--bad-share`` adds an extra ratio row on a variant where that share of rows breaks a rule
(quarantined, batch still published). Everything is written to a temp dir, never the repo.
Exit 0; with ``--check``, exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import ROOT, arg_parser, load, machine, temp_work

DATA = ROOT / "data" / "census_ma_employment"
PROBLEM = "census_employment"
ROW_GROUP = 131_072
RATIO_TARGET = 3.0
RSS_TARGET_MIB = 2048.0


# ---------------------------------------------------------------------------- input files

def load_real() -> pa.Table:
    """The real 2015-2018 rows as one table with one chunk and shared dictionaries."""
    tables = [pq.read_table(p) for p in sorted(DATA.glob("employment_*.parquet"))]
    if not tables:
        sys.exit(f"no input parquet files under {DATA}")
    return pa.concat_tables(tables).unify_dictionaries().combine_chunks()


def _corrupt(chunk: pa.Table, rng: np.random.Generator, share: float) -> pa.Table:
    """Break ``share`` of the rows, one rule each: AGEP out of range, AGEP null, bad target."""
    n = len(chunk)
    hit = np.flatnonzero(rng.random(n) < share)
    kind = rng.integers(0, 3, size=len(hit))
    agep = chunk["AGEP"].to_numpy().copy()
    agep[hit[kind == 0]] = 150.0
    agep_null = np.zeros(n, dtype=bool)
    agep_null[hit[kind == 1]] = True
    employed = chunk["employed"].to_numpy().copy()
    employed[hit[kind == 2]] = 2
    chunk = chunk.set_column(chunk.schema.get_field_index("AGEP"), "AGEP",
                             pa.array(agep, mask=agep_null, type=pa.float64()))
    return chunk.set_column(chunk.schema.get_field_index("employed"), "employed",
                            pa.array(employed, type=pa.int64()))


def write_input(path: Path, rows: int, base: pa.Table, seed: int = 0,
                bad_share: float = 0.0) -> Path:
    """Write ``rows`` resampled rows to ``path`` in row groups of ``ROW_GROUP``; memory ~ one."""
    rng = np.random.default_rng(seed)
    id_pos = base.schema.get_field_index("id")
    with pq.ParquetWriter(path, base.schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            chunk = base.take(pa.array(rng.integers(0, len(base), size=n)))
            ids = pa.array(np.arange(start, start + n, dtype=np.int64))
            chunk = chunk.set_column(id_pos, "id", ids)
            if bad_share:
                chunk = _corrupt(chunk, rng, bad_share)
            writer.write_table(chunk, row_group_size=ROW_GROUP)
    return path


# ---------------------------------------------------------------------------- measurements

def baseline(src: Path, out: Path) -> float:
    """Seconds for a plain whole-file pyarrow read + write of ``src``."""
    t0 = time.perf_counter()
    table = pq.read_table(src)
    pq.write_table(table, out)
    elapsed = time.perf_counter() - t0
    del table
    out.unlink()
    return elapsed


def fresh_settings(home: Path) -> Any:
    """Settings for an empty MLCORE home with the metadata store migrated."""
    from mlcore.config import Settings
    from mlcore.store.session import upgrade

    home.mkdir(parents=True)
    settings = Settings(home=home, problems_dir=ROOT / "problems",
                        feature_repo=ROOT / "feature_repo")
    upgrade(settings.db_url)
    return settings


def candidate(src: Path, home: Path, batch_id: str) -> tuple[float, Any]:
    """Seconds for ``ingest_batch`` of ``src`` into a fresh home (setup not timed)."""
    from mlcore.ingestion import ingest_batch
    from mlcore.problems import get_problem

    settings = fresh_settings(home)
    spec = get_problem(PROBLEM, settings.problems_dir)
    t0 = time.perf_counter()
    manifest = ingest_batch(spec, str(src), batch_id, settings)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(home, ignore_errors=True)
    return elapsed, manifest


@dataclass
class Ratio:
    """Interleaved rounds of baseline and candidate on one file."""

    label: str
    rows: int
    base_s: list[float] = field(default_factory=list)
    cand_s: list[float] = field(default_factory=list)
    quarantined: int = 0

    @property
    def ratio(self) -> float:
        return statistics.median(self.cand_s) / statistics.median(self.base_s)


def measure_ratio(label: str, src: Path, work: Path, rounds: int) -> Ratio:
    """Alternate baseline/candidate (order flipped every round so neither always goes first)."""
    res = Ratio(label, pq.ParquetFile(src).metadata.num_rows)
    for i in range(rounds):
        for step in ("base", "cand") if i % 2 == 0 else ("cand", "base"):
            if step == "base":
                res.base_s.append(baseline(src, work / "baseline-out.parquet"))
            else:
                elapsed, manifest = candidate(src, work / f"home-{label}-{i}",
                                              f"bench-{label}-{i}")
                res.cand_s.append(elapsed)
                res.quarantined = manifest.quarantine_count
        print(f"  {label} round {i + 1}: baseline {res.base_s[-1]:.2f}s, "
              f"ingest_batch {res.cand_s[-1]:.2f}s", file=sys.stderr)
    return res


# ---------------------------------------------------------------------------- big child

def child_main(src: Path, home: Path, batch_id: str, sample: bool) -> None:
    """Run in the child: migrate, ingest once, print one JSON line of what happened."""
    settings = fresh_settings(home)
    from mlcore.ingestion import ingest_batch
    from mlcore.problems import get_problem

    spec = get_problem(PROBLEM, settings.problems_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = _RssSampler() if sample else None
    t0 = time.perf_counter()
    manifest = ingest_batch(spec, str(src), batch_id, settings)
    wall = time.perf_counter() - t0
    report: dict[str, Any] = {
        "wall_s": wall, "rows": manifest.row_count, "published": manifest.published_rows,
        "quarantined": manifest.quarantine_count,
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_before_ingest_kib": before,
    }
    if sampler is not None:
        report["timeline"] = sampler.stop()
    print("BENCH-CHILD " + json.dumps(report), flush=True)


class _RssSampler:
    """RSS every 20 ms from /proc/self/statm, tagged with the ingest step running at the time.

    Steps are named by wrapping a few ``mlcore.ingestion`` and ``mlcore.data.curation`` names
    in this (child) process only; a sample's tag is the stack of wrapped calls, e.g.
    ``stream > curate > entity_keys``.
    """

    WRAPPED = {"ingestion": ("sha256_file", "stream", "_finish"),
               "curation": ("entity_keys", "event_time", "duplicate_mask", "row_violations",
                            "curate")}

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._t0, self._stop = time.perf_counter(), threading.Event()
        self.stack: list[str] = []
        self.samples: list[tuple[float, float, str]] = []
        self._instrument()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _instrument(self) -> None:
        import mlcore.ingestion as ing
        from mlcore.data import curation, io

        for mod in (ing, curation):
            for name in self.WRAPPED[mod.__name__.rsplit(".", 1)[-1]]:
                setattr(mod, name, self._wrap(name, getattr(mod, name)))
        io.RawFile.read_columns = self._wrap("read_columns", io.RawFile.read_columns)
        ing.shutil.copy2 = self._wrap("copy2", ing.shutil.copy2)  # type: ignore[assignment]

    def _wrap(self, name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.stack.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
        return wrapped

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * self._page / 2**20
            tag = " > ".join(self.stack) or "(outside the wrapped steps)"
            self.samples.append((round(time.perf_counter() - self._t0, 2), round(rss), tag))
            self._stop.wait(0.02)

    def stop(self) -> dict[str, Any]:
        """Per step: seconds sampled in it and its highest RSS; plus a coarse timeline."""
        self._stop.set()
        self._thread.join()
        steps: dict[str, dict[str, float]] = {}
        for i, (t, rss, tag) in enumerate(self.samples):
            dt = (self.samples[i + 1][0] if i + 1 < len(self.samples) else t) - t
            st = steps.setdefault(tag, {"seconds": 0.0, "max_rss_mib": 0.0})
            st["seconds"] = round(st["seconds"] + dt, 2)
            st["max_rss_mib"] = max(st["max_rss_mib"], rss)
        every = max(1, len(self.samples) // 60)
        return {"steps": steps, "timeline": self.samples[::every]}


@dataclass
class Big:
    rows: int
    wall_s: float
    peak_rss_mib: float
    how: str
    child: dict[str, Any]


def measure_big(src: Path, work: Path, sample: bool) -> Big:
    """Ingest ``src`` in a child process; peak RSS measured from outside the child."""
    cmd = [sys.executable, __file__, "--child", str(src), str(work / "home-big"), "bench-big"]
    if sample:
        cmd.append("--sample-rss")
    timer = Path("/usr/bin/time")
    use_time = timer.exists() and os.access(timer, os.X_OK)
    if use_time:
        cmd = [str(timer), "-v", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"big ingest child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH-CHILD "))
    child = json.loads(line.removeprefix("BENCH-CHILD "))
    if use_time:
        kib = next(int(x.split(":")[1]) for x in proc.stderr.splitlines()
                   if "Maximum resident set size" in x)
        how = "/usr/bin/time -v"
    else:
        kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        how = "getrusage(RUSAGE_CHILDREN)"
    shutil.rmtree(work / "home-big", ignore_errors=True)
    return Big(child["rows"], child["wall_s"], kib / 1024, how, child)


# ---------------------------------------------------------------------------- report

def render(ratios: list[Ratio], big: Big | None, meta: dict[str, str]) -> tuple[str, bool]:
    """The Markdown results table, and whether every target was met."""
    ok = True
    lines = [f"Machine: {meta['machine']}; load before: {meta['load']}", "",
             "| measurement | rows | baseline s (median) | ingest_batch s (median) | ratio | "
             "rows/s (ingest) | peak RSS MiB | target | met |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in ratios:
        met = r.ratio <= RATIO_TARGET
        # The bad-row variant is informational; only the clean file is held to the target.
        if r.label == "clean":
            ok &= met
        b, c = statistics.median(r.base_s), statistics.median(r.cand_s)
        lines.append(f"| ratio, {r.label} ({r.quarantined} quarantined) | {r.rows:,} | "
                     f"{b:.2f} | {c:.2f} | {r.ratio:.2f}x | {r.rows / c:,.0f} | - | "
                     f"<= {RATIO_TARGET:g}x | {_yes(met, r.label != 'clean')} |")
        lines.append(f"|   rounds ({r.label}) | | {_fmt(r.base_s)} | {_fmt(r.cand_s)} | | | | | |")
    if big is not None:
        met = big.peak_rss_mib <= RSS_TARGET_MIB
        ok &= met
        lines.append(f"| peak memory, child process | {big.rows:,} | - | {big.wall_s:.2f} | - | "
                     f"{big.rows / big.wall_s:,.0f} | {big.peak_rss_mib:,.0f} | "
                     f"<= {RSS_TARGET_MIB:,.0f} MiB | {_yes(met, False)} |")
        rss0 = big.child["maxrss_before_ingest_kib"] / 1024
        lines += ["", f"Peak RSS via {big.how}; the child's RSS after imports and migration, "
                      f"before ingest_batch: {rss0:,.0f} MiB."]
        if "timeline" in big.child:
            lines += ["", "RSS by step of the big child (sampled every 20 ms; nested calls of "
                          "`row_violations` are not split out):", "",
                      "| step (stack of wrapped calls) | seconds | highest RSS MiB |",
                      "|---|---:|---:|"]
            lines += [f"| `{tag}` | {st['seconds']:.1f} | {st['max_rss_mib']:,.0f} |"
                      for tag, st in big.child["timeline"]["steps"].items()]
    return "\n".join(lines), ok


def _yes(met: bool, informational: bool) -> str:
    return ("yes" if met else "NO") + (" (info only)" if informational else "")


def _fmt(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


# ---------------------------------------------------------------------------- main

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "a target is missed")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the ratio file")
    p.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the memory file")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--skip-big", action="store_true", help="skip the peak-memory child run")
    p.add_argument("--bad-share", type=float, default=0.01,
                   help="also time a variant with this share of bad rows (0: skip)")
    p.add_argument("--sample-rss", action="store_true",
                   help="record the big child's RSS timeline (printed as JSON to stderr)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20k / 100k rows, 1 round (the figures mean little)")
    p.add_argument("--child", nargs=3, metavar=("SRC", "HOME", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.big_rows, args.rounds = 20_000, 100_000, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        src, home, batch = args.child
        child_main(Path(src), Path(home), batch, args.sample_rss)
        return 0
    meta = {"machine": machine("pyarrow"), "load": load()}
    with temp_work("bench-ingest-", args.workdir) as work:
        base = load_real()
        print(f"generating inputs in {work} ...", file=sys.stderr)
        clean = write_input(work / "clean.parquet", args.rows, base, seed=1)
        files = [("clean", clean)]
        if args.bad_share > 0:
            files.append(("bad", write_input(work / "bad.parquet", args.rows, base, seed=2,
                                             bad_share=args.bad_share)))
        ratios = [measure_ratio(label, path, work, args.rounds) for label, path in files]
        for _, path in files:
            path.unlink()
        big = None
        if not args.skip_big:
            big_src = write_input(work / "big.parquet", args.big_rows, base, seed=3)
            del base
            print(f"big file: {big_src.stat().st_size / 2**20:,.0f} MiB; ingesting in a child",
                  file=sys.stderr)
            big = measure_big(big_src, work, args.sample_rss)
            if args.sample_rss:
                print("RSS timeline (s, MiB, step): "
                      + json.dumps(big.child["timeline"]["timeline"]), file=sys.stderr)
    table, ok = render(ratios, big, meta)
    print(table)
    print(f"\nLoad after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
