"""The demo: the whole model loop through Airflow over the four yearly ACS batches.

2015: ingest -> features -> first model. Each later year: ingest -> features -> score with the
champion -> drift -> retrain -> contender vs champion -> promote or keep. Run via ``make demo``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

from batchloop_airflow.runner import run_dag

ROOT = Path(__file__).resolve().parents[1]


def console_with_logs_to(path: Path) -> TextIO:
    """Send this process's stdout/stderr (Airflow's task logs) to ``path``; return the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(1), "w", buffering=1)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    return console


def run_year(problem: str, year: int, source: Path, first: bool, out: TextIO) -> None:
    """One yearly batch through the loop. After the first year, retraining happens only when the
    retrain policy filed a request (schedule, drift, performance drop, new data)."""
    from mlcore.config import get_settings
    from mlcore.policy import pending_requests

    batch = str(year)

    def run(stage: str, conf: dict) -> None:
        start = time.perf_counter()
        result = run_dag(f"{problem}__{stage}", conf)
        print(f"  {year} {stage:<22} {result['state']:<8} {time.perf_counter() - start:6.1f} s"
              f"  run {result['run_id']}", file=out)

    run("ingest_batch", {"batch_id": batch, "source": str(source)})
    run("materialize_features", {"batch_id": batch})
    if first:
        run("retrain_model", {"until_batch": batch, "reason": "demo: the first model"})
        return
    run("score_batch", {"batch_id": batch})
    run("monitor_model", {"batch_id": batch})
    # the year's outcomes (the same yearly file carries them) arrive after scoring
    run("ingest_labels", {"batch_id": batch, "source": str(source)})
    for request in pending_requests(problem, get_settings().db_url):
        print(f"       retrain request #{request['id']} ({', '.join(request['triggers'])}): "
              f"{request['reason'][:160]}", file=out)
        run("retrain_model", {"until_batch": batch,
                              "reason": f"request #{request['id']}: {request['reason']}"[:500]})


def main(problem: str = "census_employment") -> int:
    from mlcore.config import get_settings
    from mlcore.monitoring_page import write_monitoring_page
    from mlcore.problems import get_problem
    from mlcore.registry import alias_holder
    from mlcore.reporting import format_summary, summary
    from mlcore.training import reproduce_version

    data = ROOT / "data" / "census_ma_employment"
    files = sorted(data.glob("employment_*.parquet"))
    log = Path(os.environ.get("AIRFLOW_HOME", ".airflow")) / "demo.log"
    out = console_with_logs_to(log)
    print(f"Running the loop through Airflow (dag.test); task logs: {log}", file=out)
    started = time.perf_counter()
    try:
        for i, path in enumerate(files):
            run_year(problem, int(path.stem.split("_")[-1]), path, i == 0, out)
    except Exception as exc:
        print(f"\nDEMO FAILED: {exc}\nSee the task logs in {log}", file=out)
        return 1
    airflow_seconds = time.perf_counter() - started
    settings = get_settings()
    print(f"\n{format_summary(summary(problem, settings))}", file=out)
    page = write_monitoring_page(problem, settings)
    print(f"\nMonitoring page: {page.path}", file=out)
    print(f"\nDemo wall time (Airflow runs): {airflow_seconds:.0f} s", file=out)
    champion = alias_holder(problem, settings.db_url)
    if champion is not None:  # the champion can be rebuilt from its record, bit for bit
        check = reproduce_version(get_problem(problem, settings.problems_dir), champion, settings)
        print(f"mlcore reproduce {champion}: {'VERIFIED' if check.verified else 'DIFFERS'} "
              f"(training set rebuilt from its batches, refitted, {check.rows} holdout "
              f"predictions identical: {check.predictions_identical}) in {check.seconds:.1f} s",
              file=out)
    print("See the runs in the Airflow UI: make up, then http://127.0.0.1:8080", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
