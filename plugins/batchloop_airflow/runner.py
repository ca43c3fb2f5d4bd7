"""Run Batchloop DAGs in-process with ``dag.test()`` (real task runner, runs kept in Airflow's DB).

Used by ``make demo`` and the end-to-end tests; the scheduler (``make up``) runs the same DAGs.
"""

from __future__ import annotations

from functools import cache
from typing import Any


class DagRunFailed(RuntimeError):
    """A DAG run did not succeed; the message lists the failed tasks."""


@cache
def dagbag() -> Any:
    """The project's DagBag (parsed once per process)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()  # [core] dags_folder
    if bag.import_errors:
        raise DagRunFailed(f"DAG import errors: {bag.import_errors}")
    return bag


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one DAG to completion; return run id, state and each task's state and return value.

    Raises:
        DagRunFailed: the run ended in any state but success.
    """
    dag = dagbag().dags[dag_id]
    # Always pass every Param: in-process runs write the run's values into the task's params,
    # so a later run that omits a key would see the previous run's value (seen: a manual
    # materialize run with {} got the previous run's batch_id). The DAG-level defaults stay clean.
    run = dag.test(run_conf={**dag.params.dump(), **(conf or {})})
    tasks: dict[str, Any] = {}
    for ti in run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        tasks[key] = {"state": str(ti.state), "value": ti.xcom_pull(task_ids=ti.task_id,
                                                                  map_indexes=ti.map_index)}
    if str(run.state) != "success":
        failed = {k: v["state"] for k, v in tasks.items() if v["state"] not in
                  ("success", "skipped")}
        raise DagRunFailed(f"{dag_id} run {run.run_id} ended {run.state}; tasks: {failed}")
    return {"dag_id": dag_id, "run_id": run.run_id, "state": str(run.state), "tasks": tasks}
