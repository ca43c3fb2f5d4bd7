"""Shadow evidence: a challenger scored next to the champion is judged on matured labels only,
through the same rules as a retrain, and may be promoted when the spec allows it."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sqlalchemy import insert

from mlcore.data.io import read_curated
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.evaluation import PROMOTE
from mlcore.model.preprocessing import build_pipeline
from mlcore.model.registry import CHALLENGER, alias_holder, alias_log, move_alias, register_version
from mlcore.model.splits import DatasetRef
from mlcore.problems import ProblemSpec
from mlcore.scoring import score_batch
from mlcore.shadow import compare_shadow
from mlcore.store.catalog import get_batch
from mlcore.store.models import GroundTruth
from mlcore.store.session import session_scope
from mlcore.training import save_artifact


def with_retrain(spec, **changes) -> ProblemSpec:
    data = spec.model_dump()
    data["retrain"] = {**data["retrain"], **changes.pop("retrain", {})}
    data["labels"] = {**data["labels"], **changes.pop("labels", {})}
    return ProblemSpec.model_validate(data)


@pytest.fixture(scope="module")
def shadow_home(spec, slices, settings_factory, tmp_path_factory):
    """Both models trained on 2015; 2016 scored by both (champion: the base rate, a weak
    model; challenger: logistic regression)."""
    settings = settings_factory("shadow_evidence")
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
    materialize_batch(spec, "2016", settings)
    train = read_curated(get_batch(spec.name, "2015", settings.db_url))
    rows = tmp_path_factory.mktemp("train") / "train.parquet"
    train[[spec.entity.key, "event_timestamp"]].to_parquet(rows)
    dataset = DatasetRef("d" * 16, str(rows), "/x/h", ["2015"], ["2015"], "entity_hash", 1500,
                         0, "a" * 64, "b" * 64)
    X, y = train[spec.feature_names], train["employed"]
    versions = []
    for model in (DummyClassifier(strategy="prior").fit(X, y),
                  build_pipeline(spec, "logistic_regression", 0, {"C": 1.0}).fit(X, y)):
        uri, sha = save_artifact(model, settings, spec.name)
        versions.append(register_version(
            spec, settings, algorithm=type(model).__name__, artifact_uri=uri,
            artifact_sha256=sha, hyperparameters={}, dataset=dataset, train_rows=1500,
            validation={}, timings={}, reproducibility={"dataset": dataset.to_dict()}))
    move_alias(spec.name, expected=None, new=versions[0], reason="t", url=settings.db_url)
    move_alias(spec.name, expected=None, new=versions[1], reason="t", url=settings.db_url,
               alias=CHALLENGER)
    score_batch(spec, "2016", settings)
    return settings, versions


def add_labels(settings, spec, batch_id: str, rows: slice) -> None:
    curated = read_curated(get_batch(spec.name, batch_id, settings.db_url)).iloc[rows]
    with session_scope(settings.db_url) as s:
        s.execute(insert(GroundTruth), [
            {"problem": spec.name, "batch_id": batch_id, "entity_key": str(k), "label": int(v),
             "source_sha256": "f" * 64} for k, v in zip(curated["id"], curated["employed"],
                                                        strict=True)])


def test_without_matured_labels_there_is_no_evidence_and_nothing_is_imputed(spec, shadow_home):
    settings, _ = shadow_home
    assert compare_shadow(spec, settings)["outcome"] == "not enough evidence"  # no labels yet
    add_labels(settings, spec, "2016", slice(0, 300))  # partial: 300 < min_rows 500
    out = compare_shadow(spec, settings)
    assert (out["outcome"], out["rows"]) == ("not enough evidence", 300)


def test_matured_evidence_judges_the_challenger_and_may_promote_it(spec, shadow_home):
    settings, (champion, challenger) = shadow_home
    add_labels(settings, spec, "2016", slice(300, None))  # the other 1,200
    unmatured = with_retrain(spec, labels={"maturity_days": 365 * 100})
    assert compare_shadow(unmatured, settings)["rows"] == 0  # 2016 rows are not 100 years old

    kept = compare_shadow(spec, settings)  # shadow_promotion is off in the spec
    assert (kept["outcome"], kept["rows"], kept["promoted"]) == (PROMOTE, 1500, False)
    assert kept["contender_version"] == challenger and kept["delta"] > 0.2
    assert "shadow_promotion is off" in kept["reason"]
    assert kept["holdout_batches"] == ["2016"] and alias_holder(spec.name, settings.db_url) == \
        champion

    moved = compare_shadow(with_retrain(spec, retrain={"shadow_promotion": True}), settings)
    assert moved["promoted"] and alias_holder(spec.name, settings.db_url) == challenger
    last = alias_log(spec.name, settings.db_url)[-1]
    assert (last["action"], last["evaluation_id"]) == ("shadow", moved["evaluation_id"])
    assert pd.read_json(moved["run_card"].replace(".html", ".json"), typ="series")[
        "holdout"]["method"] == "shadow"
