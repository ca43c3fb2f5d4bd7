"""Verify-on-read cost: ``ingest_batch`` of a synthetic census file against the cold check of its
curated files (``mlcore.data.integrity.curated_files``, memo cleared) and the fingerprint taken at
publish, in one process, per round. Not a test; results go to BENCHMARKS.md.

    python benchmarks/bench_integrity.py [--rows 1000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import fresh_settings, load_real, write_input  # noqa: E402


def main() -> None:
    import mlcore.data.integrity as integrity
    from mlcore.ingestion import ingest_batch
    from mlcore.problems import get_problem
    from mlcore.store.catalog import get_batch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        work = Path(tmp)
        src = work / "in.parquet"
        write_input(src, args.rows, load_real())
        for r in range(args.rounds):
            settings = fresh_settings(work / f"home{r}")
            spec = get_problem("census_employment", settings.problems_dir)
            t = time.perf_counter()
            ingest_batch(spec, str(src), "b1", settings)
            ingest = time.perf_counter() - t
            batch = get_batch(spec.name, "b1", settings.db_url)
            integrity._verified.clear()
            t = time.perf_counter()
            integrity.curated_files(batch)
            verify = time.perf_counter() - t
            size = sum(f["bytes"] for f in (batch.files or {}).values()) / 1e6
            print(f"round {r}: ingest {args.rows:,} rows {ingest:.2f} s; curated {size:.1f} MB; "
                  f"cold verify {verify * 1000:.0f} ms = {verify / ingest:.1%} of the ingest")


if __name__ == "__main__":
    main()
