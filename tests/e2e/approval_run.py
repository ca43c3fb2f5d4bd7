"""Run ``<problem>__retrain_model`` with its approval gate under ``dag.test()`` and answer the
approval through Airflow's REST API (in-process app), like a person in the UI would.

Usage: ``python approval_run.py DAG_ID CHOICE [CHOICE ...]`` — one run per choice
("Approve" / "Reject"). Prints one JSON line per run: task states, the approval's subject and
body as the reviewer saw them, and the HTTP status of the answer. A separate process, because
the DAG is parsed from a problems folder whose spec sets ``promotion.require_approval``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"


def answer(dag_id: str, choice: str, seen: dict) -> None:
    """Wait for the approval task to ask, read what it shows, answer ``choice``."""
    from airflow.api_fastapi.app import create_app
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    client = TestClient(create_app(apps="core"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with create_session() as s:
            ti = s.scalar(select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT))
            if ti is None:
                continue
            url = (f"/api/v2/dags/{dag_id}/dagRuns/{ti.run_id}/taskInstances/{ti.task_id}/"
                   f"{ti.map_index}/hitlDetails")
        details = client.get(url).json()
        seen.update(subject=details.get("subject"), body=details.get("body"))
        seen["status"] = client.patch(url, json={"chosen_options": [choice],
                                                 "params_input": {}}).status_code
        return


def main(dag_id: str, choices: list[str]) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[dag_id]
    for choice in choices:
        seen: dict = {}
        responder = threading.Thread(target=answer, args=(dag_id, choice, seen), daemon=True)
        responder.start()
        run = dag.test(run_conf=dag.params.dump())
        responder.join(timeout=10)
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        print(json.dumps({"choice": choice, "run": str(run.state), "tasks": states, **seen}),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
