"""The demo: the whole model loop through Airflow, batch after batch of a problem's data.

First batch: ingest -> features -> first model. Each later batch: ingest -> features -> score with
the champion -> drift -> labels -> retrain policy -> contender vs champion -> promote or keep.

``make demo`` runs the census family over its four yearly batches, then the multiclass and
regression families briefly (their first ``BRIEF_BATCHES`` batches); ``make demo
PROBLEM=<name>`` runs one family over all of its batches (``scripts/demo.py <name>``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

from batchloop_airflow.runner import run_dag

ROOT = Path(__file__).resolve().parents[1]
# problem -> its folder under data/ (one file per batch; the batch ID is the name's last part)
DATASETS = {"census_employment": "census_ma_employment",
            "credit_card_segment": "credit_card_segment", "used_car_price": "used_car_price"}
BRIEF_BATCHES = 3


def console_with_logs_to(path: Path) -> TextIO:
    """Send this process's stdout/stderr (Airflow's task logs) to ``path``; return the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(1), "w", buffering=1)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    return console


def run_batch(problem: str, batch: str, source: Path, first: bool, out: TextIO) -> None:
    """One batch through the loop. After the first, retraining happens only when the retrain
    policy filed a request (schedule, drift, performance drop, new data)."""
    from mlcore.config import get_settings
    from mlcore.policy import pending_requests

    def run(stage: str, conf: dict) -> None:
        start = time.perf_counter()
        result = run_dag(f"{problem}__{stage}", conf)
        print(f"  {batch} {stage:<22} {result['state']:<8} {time.perf_counter() - start:6.1f} s"
              f"  run {result['run_id']}", file=out)

    run("ingest_batch", {"batch_id": batch, "source": str(source)})
    run("materialize_features", {"batch_id": batch})
    if first:
        run("retrain_model", {"until_batch": batch, "reason": "demo: the first model"})
        return
    run("score_batch", {"batch_id": batch})
    run("monitor_model", {"batch_id": batch})
    # the batch's outcomes (the same file carries them) arrive after scoring
    run("ingest_labels", {"batch_id": batch, "source": str(source)})
    for request in pending_requests(problem, get_settings().db_url):
        print(f"       retrain request #{request['id']} ({', '.join(request['triggers'])}): "
              f"{request['reason'][:160]}", file=out)
        run("retrain_model", {"until_batch": batch,
                              "reason": f"request #{request['id']}: {request['reason']}"[:500]})


def batch_files(problem: str) -> list[tuple[str, Path]]:
    """(batch ID, file) of each batch of the problem's demo data, oldest first."""
    files = sorted((ROOT / "data" / DATASETS[problem]).glob("*.parquet"))
    return [(f.stem.rsplit("_", 1)[-1], f) for f in files]


def run_problem(problem: str, limit: int | None, out: TextIO) -> float:
    """The loop over the problem's batches (the first ``limit``); the Airflow seconds spent."""
    started = time.perf_counter()
    print(f"\n== {problem}", file=out)
    for i, (batch, path) in enumerate(batch_files(problem)[:limit]):
        run_batch(problem, batch, path, i == 0, out)
    return time.perf_counter() - started


def report(problem: str, brief: bool, out: TextIO) -> None:
    """The summary (the whole one, or the decisions only), the monitoring page, and a check
    that the champion can be rebuilt from its record."""
    from mlcore.config import get_settings
    from mlcore.model.registry import alias_holder
    from mlcore.problems import get_problem
    from mlcore.reporting import format_summary, summary
    from mlcore.reports.monitoring_page import write_monitoring_page
    from mlcore.training import reproduce_version

    settings = get_settings()
    text = format_summary(summary(problem, settings))
    if brief:  # the decisions and the champion are what the other families show
        text = "\n".join(line for line in text.splitlines()
                         if line.startswith(("== ", "Champion", "Decisions", "  holdout")))
    print(f"\n{text}", file=out)
    page = write_monitoring_page(problem, settings)
    print(f"Monitoring page: {page.path}", file=out)
    champion = alias_holder(problem, settings.db_url)
    if champion is not None:  # the champion can be rebuilt from its record, bit for bit
        check = reproduce_version(get_problem(problem, settings.problems_dir), champion, settings)
        print(f"mlcore reproduce {champion}: {'VERIFIED' if check.verified else 'DIFFERS'} "
              f"(training set rebuilt from its batches, refitted, {check.rows} holdout "
              f"predictions identical: {check.predictions_identical}) in {check.seconds:.1f} s",
              file=out)


def main(problem: str = "") -> int:
    log = Path(os.environ.get("AIRFLOW_HOME", ".airflow")) / "demo.log"
    out = console_with_logs_to(log)
    print(f"Running the loop through Airflow (dag.test); task logs: {log}", file=out)
    plan = ([(problem, None, False)] if problem else
            [("census_employment", None, False), ("credit_card_segment", BRIEF_BATCHES, True),
             ("used_car_price", BRIEF_BATCHES, True)])
    if problem and problem not in DATASETS:
        print(f"unknown demo problem {problem!r} (demo data for: {', '.join(DATASETS)})",
              file=out)
        return 2
    airflow_seconds = 0.0
    for name, limit, brief in plan:
        try:
            airflow_seconds += run_problem(name, limit, out)
        except Exception as exc:
            print(f"\nDEMO FAILED: {exc}\nSee the task logs in {log}", file=out)
            return 1
        report(name, brief, out)
    print(f"\nDemo wall time (Airflow runs): {airflow_seconds:.0f} s", file=out)
    print("See the runs in the Airflow UI: make up, then http://127.0.0.1:8080", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
