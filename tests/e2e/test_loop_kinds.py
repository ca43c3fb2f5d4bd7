"""The whole loop through Airflow (``dag.test()``) for the multiclass and the regression family,
as shipped in ``problems/``: string categories, a bool, a nullable numeric with missing values,
a timestamp feature expanded into parts, learnt classes, per-kind outputs, metrics and reports.

The multiclass family also runs with mlcore's metadata store on PostgreSQL.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from mlcore.store.models import (
    DriftReport,
    Evaluation,
    ModelVersion,
    PerformanceReport,
    Prediction,
    TargetClasses,
)
from mlcore.store.session import session_scope

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1500
CASES = [("credit_card_segment", "sqlite"), ("credit_card_segment", "postgresql"),
         ("used_car_price", "sqlite")]


def _slices(problem: str, out: Path) -> list[tuple[str, Path]]:
    """The first three batch files, 1,500 rows each; the multiclass one with every 20th
    stated_income missing (the spec declares it nullable)."""
    files = sorted((ROOT / "data" / problem).glob("*.parquet"))[:3]
    batches = []
    for f in files:
        df = pd.read_parquet(f).head(ROWS)
        if problem == "credit_card_segment":
            df.loc[df.index[::20], "stated_income"] = np.nan
        path = out / f.name
        df.to_parquet(path, index=False)
        batches.append((f.stem.rsplit("_", 1)[-1], path))
    return batches


@pytest.fixture(params=CASES, ids=[f"{p}-{d}" for p, d in CASES])
def case(request, tmp_path, monkeypatch, airflow_db):
    """A fresh mlcore home (store on SQLite or a fresh PostgreSQL database) for the DAG tasks."""
    from mlcore.config import get_settings
    from mlcore.store.session import upgrade

    problem, db = request.param
    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "home"))
    if db == "postgresql":
        monkeypatch.setenv("MLCORE_DATABASE_URL", request.getfixturevalue("db_url_pg"))
    else:
        monkeypatch.delenv("MLCORE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    settings.home.mkdir(parents=True)
    upgrade(settings.db_url)
    yield problem, settings, _slices(problem, tmp_path)
    get_settings.cache_clear()


@pytest.fixture
def db_url_pg(postgres_url):
    """A fresh schema in the run's PostgreSQL database for one test, dropped afterwards."""
    import uuid

    from sqlalchemy import create_engine, text

    from mlcore.store.session import get_engine

    schema = f"kinds_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    yield url
    get_engine(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _run_loop(problem: str, batches: list[tuple[str, Path]]) -> list[dict]:
    from batchloop_airflow.runner import run_dag

    decisions = []
    for i, (batch, path) in enumerate(batches):
        ingest = run_dag(f"{problem}__ingest_batch", {"batch_id": batch, "source": str(path)})
        manifest = ingest["tasks"]["ingest_batch"]["value"]
        assert (manifest["published_rows"], manifest["quarantine_count"]) == (ROWS, 0)
        run_dag(f"{problem}__materialize_features", {"batch_id": batch})
        if i:
            scored = run_dag(f"{problem}__score_batch", {"batch_id": batch})
            assert scored["tasks"]["score_batch[0]"]["value"]["rows"] == ROWS
            run_dag(f"{problem}__monitor_model", {"batch_id": batch})
            run_dag(f"{problem}__ingest_labels", {"batch_id": batch, "source": str(path)})
        retrain = run_dag(f"{problem}__retrain_model", {"until_batch": batch, "reason": "e2e"})
        decisions.append(retrain["tasks"]["evaluate_contender"]["value"])
    return decisions


def test_family_runs_the_whole_loop_through_the_dags(case):
    from mlcore.model.registry import alias_holder
    from mlcore.problems import get_problem
    from mlcore.training import reproduce_version

    problem, settings, batches = case
    spec = get_problem(problem, ROOT / "problems")
    decisions = _run_loop(problem, batches)
    assert decisions[0]["outcome"] == "promote"  # the first model: the floor alone
    assert all(d["metric"] == spec.metric.name for d in decisions)
    url, last = settings.db_url, batches[-1][0]

    with session_scope(url) as s:
        preds = s.execute(select(Prediction.score, Prediction.label, Prediction.probabilities)
                          .where(Prediction.problem == problem,
                                 Prediction.batch_id == last)).all()
        versions = s.scalars(select(ModelVersion).where(ModelVersion.problem == problem)).all()
        drift = s.scalars(select(DriftReport).where(DriftReport.problem == problem)).all()
        perf = s.scalars(select(PerformanceReport).where(
            PerformanceReport.problem == problem)).all()
        evals = s.scalars(select(Evaluation).where(Evaluation.problem == problem)).all()
        classes = s.get(TargetClasses, problem)
        records = [v.reproducibility for v in versions]
        drift_details = [d.details for d in drift]
        perf_values = [(p.metric, p.value) for p in perf]
        cards = [e.run_card_uri for e in evals]
    assert len(preds) >= ROWS and len(drift_details) == 2 and len(cards) >= 3  # + shadow
    assert perf_values and all(m == spec.metric.name and v is not None and math.isfinite(v)
                               for m, v in perf_values)
    if problem == "credit_card_segment":
        _check_multiclass(spec, settings, preds, records, drift_details, classes, cards)
    else:
        _check_regression(preds, records, drift_details, classes, cards)
    _check_feast_types(spec, settings, batches[0][0])
    champion = alias_holder(problem, url)
    assert reproduce_version(spec, champion, settings).verified


def _check_multiclass(spec, settings, preds, records, drift_details, classes, cards) -> None:
    names = ["highstreet_card", "prepaid_card", "upmarket_card"]
    assert classes is not None and classes.classes == names  # learnt from the first batch
    for score, label, probs in preds:
        p = json.loads(probs)
        assert label in names and len(p) == 3 and math.isclose(sum(p), 1.0, abs_tol=1e-6)
        assert score == max(p) and names[int(np.argmax(p))] == label
    for rec in records:
        assert rec["target"] == {"kind": "multiclass", "classes": names}
        assert set(rec["missing_values"]) == {"stated_income"}  # the nullable input, recorded
    for d in drift_details:
        assert set(d["prediction"]["per_class"]) == set(names)
        assert {"acq_channel", "is_customer", "timestamp_hour"} <= set(d["columns"])
    html = Path(cards[-1]).read_text()
    assert all(n in html for n in names)
    # the string categories, the bool and the missing incomes reached the curated file as such
    curated = pd.read_parquet(settings.partition("curated", spec.name, "2020-05"))
    assert curated["acq_channel"].map(type).eq(str).all()
    assert curated["is_customer"].dtype == bool
    assert curated["stated_income"].isna().sum() == ROWS // 20
    assert curated["y_true"].between(0, 2).all()  # encoded by the fixed class list


def _check_regression(preds, records, drift_details, classes, cards) -> None:
    assert classes is None  # a regression target has no classes
    values = np.array([p[0] for p in preds])
    assert all(p[1] is None and p[2] is None for p in preds)
    assert np.isfinite(values).all() and values.std() > 100  # prices, not probabilities
    for rec in records:
        assert rec["target"] == {"kind": "regression", "classes": []}
    for d in drift_details:
        assert d["prediction"]["kind"] == "numeric" and "per_class" not in d["prediction"]
    assert Path(cards[-1]).is_file()


def _check_feast_types(spec, settings, batch: str) -> None:
    """Strings and bools are stored with their real Feast types, never re-coded."""
    from mlcore.feast.store import feature_store

    store = feature_store(settings)
    view = store.get_feature_view(spec.feature_view)
    types = {f.name: str(f.dtype) for f in view.features}
    for f in spec.features:
        if f.kind == "categorical":
            want = "String" if f.value_type == "str" else "Int64"
            assert types[f.name] == want, f.name
        if f.kind == "boolean":
            assert types[f.name] == "Bool"
    offline = pd.read_parquet(settings.partition("features", spec.name, batch))
    online = sqlite3.connect(settings.home / "feast" / "online_store.db")
    decl = {r[1]: r[2] for r in online.execute(
        f"pragma table_info(batchloop_{spec.name}_fv_wide)")}
    for f in spec.features:
        if f.kind == "categorical" and f.value_type == "str":
            assert offline[f.name].map(type).eq(str).all() and decl[f.name] == "TEXT"
