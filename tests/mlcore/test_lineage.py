"""Lineage: from a model version back to its batches, data hash, decisions and alias moves; from
a batch to the models, evaluations, predictions and drift reports that used it."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from mlcore.batches import BatchNotFound, InvalidBatchId
from mlcore.lineage import batch_lineage, model_lineage
from mlcore.model.registry import ModelNotFound
from mlcore.store.models import Batch, DriftReport, Evaluation, ModelVersion, Prediction
from mlcore.store.session import session_scope


def test_lineage_leads_back_to_the_training_batches_and_promotion(spec, loop):
    version = loop.contender.version
    data = model_lineage(spec.name, version, loop.settings.db_url)

    assert (data["version"], data["algorithm"]) == (version, "logistic_regression")
    assert (data["artifact_uri"], data["artifact_sha256"]) == (
        loop.contender.artifact_uri, loop.contender.artifact_sha256)
    assert (data["data_hash"], data["dataset"]) == (loop.dataset.train_hash,
                                                    loop.dataset.dataset_id)
    batches = {b["batch_id"]: b for b in data["training_batches"]}
    assert set(batches) == {"2015", "2016", "2017"}  # 2017's earlier rows train too
    for year in (2015, 2016, 2017):
        manifest = loop.manifests[year]
        assert (batches[str(year)]["sha256"], batches[str(year)]["source_uri"],
                batches[str(year)]["rows"]) == (manifest.sha256, manifest.source_uri, 1500)
    first = data["alias_history"][0]
    assert (first["from"], first["to"], first["action"], first["actor"]) == (
        None, version, "promote", "tests")
    assert data["spec_hash"] and data["code_version"]


def test_lineage_of_an_unknown_version_is_not_found(spec, loop):
    with pytest.raises(ModelNotFound):
        model_lineage(spec.name, 999, loop.settings.db_url)


def add_version(s, problem: str, version: int, batches: list[str]) -> None:
    s.add(ModelVersion(problem=problem, version=version, algorithm="logistic_regression",
                       hyperparameters={}, artifact_uri=f"/a/v{version}.joblib",
                       artifact_sha256="a" * 64, training_batch_ids=batches, data_hash="d" * 64,
                       train_rows=10, metrics={"dataset_id": f"ds{version}"}, code_version="t",
                       timings={}, spec_hash="s" * 64))


def add_evaluation(s, problem: str, contender: int, champion: int | None,
                   holdout: list[str]) -> Evaluation:
    e = Evaluation(problem=problem, contender_version=contender, champion_version=champion,
                   holdout_batch_ids=holdout, holdout_hash=f"h-{'-'.join(holdout)}",
                   holdout_rows=7, metric="roc_auc", contender_metrics={"roc_auc": 0.8},
                   champion_metrics=None, delta=None, ci_low=None, ci_high=None, thresholds={},
                   promote=champion is None, reason="r")
    s.add(e)
    s.flush()
    return e


@pytest.fixture
def seeded(db_url):
    """Three versions, two evaluations, predictions and a drift report around batch 2016."""
    p = "census_employment"
    with session_scope(db_url) as s:
        for year, state in ((2015, "published"), (2016, "published"), (2017, "rejected")):
            s.add(Batch(problem=p, batch_id=str(year), source_uri=f"file:///{year}.parquet",
                        sha256=str(year % 10) * 64, row_count=100, schema_hash="c" * 64,
                        schema={}, quarantine_count=year - 2013, state=state,
                        event_time_min=datetime(year, 12, 31, tzinfo=UTC),
                        event_time_max=datetime(year, 12, 31, tzinfo=UTC)))
        s.add(Batch(problem="other", batch_id="2016", source_uri="x", sha256="9" * 64,
                    row_count=1, schema_hash="c" * 64, schema={}, state="published"))
        add_version(s, p, 1, ["2015", "2016"])
        add_version(s, p, 2, ["2015"])
        add_version(s, p, 3, ["2015", "2016x"])  # a prefix match must not count
        add_version(s, "other", 1, ["2016"])
        e1 = add_evaluation(s, p, 2, None, ["2016"])
        e2 = add_evaluation(s, p, 3, 2, ["2017"])
        s.add_all([Prediction(problem=p, batch_id=b, entity_key=str(k), model_version=v,
                              score=0.5)
                   for b, v, n in (("2016", 1, 5), ("2016", 2, 3), ("2015", 1, 2))
                   for k in range(n)])
        s.add(DriftReport(problem=p, batch_id="2016", model_version=2, drift_share=0.6,
                          drifted_columns=["AGEP"], dataset_drift=True, json_uri="/r/d.json",
                          html_uri="/r/d.html"))
    return SimpleNamespace(url=db_url, problem=p, evaluations=(e1.id, e2.id))


def test_batch_lineage_lists_everything_that_used_the_batch(seeded):
    data = batch_lineage(seeded.problem, "2016", seeded.url)

    assert data["manifest"] == {
        "sha256": "6" * 64, "rows": 100, "quarantine_count": 3, "state": "published",
        "source_uri": "file:///2016.parquet", "schema_hash": "c" * 64, "curated_uri": None,
        "event_time": [data["manifest"]["event_time"][0]] * 2}
    assert data["manifest"]["event_time"][0].startswith("2016-12-31T00:00:00")
    assert [m["version"] for m in data["trained_models"]] == [1]
    [holdout] = data["holdout_evaluations"]
    assert (holdout["id"], holdout["contender"], holdout["holdout"], holdout["holdout_hash"]) == (
        seeded.evaluations[0], 2, ["2016"], "h-2016")
    assert data["predictions"] == [{"model_version": 1, "count": 5},
                                   {"model_version": 2, "count": 3}]
    [drift] = data["drift_reports"]
    assert (drift["model_version"], drift["drift_share"], drift["dataset_drift"],
            drift["json_uri"], drift["html_uri"]) == (2, 0.6, True, "/r/d.json", "/r/d.html")
    assert data["materialization"] is None


def test_batch_lineage_of_a_rejected_batch_shows_its_state(seeded):
    data = batch_lineage(seeded.problem, "2017", seeded.url)
    assert (data["manifest"]["state"], data["manifest"]["quarantine_count"]) == ("rejected", 4)
    assert [e["contender"] for e in data["holdout_evaluations"]] == [3]
    assert data["trained_models"] == data["predictions"] == data["drift_reports"] == []


def test_model_lineage_lists_the_holdout_it_was_judged_on(seeded):
    data = model_lineage(seeded.problem, 3, seeded.url)
    assert data["judged_on"] == [{"evaluation_id": seeded.evaluations[1],
                                  "holdout_batch_ids": ["2017"], "holdout_hash": "h-2017",
                                  "holdout_rows": 7}]
    champion = model_lineage(seeded.problem, 2, seeded.url)  # contender once, champion once
    assert [j["holdout_batch_ids"] for j in champion["judged_on"]] == [["2016"]]
    assert [e["id"] for e in champion["evaluations"]] == list(seeded.evaluations)


def test_batch_lineage_of_an_unknown_batch_names_it(seeded):
    with pytest.raises(BatchNotFound, match="'2099'"):
        batch_lineage(seeded.problem, "2099", seeded.url)


@pytest.mark.parametrize("batch_id", ["../../etc/passwd", "x' OR '1'='1", "a" * 10_240])
def test_batch_lineage_checks_the_id_before_any_sql(batch_id, tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'no.db'}"  # any SQL here would fail differently
    with pytest.raises(InvalidBatchId, match="invalid batch id"):
        batch_lineage("census_employment", batch_id, url)
    assert list(tmp_path.iterdir()) == []


def test_batch_lineage_in_the_loop(spec, loop):
    data = batch_lineage(spec.name, "2015", loop.settings.db_url)
    assert loop.contender.version in [m["version"] for m in data["trained_models"]]
    assert data["manifest"]["sha256"] == loop.manifests[2015].sha256
    assert data["materialization"]["rows"] == 1500


def test_batch_lineage_counts_predictions_in_sql(seeded):
    from sqlalchemy import event

    from mlcore.store.session import get_engine

    statements: list[str] = []

    def capture(conn, cursor, statement, *args):
        statements.append(statement.lower())

    engine = get_engine(seeded.url)
    event.listen(engine, "before_cursor_execute", capture)
    try:
        batch_lineage(seeded.problem, "2016", seeded.url)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    [query] = [q for q in statements if "from predictions" in q]
    assert "count(" in query and "group by" in query and "predictions.score" not in query
