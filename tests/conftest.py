"""Shared fixtures. Airflow's environment is set here, before anything imports airflow."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pg_database import PG_ADMIN_URL, fresh_database

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "census_ma_employment"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="batchloop-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
    "BATCHLOOP_RETRY_DELAY": "1",
    "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"),
    "MLCORE_FEATURE_REPO": str(ROOT / "feature_repo"),
})
# One OpenMP thread: on a busy 2-core box, HistGradientBoosting's spinning OpenMP workers turn a
# 0.2 s fit into a minute. Set before any test module imports scikit-learn.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def spec():
    """The census problem spec."""
    from mlcore.problems import get_problem

    return get_problem("census_employment", ROOT / "problems")


@pytest.fixture(scope="session")
def slices(tmp_path_factory) -> dict[int, Path]:
    """Small real slices of the four yearly files (1,500 rows each), as parquet."""
    import pandas as pd

    out = tmp_path_factory.mktemp("slices")
    paths = {}
    for year in (2015, 2016, 2017, 2018):
        df = pd.read_parquet(DATA / f"employment_{year}.parquet").head(1500)
        paths[year] = out / f"employment_{year}.parquet"
        df.to_parquet(paths[year], index=False)
    return paths


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 for this run, dropped afterwards."""
    from mlcore.store.session import get_engine

    with fresh_database("batchloop_test") as name:
        url = f"{PG_ADMIN_URL}/{name}"
        try:
            yield url
        finally:
            get_engine(url).dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A migrated, empty metadata store: SQLite file, or a fresh schema in the run's PG DB."""
    from sqlalchemy import create_engine, text

    from mlcore.store.session import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mlcore.db'}"
        upgrade(url)
        yield url
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{base}?options=-csearch_path%3D{schema}"
    upgrade(url)
    yield url
    from mlcore.store.session import get_engine

    get_engine(url).dispose()
    with engine.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.fixture
def settings(tmp_path, db_url):
    """Settings over a temporary home and the parametrized metadata store."""
    from mlcore.config import Settings

    home = tmp_path / "home"
    home.mkdir()
    return Settings(home=home, database_url=db_url, problems_dir=ROOT / "problems",
                    feature_repo=ROOT / "feature_repo")


@pytest.fixture
def sqlite_settings(tmp_path):
    """Settings over a temporary home with the default (SQLite) metadata store, migrated."""
    from mlcore.config import Settings
    from mlcore.store.session import upgrade

    home = tmp_path / "home"
    home.mkdir()
    s = Settings(home=home, problems_dir=ROOT / "problems", feature_repo=ROOT / "feature_repo")
    upgrade(s.db_url)
    return s


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite in the session's AIRFLOW_HOME)."""
    from airflow.utils.db import initdb

    initdb()
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


@pytest.fixture
def mlcore_env(tmp_path, monkeypatch):
    """Point the process-wide settings (what DAG tasks read) at a fresh, initialized home."""
    from mlcore.config import get_settings
    from mlcore.store.session import upgrade

    home = tmp_path / "mlcore_home"
    monkeypatch.setenv("MLCORE_HOME", str(home))
    monkeypatch.delenv("MLCORE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    home.mkdir()
    upgrade(settings.db_url)
    yield settings
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def run_or_error():
    """Run a DAG with ``dag.test()``: (result, None) on success, (None, message) on failure."""
    from batchloop_airflow.runner import DagRunFailed, run_dag

    def _run(dag_id, conf):
        try:
            return run_dag(dag_id, conf), None
        except DagRunFailed as exc:
            return None, str(exc)

    return _run


@pytest.fixture(scope="session")
def task_tries():
    """``task_tries(dag_id)``: {task_id: (state, try number)} of the DAG's newest run."""
    def _tries(dag_id: str) -> dict[str, tuple[str, int]]:
        from airflow.models import DagRun, TaskInstance
        from airflow.utils.session import create_session

        with create_session() as s:
            last = (s.query(DagRun).filter(DagRun.dag_id == dag_id)
                    .order_by(DagRun.id.desc()).first())
            return {ti.task_id: (str(ti.state), ti.try_number) for ti in
                    s.query(TaskInstance).filter(TaskInstance.run_id == last.run_id,
                                                 TaskInstance.dag_id == dag_id)}

    return _tries


def _make_settings(base: Path):
    from mlcore.config import Settings
    from mlcore.store.session import upgrade

    home = base / "home"
    home.mkdir(parents=True)
    settings = Settings(home=home, problems_dir=ROOT / "problems",
                        feature_repo=ROOT / "feature_repo")
    upgrade(settings.db_url)
    return settings


@pytest.fixture(scope="session")
def settings_factory(tmp_path_factory) -> Callable[[str], object]:
    """Make a migrated SQLite ``Settings`` over a new temporary home (for module fixtures)."""
    return lambda name: _make_settings(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def loop(settings_factory, spec, slices):
    """2015-2017 ingested and materialized, dataset built (holdout 2017), a champion promoted."""
    from first_champion import first_champion

    settings = settings_factory("loop")
    manifests, dataset, contender = first_champion(spec, slices, settings)
    return SimpleNamespace(settings=settings, manifests=manifests, dataset=dataset,
                           contender=contender)


@pytest.fixture(scope="session")
def claim_redis_db():
    """A function claiming an empty Redis db on 127.0.0.1:6379 (from 15 down) with a marker key:
    returns ``(client, db)``; the caller flushes that db when done."""
    def claim():
        import redis

        token = uuid.uuid4().hex
        for db in range(15, 7, -1):
            client = redis.Redis(host="127.0.0.1", port=6379, db=db)
            if client.set("batchloop:test-claim", token, nx=True) and client.dbsize() == 1:
                return client, db
            if client.get("batchloop:test-claim") == token.encode():
                client.delete("batchloop:test-claim")
        raise RuntimeError("no empty Redis db in 8..15 on 127.0.0.1:6379")

    return claim
