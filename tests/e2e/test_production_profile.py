"""The production profile without Docker: every store a server, the loop run through the DAGs.

Airflow's metadata DB, mlcore's metadata store and the Feast registry each live in a fresh
PostgreSQL database; the Feast online store is PostgreSQL or Redis (a claimed, otherwise empty
db), selected with ``MLCORE_FEAST_CONFIG=deploy/feature_store.<store>.yaml``. Airflow reads its
DB URL at import, so ``airflow db migrate``, ``mlcore init`` and the ``dag.test()`` runs happen in
child processes with their own environment; this file is also the child's script
(``python test_production_profile.py OUT.json SLICE_2015 SLICE_2016``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, func, select, text

from mlcore.store.models import Batch, DriftReport, Materialization, ModelVersion, Prediction
from mlcore.store.session import get_engine, session_scope

pytestmark = pytest.mark.live  # the production-shaped stack (make test-live)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROBLEM = "census_employment"
# (dag stage, conf) in order: 2015 trains the first champion, 2016 is scored and monitored.
STAGES = [("ingest_batch", "2015"), ("materialize_features", "2015"), ("retrain_model", "2015"),
          ("ingest_batch", "2016"), ("materialize_features", "2016"), ("score_batch", "2016"),
          ("monitor_model", "2016")]


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd[:3]} exited {proc.returncode}\n{log.read_text()[-4000:]}"


@pytest.fixture(scope="module", params=["postgres", "redis"])
def profile(request, tmp_path_factory, slices):
    """The loop run through the DAGs against fresh PG databases (+ a Redis db); all dropped."""
    from pg_database import fresh_databases  # tests/support: not on the path as a script

    home = tmp_path_factory.mktemp(f"prod_{request.param}")
    claim = request.getfixturevalue("claim_redis_db")
    client, db = claim() if request.param == "redis" else (None, -1)
    with fresh_databases("af", "ml", "feast") as dbs:
        yield from _profile_run(request.param, home, dbs, client, db, slices)


def _profile_run(kind: str, home: Path, dbs: dict[str, str], client: Any, db: int, slices):
    """The profile fixture's body over ``dbs`` (af: Airflow, ml: mlcore's store, feast)."""
    from pg_database import feast_pg_env, pg_url

    feast_env = {**feast_pg_env(dbs["feast"]), "FEAST_REDIS_CONNECTION": f"127.0.0.1:6379,db={db}"}
    ns = SimpleNamespace(kind=kind, home=home / "mlcore", redis=client, env=feast_env,
                         airflow_url=pg_url(dbs["af"]), mlcore_url=pg_url(dbs["ml"]),
                         feast_url=pg_url(dbs["feast"]), airflow_home=home / "airflow",
                         feast_config=ROOT / "deploy" / f"feature_store.{kind}.yaml")
    env = {**os.environ, **feast_env,
           "AIRFLOW_HOME": str(ns.airflow_home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ns.airflow_url,
           # Airflow derives postgresql+asyncpg otherwise, and asyncpg is not in uv.lock.
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": pg_url(dbs["af"], "postgresql+psycopg"),
           "MLCORE_HOME": str(ns.home), "MLCORE_DATABASE_URL": ns.mlcore_url,
           "MLCORE_FEAST_CONFIG": str(ns.feast_config),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = home / "run.log"
    try:
        _run([str(BIN / "airflow"), "db", "migrate"], env, log, 300)
        _run([str(BIN / "mlcore"), "init"], env, log, 300)
        out = home / "runs.json"
        _run([sys.executable, __file__, str(out), str(slices[2015]), str(slices[2016])], env,
             log, 900)
        ns.runs = json.loads(out.read_text())
        yield ns
    finally:
        get_engine(ns.mlcore_url).dispose()
        if client is not None:
            client.flushdb()


def test_the_dag_runs_are_recorded_in_the_postgres_metadata_db(profile):
    assert [r["state"] for r in profile.runs] == ["success"] * len(STAGES)
    engine = create_engine(profile.airflow_url)
    with engine.connect() as conn:
        rows = conn.execute(text("select dag_id, run_id, state from dag_run")).all()
        tis = conn.execute(text("select count(*) from task_instance where state = 'success'"))
        successful_tasks = tis.scalar()
    engine.dispose()
    assert sorted((r.dag_id, r.run_id, r.state) for r in rows) == sorted(
        (f"{PROBLEM}__{stage}", run["run_id"], "success")
        for (stage, _), run in zip(STAGES, profile.runs, strict=True))
    assert successful_tasks >= len(STAGES)
    assert not (profile.airflow_home / "airflow.db").exists()  # no SQLite fallback


def _count(url: str, model: Any, **where: Any) -> int:
    with session_scope(url) as s:
        q = select(func.count()).select_from(model)
        for key, value in where.items():
            q = q.where(getattr(model, key) == value)
        return int(s.scalar(q) or 0)


def test_the_loop_lands_in_the_postgres_mlcore_store(profile):
    from mlcore.model.registry import alias_holder

    url = profile.mlcore_url
    assert _count(url, Batch, problem=PROBLEM, state="published") == 2
    assert _count(url, Materialization, problem=PROBLEM) == 2
    assert _count(url, ModelVersion, problem=PROBLEM) == 1
    champion = alias_holder(PROBLEM, url)
    assert champion is not None
    assert _count(url, Prediction, problem=PROBLEM, batch_id="2016",
                  model_version=champion) == 1500
    assert _count(url, DriftReport, problem=PROBLEM, batch_id="2016",
                  model_version=champion) == 1
    assert not (profile.home / "mlcore.db").exists()


def test_online_features_match_the_offline_store(profile, spec, monkeypatch):
    from mlcore.config import Settings
    from mlcore.feast.online import online_features

    for key, value in profile.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLCORE_HOME", str(profile.home))  # feature_store() sets it; undone after
    settings = Settings(home=profile.home, database_url=profile.mlcore_url,
                        problems_dir=ROOT / "problems", feature_repo=ROOT / "feature_repo",
                        feast_config=profile.feast_config)
    offline = pd.concat([pd.read_parquet(settings.partition("features", PROBLEM, b))
                         for b in ("2015", "2016")], ignore_index=True)
    got = online_features(spec, offline["id"].tolist(), settings)
    assert len(offline) == 3000 and got["id"].tolist() == offline["id"].tolist()
    pd.testing.assert_frame_equal(got[spec.feature_names].astype("float64"),
                                  offline[spec.feature_names].astype("float64"))
    # the rows are in the server store, the registry in PG; no embedded SQLite file was made
    assert not list((profile.home / "feast").glob("*.db"))
    engine = create_engine(profile.feast_url)
    with engine.connect() as conn:
        views = conn.execute(text("select feature_view_name from feature_views")).scalars().all()
        tables = conn.execute(text("select tablename from pg_tables where schemaname = 'public'"))
        online_table = f"batchloop_{spec.feature_view}" in tables.scalars().all()
        if profile.kind == "postgres":
            stored = conn.execute(text(f"select count(distinct entity_key) "
                                       f"from batchloop_{spec.feature_view}")).scalar()
    engine.dispose()
    assert spec.feature_view in views and len(views) == 3  # one view per shipped spec
    if profile.kind == "postgres":
        assert online_table and stored == 3000
    else:
        assert not online_table and profile.redis.dbsize() == 3000 + 1  # + the claim key


def _loop(out: Path, slice_2015: str, slice_2016: str) -> None:
    """Child process: run the stages with ``dag.test()`` and write their run ids to ``out``."""
    from batchloop_airflow.runner import run_dag

    sources = {"2015": slice_2015, "2016": slice_2016}
    runs = []
    for stage, batch in STAGES:
        conf: dict[str, Any] = {"batch_id": batch}
        if stage == "ingest_batch":
            conf["source"] = sources[batch]
        elif stage == "retrain_model":
            conf = {"until_batch": batch, "reason": "production profile e2e"}
        result = run_dag(f"{PROBLEM}__{stage}", conf)
        runs.append({"run_id": result["run_id"], "state": result["state"]})
    out.write_text(json.dumps(runs))


if __name__ == "__main__":
    _loop(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
