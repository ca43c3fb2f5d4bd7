"""Where ``ingest_batch`` spends its time: cProfile of one run on a synthetic file.

    python benchmarks/profile_ingest.py [--rows 1000000] [--bad-share 0] [--top 35]

Same inputs as bench_ingest.py (real rows resampled, unique ids, temp dir outside the repo).
Prints the top functions by cumulative and by own time, plus a per-stage summary.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import PROBLEM, fresh_settings, load_real, write_input  # noqa: E402

# Stages of ingest_batch, as (label, function name as cProfile shows it).
STAGES = [
    ("sha256 of the source file", "sha256_file"),
    ("duplicate pass: read key+year columns", "read_columns"),
    ("duplicate pass: duplicate_mask", "duplicate_mask"),
    ("per chunk: iter_batches + to_pandas", "chunks"),
    ("per chunk: row_violations (validation rules)", "row_violations"),
    ("per chunk: curate", "curate"),
    ("per chunk: Table.from_pandas", "dataframe_to_arrays"),
    ("per chunk: ParquetWriter.write_table", "write_table"),
    ("entity_keys (all calls)", "entity_keys"),
    ("event_time (all calls)", "event_time"),
    ("pd.to_numeric (all calls: rules, curate, keys, years)", "to_numeric"),
    ("copy raw file into the raw partition", "copy2"),
    ("metadata store: _finish (quarantine rows)", "_finish"),
]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--bad-share", type=float, default=0.0)
    p.add_argument("--top", type=int, default=35)
    args = p.parse_args()
    from mlcore.ingestion import ingest_batch
    from mlcore.problems import get_problem

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        src = write_input(work / "in.parquet", args.rows, load_real(), seed=1,
                          bad_share=args.bad_share)
        settings = fresh_settings(work / "home")
        spec = get_problem(PROBLEM, settings.problems_dir)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        ingest_batch(spec, str(src), "bench-profile", settings)
        prof.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    print(f"ingest_batch of {args.rows:,} rows under cProfile: {wall:.2f}s\n")
    print(stage_table(stats, wall))
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(args.top)
        print(f"\n### top {args.top} by {key}\n")
        print(out.getvalue().split("\n\n", 2)[-1])
    return 0


def stage_table(stats: pstats.Stats, wall: float) -> str:
    """Cumulative seconds of each stage function (max over same-named entries)."""
    cum: dict[str, float] = {}
    for (_file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        cum[name] = max(cum.get(name, 0.0), ct)
    rows = ["| stage | cumulative s | share of wall |", "|---|---:|---:|"]
    for label, name in STAGES:
        s = cum.get(name, 0.0)
        rows.append(f"| {label} (`{name}`) | {s:.2f} | {s / wall:.0%} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
