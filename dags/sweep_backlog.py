"""
### Sweep the backlog

Every `BATCHLOOP_SWEEP_MINUTES` (default 10): finds published batches that are ready for a stage
(materialize, score, monitor) but never had it, because an asset event was lost (a consumer paused
when it came, events coalesced). Alerts on-call once per batch stalled past the spec's deadline
for that stage (`batch_stalled`), and nudges each stage with missing batches with one asset event,
so it catches up even when no new batch arrives. See `mlcore/backlog.py`.

Online ingestion (`mlcore stream serve`, outside Airflow): alerts once per condition when the
stream's lag or dead letters pass the spec's `stream:` thresholds, a sealed segment is rejected,
or Redis does not answer (`stream_unhealthy`); only for a problem that is streamed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from batchloop_airflow import dag_kwargs, problem_specs, stage_asset
from batchloop_airflow.sweep import UPSTREAM

STAGE = Path(__file__).stem
EVERY = timedelta(minutes=float(os.environ.get("BATCHLOOP_SWEEP_MINUTES", "10")))


def build(problem: str) -> None:
    @dag(**dag_kwargs(problem, STAGE, __doc__), schedule=EVERY)
    def sweep_backlog_dag() -> None:
        @task
        def alert_stalled() -> list[dict]:
            from batchloop_airflow.sweep import alert_stalled as run

            return run(problem, get_current_context())

        @task
        def alert_stream() -> list[dict]:
            from batchloop_airflow.sweep import alert_stream as run

            return run(problem, get_current_context())

        alert_stream()
        stalled = alert_stalled()
        for stage, output in UPSTREAM.items():
            asset = stage_asset(problem, output)

            @task(task_id=f"nudge_{stage}", outlets=[asset])
            def nudge(stage: str = stage, asset=asset) -> dict:
                from batchloop_airflow.sweep import nudge as run

                return run(problem, stage, asset, get_current_context())

            stalled >> nudge()

    sweep_backlog_dag()


for _spec in problem_specs():
    build(_spec.name)
