"""On-call drills: put the system in the state an alert describes (real ``dag.test`` runs that
fail for real), then run the commands of that alert's RUNBOOK section **verbatim**, as the
RUNBOOK says to (in a shell with the workers' environment, the variables of "Before you start"
filled in from the alert), and check each one exits 0 and does what the section says.

Lines for the compose stack (``# compose``) and roll-backs (a failed ingest or feature run never
changes the champion) are not run here; ``test_alerts_scheduler.py`` covers the alerts that
need a live scheduler (task killed, deadline missed).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def section_commands(anchor: str) -> list[str]:
    """The command lines of the RUNBOOK section ``<a id="anchor">`` (up to the next anchor),
    continuation lines joined, ``# compose`` and roll-back lines left out."""
    text = (ROOT / "RUNBOOK.md").read_text()
    start = text.index(f'<a id="{anchor}"></a>')
    end = text.find('<a id="', start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)
    lines = [ln.strip() for block in blocks for ln in block.replace("\\\n", " ").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#") and "# compose" not in ln
            and not ln.startswith("mlcore rollback")]


def before_you_start() -> list[str]:
    """The "Commands used throughout" block (the first block after its sentence)."""
    text = (ROOT / "RUNBOOK.md").read_text()
    start = text.index("Commands used throughout")
    block = re.search(r"```bash\n(.*?)```", text[start:], flags=re.S)
    assert block is not None
    return [ln.strip() for ln in block.group(1).splitlines()
            if ln.strip() and not ln.startswith("mlcore rollback")]


def the_alert(home: Path, dag_id: str) -> dict:
    """The one journaled alert of ``dag_id``."""
    alerts = [json.loads(p.read_text()) for p in sorted((home / "alerts").glob("*.json"))]
    [alert] = [a for a in alerts if a["dag_id"] == dag_id]
    return alert


def variables(alert: dict, **more: str) -> dict[str, str]:
    """"Before you start", filled in from the alert (CONF: the -c of its re-run step)."""
    rerun = [s for s in alert["next_steps"] if s.startswith("airflow dags trigger")]
    conf = shlex.split(rerun[0].split("  #")[0])[-1] if rerun else "{}"
    return {"P": alert["problem"], "DAG": alert["dag_id"], "RUN": alert["run_id"],
            "TASK": alert["task_id"] or "", "TRY": str(alert["try_number"] or ""),
            "B": alert["batch_id"] or "", "CONF": conf, "KEY": alert["dedup_key"], **more}


def run_verbatim(lines: list[str], filled: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Each line in ``bash -c`` from the project folder, the variables exported; all must
    exit 0."""
    env = {**os.environ, **filled, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = []
    for line in lines:
        out = subprocess.run(["bash", "-c", line], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, (f"RUNBOOK line `{line}` exited {out.returncode}:\n"
                                     f"{out.stdout[-1500:]}\n{out.stderr[-2500:]}")
        done.append(out)
    return done


def runs_of(dag_id: str) -> list[dict]:
    """Every run of the DAG in Airflow's metadata DB: run id and conf, oldest first."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [{"run_id": r.run_id, "conf": dict(r.conf or {})} for r in
                session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id)]


def lose_a_batch(spec, slices, settings, tmp_path: Path, monkeypatch) -> None:
    """The stalled state: the census spec with a materialize deadline of 0.6 s (a problems
    folder of its own, nudges at once) and a batch ``lost`` published a second ago that no
    stage run picked up (its asset event was lost)."""
    import time

    import yaml

    from mlcore.config import get_settings
    from mlcore.ingestion import ingest_batch

    problems = tmp_path / "problems"
    problems.mkdir()
    data = yaml.safe_load((ROOT / "problems" / f"{spec.name}.yaml").read_text())
    data["alerts"]["deadline_minutes"]["materialize_features"] = 0.01
    (problems / f"{spec.name}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MLCORE_PROBLEMS_DIR", str(problems))
    monkeypatch.setenv("BATCHLOOP_NUDGE_MINUTES", "0")
    get_settings.cache_clear()  # the tasks read the spec from the new problems folder
    ingest_batch(spec, str(slices[2016]), "lost", settings)
    time.sleep(1)


def test_bad_input_drill(airflow_db, mlcore_env, spec, run_or_error, tmp_path):
    dag_id = f"{spec.name}__ingest_batch"
    _, error = run_or_error(dag_id, {"batch_id": "d1", "source": str(tmp_path / "gone.parquet")})
    assert error is not None
    alert = the_alert(mlcore_env.home, dag_id)
    assert alert["runbook"].endswith("#bad-input")
    lines = section_commands("bad-input")
    assert lines and all(ln.startswith("airflow dags trigger") for ln in lines)
    before = len(runs_of(dag_id))
    run_verbatim(lines, variables(alert))
    new = runs_of(dag_id)[before:]
    assert [r["conf"] for r in new] == [{"batch_id": "2018", "source": str(
        ROOT / "data" / "census_ma_employment" / "employment_2018.parquet")}]
    assert Path(new[0]["conf"]["source"]).is_file()  # the make-up path exists as printed


def test_batch_rejected_drill(airflow_db, mlcore_env, spec, run_or_error, slices, tmp_path):
    from mlcore.store.catalog import published_batches

    dag_id = f"{spec.name}__ingest_batch"
    broken = tmp_path / "broken.parquet"
    pd.read_parquet(slices[2016]).drop(columns=[spec.entity.key]).to_parquet(broken)
    _, error = run_or_error(dag_id, {"batch_id": "d2", "source": str(broken)})
    assert error is not None
    alert = the_alert(mlcore_env.home, dag_id)
    assert alert["runbook"].endswith("#batch-rejected") and alert["batch_id"] == "d2"
    filled = variables(alert, SRC=str(slices[2016]), NEW="d2-fixed")

    before = len(runs_of(dag_id))
    out = run_verbatim(before_you_start(), filled)  # the general menu, in this state
    assert "d2" in out[2].stdout and "rejected" in out[2].stdout  # mlcore batches
    run_verbatim(section_commands("batch-rejected"), filled)
    assert [r["conf"] for r in runs_of(dag_id)[before:]] == [
        json.loads(filled["CONF"]),  # "Before you start": the re-run with the failed Params
        {"batch_id": "d2-fixed", "source": str(slices[2016])}]  # the section's re-run
    assert "d2-fixed" in {b.batch_id for b in published_batches(spec.name, mlcore_env.db_url)}


def test_batch_not_found_drill(airflow_db, mlcore_env, spec, run_or_error):
    dag_id = f"{spec.name}__materialize_features"
    _, error = run_or_error(dag_id, {"batch_id": "never-ingested"})
    assert error is not None
    alert = the_alert(mlcore_env.home, dag_id)
    assert alert["runbook"].endswith("#batch-not-found")
    before = len(runs_of(dag_id))
    run_verbatim(section_commands("batch-not-found"), variables(alert))
    assert [r["conf"] for r in runs_of(dag_id)[before:]] == [{"batch_id": "2018"}]


def test_batch_stalled_drill(airflow_db, mlcore_env, spec, run_or_error, slices, tmp_path,
                             monkeypatch):
    """A published batch nobody materialized (its event was lost), past the spec's deadline:
    the sweep pages; the section's commands inspect the stage's DAG, unpause it and backfill
    the batch, which is then materialized."""
    from mlcore.backlog import missing

    lose_a_batch(spec, slices, mlcore_env, tmp_path, monkeypatch)
    _, error = run_or_error(f"{spec.name}__sweep_backlog", {})
    assert error is None, error
    dag_id = f"{spec.name}__materialize_features"
    alert = the_alert(mlcore_env.home, dag_id)
    assert (alert["kind"], alert["batch_id"]) == ("batch_stalled", "lost")
    assert alert["runbook"].endswith("#batch-stalled")
    backfill = next(s for s in alert["next_steps"] if s.startswith("mlcore backfill"))
    stage = shlex.split(backfill)[shlex.split(backfill).index("--stage") + 1]
    # the DAGs as the dag-processor would have them in the metadata DB
    run_verbatim(["airflow dags reserialize"], {})
    out = run_verbatim(section_commands("batch-stalled"), variables(alert, STAGE=stage))
    assert "is_paused" in out[0].stdout
    assert [m.batch_id for m in missing(spec.name, "materialize", mlcore_env.db_url)] == []
