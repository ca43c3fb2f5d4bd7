"""The optional human gate: with ``promotion.require_approval`` the retrain DAG waits at an
Airflow approval step showing the decision; a rejection keeps the champion, an approval promotes.

Real ``dag.test()`` runs in a child process (the DAG is parsed from a problems folder whose spec
sets the flag), answered through Airflow's REST API as a reviewer would from the UI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.registry import alias_holder, alias_log

ROOT = Path(__file__).resolve().parents[2]


def test_retrain_waits_for_approval_and_obeys_the_answer(airflow_db, mlcore_env, slices, spec,
                                                         tmp_path):
    settings = mlcore_env
    problems = tmp_path / "problems"
    problems.mkdir()
    text = (ROOT / "problems" / f"{spec.name}.yaml").read_text()
    assert "require_approval: false" in text
    (problems / f"{spec.name}.yaml").write_text(
        text.replace("require_approval: false", "require_approval: true"))
    ingest_batch(spec, str(slices[2015]), "2015", settings)
    materialize_batch(spec, "2015", settings)

    env = {**os.environ, "MLCORE_PROBLEMS_DIR": str(problems), "MLCORE_HOME": str(settings.home),
           "PYTHONPATH": str(ROOT / "plugins")}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "approval_run.py"),
         f"{spec.name}__retrain_model", "Reject", "Approve"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rejected, approved = (json.loads(line) for line in out.stdout.splitlines()
                          if line.startswith("{"))

    # Both runs would promote (first model over the floor); the reviewer saw why.
    for run in (rejected, approved):
        assert run["status"] == 200 and run["run"] == "success"
        assert run["tasks"]["should_promote"] == "success"
        assert run["tasks"]["approve_promotion"] == "success"
        assert run["subject"] == f"Promote the {spec.name} contender?"
        assert "**promote**" in run["body"] and "run_card.html" in run["body"]
        assert "judged by the absolute floor alone" in run["body"]
    assert rejected["tasks"]["promote_contender"] == "skipped"
    assert approved["tasks"]["promote_contender"] == "success"
    # The rejection left no champion; the approval made the second version champion.
    assert alias_holder(spec.name, settings.db_url) == 2
    assert [(h["from"], h["to"]) for h in alias_log(spec.name, settings.db_url)] == [(None, 2)]
