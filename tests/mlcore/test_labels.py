"""Ground truth: late labels joined to stored predictions by entity key, all-or-nothing files,
idempotent re-runs, conflicts, and performance over matured labelled rows only (both stores)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from registry_stub import register_stub
from sklearn.metrics import roc_auc_score
from sqlalchemy import insert, select

from mlcore.batches import BatchConflict, BatchNotFound, InvalidBatchId
from mlcore.data.label_files import LabelsRejected
from mlcore.ingestion import ingest_batch
from mlcore.labels import (
    LabelConflict,
    NoPredictions,
    ingest_labels,
    joined_labels,
    measure_performance,
    performance,
    performance_history,
)
from mlcore.model.registry import CHALLENGER, move_alias
from mlcore.spec_rules import Labels
from mlcore.store.catalog import get_batch
from mlcore.store.models import GroundTruth, PerformanceReport, Prediction
from mlcore.store.session import session_scope

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[2] / "data" / "census_ma_employment"


def store_predictions(settings, problem, batch_id, keys, version, scores) -> None:
    with session_scope(settings.db_url) as s:
        s.execute(insert(Prediction), [
            {"problem": problem, "batch_id": batch_id, "entity_key": str(k),
             "model_version": version, "score": float(v)}
            for k, v in zip(keys, scores, strict=True)])


def with_labels(spec, **knobs):
    return spec.model_copy(update={"labels": Labels(**knobs)})


@pytest.fixture
def scored(settings, spec, slices, tmp_path):
    """Batch ``mixed`` (700 rows of 2015, 800 of 2016: two event times), scored by a champion and
    a shadow challenger with known scores."""
    raw = pd.concat([pd.read_parquet(slices[2015]).head(700),
                     pd.read_parquet(slices[2016]).head(800)], ignore_index=True)
    path = tmp_path / "mixed.parquet"
    raw.to_parquet(path, index=False)
    ingest_batch(spec, str(path), "mixed", settings)
    champion, challenger = register_stub(spec, settings), register_stub(spec, settings)
    move_alias(spec.name, expected=None, new=champion, reason="t", url=settings.db_url)
    move_alias(spec.name, expected=None, new=challenger, reason="t", url=settings.db_url,
               alias=CHALLENGER)
    rng = np.random.default_rng(7)
    scores = {}
    for version in (champion, challenger):
        scores[version] = np.clip(0.3 * raw["employed"] + 0.7 * rng.random(len(raw)), 0, 1)
        store_predictions(settings, spec.name, "mixed", raw["id"], version, scores[version])
    return SimpleNamespace(raw=raw, id="mixed", champion=champion, challenger=challenger,
                           scores=scores, dir=tmp_path)


def labels_file(scored, frame: pd.DataFrame, name: str, fmt: str = "parquet") -> str:
    path = scored.dir / f"{name}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


def ground_truth(settings) -> pd.DataFrame:
    with session_scope(settings.db_url) as s:
        rows = s.execute(select(GroundTruth.batch_id, GroundTruth.entity_key, GroundTruth.label,
                                GroundTruth.source_sha256, GroundTruth.arrived_at)).all()
    return pd.DataFrame(rows, columns=["batch_id", "entity_key", "label", "sha", "arrived_at"])


def expected(scored, labels: pd.DataFrame, version: int, rows: pd.Series | None = None):
    """The join done independently: the version's scores by key, merged with the labels file."""
    preds = pd.DataFrame({"id": scored.raw["id"], "score": scored.scores[version],
                          "year": scored.raw["year"]})
    merged = preds.merge(labels[["id", "employed"]], on="id", how="inner")
    if rows is not None:
        merged = merged[rows(merged)]
    return merged, roc_auc_score(merged["employed"], merged["score"])


def test_late_labels_are_joined_by_entity_key(settings, spec, scored):
    # a shuffled subset, with every feature column too (the yearly files are passed as they are)
    labels = scored.raw.sample(1000, random_state=1)
    result = ingest_labels(spec, labels_file(scored, labels, "labels"), "mixed", settings)
    assert (result.rows, result.inserted, result.unchanged, result.batch_labels,
            result.batch_rows) == (1000, 1000, 0, 1000, 1500)
    assert result.positives == int(labels["employed"].sum())

    joined = joined_labels(spec, get_batch(spec.name, "mixed", settings.db_url),
                           scored.champion, settings.db_url)
    truth = dict(zip(labels["id"].astype(str), labels["employed"], strict=True))
    assert len(joined) == 1500
    assert joined["label"].isna().sum() == 500  # unlabelled rows stay unlabelled, never filled
    have = joined.dropna(subset=["label"])
    assert all(truth[k] == v for k, v in zip(have["entity_key"], have["label"], strict=True))

    merged, auc = expected(scored, labels, scored.champion)
    report = performance(spec, "mixed", settings, as_of=FAR_FUTURE)
    assert (report.model_version, report.role, report.metric) == (scored.champion, "champion",
                                                                   "roc_auc")
    assert report.value == pytest.approx(auc, abs=1e-12)
    assert (report.predicted_rows, report.matured_rows, report.labelled_rows) == (1500, 1500,
                                                                                   1000)
    assert report.coverage == pytest.approx(1000 / 1500)
    assert report.details["positives_share"] == pytest.approx(merged["employed"].mean())


def test_unmatured_rows_are_excluded_until_their_window_closes(settings, spec, scored):
    ingest_labels(spec, labels_file(scored, scored.raw, "all"), "mixed", settings)
    year = with_labels(spec, maturity_days=365, min_rows=100)

    # 2017-03-01: 2015's rows (2015-12-31 + 365 d) have matured, 2016's have not
    early = performance(year, "mixed", settings, as_of=datetime(2017, 3, 1, tzinfo=UTC))
    _, auc_2015 = expected(scored, scored.raw, scored.champion, lambda m: m["year"] == 2015)
    assert (early.matured_rows, early.labelled_rows) == (700, 700)
    assert early.value == pytest.approx(auc_2015, abs=1e-12)
    assert early.coverage == pytest.approx(700 / 1500)
    assert (early.details["unmatured_rows"], early.details["unmatured_labelled_rows"]) == (800,
                                                                                          800)
    # as_of moved past 2016's window: every row counts
    late = performance(year, "mixed", settings, as_of=datetime(2018, 1, 1))  # naive = UTC
    _, auc_all = expected(scored, scored.raw, scored.champion)
    assert (late.matured_rows, late.labelled_rows, late.value) == (1500, 1500,
                                                                    pytest.approx(auc_all))
    # a window that has not closed for anyone: nothing matured, no figure
    for days in (100_000, 10**7):  # past pandas' and Python's date ranges: still just "not yet"
        never = performance(with_labels(spec, maturity_days=days), "mixed", settings)
        assert (never.matured_rows, never.labelled_rows, never.value) == (0, 0, None)
        assert "fewer than labels.min_rows" in never.details["reason"]


def test_too_few_or_one_class_labels_give_no_figure(settings, spec, scored):
    ones = scored.raw[scored.raw["employed"] == 1].head(300)
    ingest_labels(spec, labels_file(scored, ones, "ones"), "mixed", settings)
    few = performance(spec, "mixed", settings, as_of=FAR_FUTURE)  # min_rows 500
    assert (few.labelled_rows, few.value) == (300, None)
    assert few.details["reason"] == "300 matured labelled rows, fewer than labels.min_rows=500"
    one_class = performance(with_labels(spec, min_rows=10), "mixed", settings, as_of=FAR_FUTURE)
    assert one_class.value is None and "single class" in one_class.details["reason"]
    assert one_class.details["positives_share"] == 1.0


def test_partial_labels_then_more_raise_coverage(settings, spec, scored):
    first = ingest_labels(spec, labels_file(scored, scored.raw.head(600), "a"), "mixed", settings)
    # the second file overlaps the first by 100 identical labels and adds 500 new ones
    second = ingest_labels(spec, labels_file(scored, scored.raw.iloc[500:1100], "b", "csv"),
                           "mixed", settings)
    assert (first.inserted, second.inserted, second.unchanged, second.batch_labels) == (
        600, 500, 100, 1100)
    stored = ground_truth(settings)
    assert len(stored) == 1100 and stored["entity_key"].is_unique
    assert stored.groupby("sha").size().to_dict() == {first.sha256: 600, second.sha256: 500}
    report = performance(spec, "mixed", settings, as_of=FAR_FUTURE)
    assert report.coverage == pytest.approx(1100 / 1500)


def test_the_same_file_again_is_a_no_op(settings, spec, scored):
    path = labels_file(scored, scored.raw, "all")
    first = ingest_labels(spec, path, "mixed", settings)
    before = ground_truth(settings)
    again = ingest_labels(spec, path, "mixed", settings)
    assert (again.inserted, again.unchanged, again.rows, again.positives, again.sha256) == (
        0, 1500, 1500, first.positives, first.sha256)
    pd.testing.assert_frame_equal(ground_truth(settings), before)


def test_a_different_label_for_a_stored_key_is_a_conflict_and_stores_nothing(settings, spec,
                                                                           scored):
    ingest_labels(spec, labels_file(scored, scored.raw.head(500), "a"), "mixed", settings)
    before = ground_truth(settings)
    other = scored.raw.iloc[400:900].copy()  # 100 overlapping keys, 400 new ones
    flipped = other.index[:3]
    other.loc[flipped, "employed"] = 1 - other.loc[flipped, "employed"]
    with pytest.raises(LabelConflict) as exc:
        ingest_labels(spec, labels_file(scored, other, "b"), "mixed", settings)
    assert isinstance(exc.value, BatchConflict)
    message = str(exc.value)
    assert "batch 'mixed'" in message and "3 keys are already stored with a different label" in (
        message) and repr(str(other.loc[flipped[0], "id"])) in message
    pd.testing.assert_frame_equal(ground_truth(settings), before)  # not the 400 new ones either


def _bad(raw: pd.DataFrame, case: str) -> pd.DataFrame:
    frame = raw[["id", "employed", "AGEP"]].copy()
    if case == "nan_label":
        frame["employed"] = frame["employed"].astype("float64")
        frame.loc[frame.index[[3, 9]], "employed"] = np.nan
    elif case == "label_2":
        frame.loc[frame.index[5], "employed"] = 2
    elif case == "missing_key":
        frame["id"] = frame["id"].astype("float64")
        frame.loc[frame.index[0], "id"] = np.nan
    elif case == "fractional_key":
        frame["id"] = frame["id"].astype("float64")
        frame.loc[frame.index[1], "id"] = 1.5
    elif case == "duplicate_key":
        frame = pd.concat([frame, frame.head(2)], ignore_index=True)
    elif case == "no_target":
        frame = frame.drop(columns=["employed"])
    elif case == "empty":
        frame = frame.head(0)
    return frame


@pytest.mark.parametrize("case, reason", [
    ("nan_label", "2 rows have employed missing or not 0/1 (or true/false, yes/no) (labels are "
                  "never imputed)"),
    ("label_2", "1 rows have employed missing or not 0/1"),
    ("missing_key", "1 rows have id missing or not a valid int64"),
    ("fractional_key", "1 rows have id missing or not a valid int64"),
    ("duplicate_key", "2 keys appear more than once"),
    ("no_target", "lacks columns ['employed']"),
    ("empty", "the file has no rows"),
])
def test_bad_files_are_refused_whole_naming_the_batch(settings, spec, scored, case, reason):
    path = labels_file(scored, _bad(scored.raw, case), case)
    with pytest.raises(LabelsRejected, match="batch 'mixed'") as exc:
        ingest_labels(spec, path, "mixed", settings)
    assert reason in str(exc.value)
    assert ground_truth(settings).empty


def test_keys_that_are_not_rows_of_the_batch_are_refused_with_examples(settings, spec, scored,
                                                                      slices):
    stranger = pd.read_parquet(slices[2017]).head(7)
    labels = pd.concat([scored.raw.head(100), stranger], ignore_index=True)
    with pytest.raises(LabelsRejected) as exc:
        ingest_labels(spec, labels_file(scored, labels, "mixed_up"), "mixed", settings)
    message = str(exc.value)
    assert "batch 'mixed'" in message and "7 of 107 keys are not rows of the batch" in message
    assert repr(str(stranger["id"].iloc[0])) in message and "nothing stored" in message
    assert ground_truth(settings).empty


def test_unknown_batch_invalid_id_and_missing_file(settings, spec, scored):
    path = labels_file(scored, scored.raw, "all")
    with pytest.raises(BatchNotFound, match="'2099'"):
        ingest_labels(spec, path, "2099", settings)
    with pytest.raises(InvalidBatchId):
        ingest_labels(spec, path, "../x", settings)
    with pytest.raises(FileNotFoundError, match="batch 'mixed'"):
        ingest_labels(spec, str(scored.dir / "nope.parquet"), "mixed", settings)
    text = scored.dir / "labels.txt"
    text.write_text("id,employed\n1,0\n")
    with pytest.raises(LabelsRejected, match="unsupported file type"):
        ingest_labels(spec, str(text), "mixed", settings)


def test_every_scoring_version_is_measured_with_its_role_and_reports_are_replaced(
        settings, spec, scored):
    ingest_labels(spec, labels_file(scored, scored.raw, "all"), "mixed", settings)
    results = measure_performance(spec, "mixed", settings, as_of=FAR_FUTURE)
    assert [(r.model_version, r.role) for r in results] == [(scored.champion, "champion"),
                                                            (scored.challenger, "challenger")]
    for r in results:
        assert r.value == pytest.approx(expected(scored, scored.raw, r.model_version)[1])
    again = measure_performance(spec, "mixed", settings, as_of=FAR_FUTURE)
    assert [r.value for r in again] == [r.value for r in results]
    with session_scope(settings.db_url) as s:
        reports = s.scalars(select(PerformanceReport)).all()
    assert sorted((r.model_version, r.role, r.labelled_rows) for r in reports) == [
        (scored.champion, "champion", 1500), (scored.challenger, "challenger", 1500)]

    history = performance_history(spec.name, settings.db_url)
    assert [(h["batch_id"], h["model_version"], h["coverage"]) for h in history] == [
        ("mixed", scored.champion, 1.0), ("mixed", scored.challenger, 1.0)]


def test_history_is_in_batch_order_and_unscored_versions_are_refused(settings, spec, scored,
                                                                     slices):
    # older event times than "mixed", which holds 700 of its rows: a correction (issue 15)
    ingest_batch(spec.model_copy(update={"corrections": "supersede"}), str(slices[2015]),
                 "b2015", settings)
    keys = pd.read_parquet(slices[2015])["id"]
    store_predictions(settings, spec.name, "b2015", keys, scored.champion,
                      np.linspace(0, 1, len(keys)))
    ingest_labels(spec, str(slices[2015]), "b2015", settings)
    ingest_labels(spec, labels_file(scored, scored.raw, "all"), "mixed", settings)
    performance(spec, "mixed", settings, as_of=FAR_FUTURE)
    performance(spec, "b2015", settings, as_of=FAR_FUTURE)
    assert [h["batch_id"] for h in performance_history(spec.name, settings.db_url)] == [
        "b2015", "mixed"]

    assert measure_performance(spec, "b2015", settings)[0].role == "champion"
    with pytest.raises(NoPredictions, match="version 99"):
        performance(spec, "mixed", settings, version=99)
    ingest_batch(spec, str(slices[2017]), "b2017", settings)
    assert measure_performance(spec, "b2017", settings) == []  # labels may come before scores
    with pytest.raises(ValueError, match="unknown role"):
        performance(spec, "mixed", settings, role="boss")


def test_seventy_thousand_labels_are_stored_and_measured_quickly(settings, spec):
    """A full yearly file (70,131 rows): labels and the measurement in well under a few s."""
    source = str(DATA / "employment_2018.parquet")
    ingest_batch(spec, source, "y2018", settings)
    keys = pd.read_parquet(source, columns=["id"])["id"]
    version = register_stub(spec, settings)
    store_predictions(settings, spec.name, "y2018", keys, version,
                      np.random.default_rng(0).random(len(keys)))
    start = time.perf_counter()
    stored = ingest_labels(spec, source, "y2018", settings)
    ingest_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = performance(spec, "y2018", settings, version=version, as_of=FAR_FUTURE)
    measure_seconds = time.perf_counter() - start
    print(f"\n70k labels on {settings.db_url.split(':')[0]}: ingest {ingest_seconds:.2f} s, "
          f"measure {measure_seconds:.2f} s")
    assert stored.inserted == report.labelled_rows == len(keys) == 70_131
    assert ingest_seconds < 10 and measure_seconds < 10  # ~0.5-0.8 s each when measured
