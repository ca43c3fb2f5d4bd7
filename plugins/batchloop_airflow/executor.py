"""The LocalExecutor with Batchloop's task libraries imported once, before it forks its workers.

Airflow's LocalExecutor forks its worker processes from the scheduler when it starts, and each
worker forks one process per task; a task's imports are paid again in every task process.
Batchloop's tasks import mlcore, pandas/pyarrow, scikit-learn, Feast, matplotlib and Evidently
inside their callables (DAG files stay light), 2-8 s per task on a 2-core machine: most of a
retrain run's orchestration overhead (``benchmarks/bench_orchestration.py``). Imported here, in
the scheduler, before the workers are forked, they are inherited by every task process (shared
copy-on-write pages) and the ``import`` in a task finds them in ``sys.modules``.

Only modules are imported: nothing is called, no settings are read, no connection is opened, so
a task behaves as before (mlcore reads its settings at call time). A module that fails to import
is logged and left to the task (which then fails as it would have). Select it with
``AIRFLOW__CORE__EXECUTOR=batchloop_airflow.executor.PreloadingLocalExecutor`` (the Makefile
does); ``BATCHLOOP_PRELOAD=off`` turns the preloading off.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)

# What the Batchloop DAGs' tasks import (at call time), heaviest first.
PRELOAD = (
    "feast",
    "feast.infra.offline_stores.dask",
    "feast.infra.online_stores.sqlite",
    "feast.repo_operations",
    "evidently",
    "evidently.legacy.calculations.stattests",
    "evidently.core.metric_types",
    "evidently.tests",
    "matplotlib.figure",
    "sklearn.metrics",
    "joblib",
    "croniter",
    "mlcore.config",
    "mlcore.problems",
    "mlcore.policy",
    "mlcore.model.registry",
    "mlcore.ingestion",
    "mlcore.features",
    "mlcore.datasets",
    "mlcore.training",
    "mlcore.evaluation",
    "mlcore.promotion",
    "mlcore.scoring",
    "mlcore.monitoring",
    "mlcore.reports.monitoring_page",
    "mlcore.reports.runcard",
    "mlcore.labels",
    "batchloop_airflow",
    "batchloop_airflow.connections",
)


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import ``modules`` (seconds each); failures are logged and skipped."""
    took: dict[str, float] = {}
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # the task importing it reports the real error
            log.warning("batchloop preload: %s not imported (%s: %s)", name,
                        type(exc).__name__, exc)
            continue
        took[name] = time.perf_counter() - t0
    return took


class PreloadingLocalExecutor(LocalExecutor):
    """``LocalExecutor`` that imports :data:`PRELOAD` before forking its workers."""

    def start(self) -> None:
        if os.environ.get("BATCHLOOP_PRELOAD", "on").strip().lower() != "off":
            t0 = time.perf_counter()
            took = preload()
            log.info("batchloop preload: %d modules in %.1f s before forking the workers",
                     len(took), time.perf_counter() - t0)
        super().start()
