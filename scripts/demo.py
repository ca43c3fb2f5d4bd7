"""The demo: the whole model loop through Airflow over the four yearly ACS batches.

2015: ingest -> features -> first model. Each later year: ingest -> features -> score with the
champion -> drift -> retrain -> contender vs champion -> promote or keep. Run via ``make demo``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from batchloop_airflow.runner import run_dag

ROOT = Path(__file__).resolve().parents[1]


def run_year(problem: str, year: int, source: Path, first: bool) -> None:
    batch = str(year)
    steps = [("ingest_batch", {"batch_id": batch, "source": str(source)}),
             ("materialize_features", {"batch_id": batch})]
    if not first:
        steps += [("score_batch", {"batch_id": batch}), ("monitor_model", {"batch_id": batch})]
    steps += [("retrain_model", {"until_batch": batch,
                                 "reason": f"demo: {year} batch published"})]
    for stage, conf in steps:
        start = time.perf_counter()
        result = run_dag(f"{problem}__{stage}", conf)
        print(f"  {year} {stage:<22} {result['state']:<8} {time.perf_counter() - start:6.1f} s"
              f"  run {result['run_id']}", flush=True)


def main(problem: str = "census_employment") -> int:
    from mlcore.config import get_settings
    from mlcore.reporting import format_summary, summary

    data = ROOT / "data" / "census_ma_employment"
    files = sorted(data.glob("employment_*.parquet"))
    started = time.perf_counter()
    for i, path in enumerate(files):
        run_year(problem, int(path.stem.split("_")[-1]), path, first=i == 0)
    print()
    print(format_summary(summary(problem, get_settings())))
    print(f"\nDemo wall time (Airflow runs): {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
