"""Monitoring: a batch's drift against the champion's reference profile, per column with the
spec's effect-size thresholds (numbers checked against scipy), the prediction, segments, the
reports and the stored row. Failures (mismatch, Evidently, budget) are in tests/faults."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from sqlalchemy import select

from mlcore.data.curation import curate
from mlcore.data.io import read_curated
from mlcore.ingestion import ingest_batch
from mlcore.model.drift import PREDICTION, comparable, stattests
from mlcore.model.evaluation import predict_proba
from mlcore.model.reference import profile_path
from mlcore.model.registry import ModelNotFound, alias_holder, get_version, load_model
from mlcore.monitoring import DriftResult, _record, detect_drift, measure_drift
from mlcore.store.catalog import get_batch
from mlcore.store.models import DriftReport, RetrainRequest
from mlcore.store.session import session_scope

DATA = Path(__file__).resolve().parents[2] / "data" / "census_ma_employment"

# Every feature pushed somewhere the 2015-2016 reference rarely is (SEX all 1: the SEX=2 segment
# of the current side is empty).
SHIFT = {"SCHL": 1, "MAR": 5, "RELP": 17, "DIS": 1, "ESP": 8, "CIT": 5, "MIG": 3, "MIL": 2,
         "ANC": 4, "NATIVITY": 2, "DEAR": 1, "DEYE": 1, "DREM": 1, "SEX": 1, "RAC1P": 9}


def more_2015(start: int) -> pd.DataFrame:
    """1,500 further real 2015 rows (ids unseen by the loop), without the target."""
    rows = pd.read_parquet(DATA / "employment_2015.parquet").iloc[start:start + 1500]
    return rows.drop(columns=["employed"]).reset_index(drop=True)


def moved(raw: pd.DataFrame) -> pd.DataFrame:
    """Two features moved: everyone 15 years older, "never married" recoded as "widowed"."""
    return raw.assign(AGEP=(raw["AGEP"] + 15).clip(upper=120),
                      MAR=raw["MAR"].astype("int64").replace({5: 2}))


def shifted(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.assign(AGEP=(raw["AGEP"] + 40).clip(upper=120), **SHIFT)


def resample_of_reference(slices) -> pd.DataFrame:
    """1,500 rows drawn with replacement from the champion's own training rows (2015-2016),
    under new ids."""
    rows = pd.concat([pd.read_parquet(slices[y]) for y in (2015, 2016)], ignore_index=True)
    rows = rows.sample(1500, replace=True, random_state=7).reset_index(drop=True)
    return rows.drop(columns=["employed"]).assign(id=np.arange(9_000_000, 9_001_500))


def reports(settings, batch_id: str) -> list[DriftReport]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(DriftReport).where(DriftReport.batch_id == batch_id)))


@pytest.fixture(scope="module")
def drift(spec, loop, slices, tmp_path_factory):
    """Three unlabelled batches in the loop home (own ids), each checked once."""
    folder = tmp_path_factory.mktemp("drift")
    frames = {"mon_resample": resample_of_reference(slices), "mon_moved": moved(more_2015(1500)),
              "mon_shifted": shifted(more_2015(3000))}
    results = {}
    for batch_id, frame in frames.items():
        path = folder / f"{batch_id}.parquet"
        frame.to_parquet(path, index=False)
        ingest_batch(spec, str(path), batch_id, loop.settings)
        results[batch_id] = detect_drift(spec, batch_id, loop.settings)
    return SimpleNamespace(settings=loop.settings, version=loop.contender.version, **results)


def scipy_scores(spec, settings, batch_id: str) -> dict[str, float]:
    """The same statistics computed independently: scipy on the stored profile and the batch's
    curated rows scored by the champion (both sides are under ``sample_rows``: no sampling)."""
    mv = get_version(spec.name, alias_holder(spec.name, settings.db_url), settings.db_url)
    ref = pd.read_parquet(profile_path(mv, mv.reproducibility["reference_profile"]))
    cur = read_curated(get_batch(spec.name, batch_id, settings.db_url))
    cur[PREDICTION] = predict_proba(load_model(mv, settings), cur[spec.feature_names])
    cur = comparable(cur, spec)  # categories as text on both sides, as the profile keeps them
    out = {}
    for col in [*spec.numeric, PREDICTION]:  # Evidently's norm: the reference's std (ddof 0)
        out[col] = wasserstein_distance(ref[col], cur[col]) / max(np.std(ref[col]), 0.001)
    for col in spec.categorical:
        both = pd.concat([ref[col].value_counts(), cur[col].value_counts()], axis=1).fillna(0)
        out[col] = float(jensenshannon(both.iloc[:, 0] / len(ref), both.iloc[:, 1] / len(cur)))
    return out


@pytest.mark.parametrize("batch_id", ["mon_resample", "mon_moved", "mon_shifted"])
def test_every_score_matches_scipy_and_the_thresholds_judge(spec, drift, batch_id):
    result = getattr(drift, batch_id)
    expected = scipy_scores(spec, drift.settings, batch_id)
    columns = {**result.details["columns"], PREDICTION: result.details["prediction"]}
    assert list(result.details["columns"]) == spec.feature_names
    for col, want in expected.items():
        got = columns[col]
        assert got["score"] == pytest.approx(want, rel=1e-9, abs=1e-12), col
        assert got["threshold"] == stattests(spec)[col].threshold
        assert got["drift"] is bool(want >= got["threshold"]), col
    assert columns["AGEP"]["method"] == columns[PREDICTION]["method"] == "wasserstein"
    assert {columns[c]["method"] for c in spec.categorical} == {"jensenshannon"}


def test_a_resample_of_the_reference_is_not_flagged(drift):
    result = drift.mon_resample
    assert (result.dataset_drift, result.prediction_drift, result.drifted_columns) == (
        False, False, [])
    assert max(c["score"] for c in result.details["columns"].values()) < 0.1
    assert result.details["prediction"]["score"] < 0.1
    assert result.details["reference"]["source"] == "profile"


def test_moved_columns_drift_and_nothing_else(drift):
    result = drift.mon_moved
    assert result.drifted_columns == ["AGEP", "MAR"]
    assert result.drift_share == pytest.approx(2 / 16) and result.dataset_drift is False
    assert result.details["columns"]["AGEP"]["score"] > 0.6  # ~15 years / std of age (~23)
    agep = result.details["columns"]["AGEP"]
    assert agep["current_mean"] - agep["reference_mean"] == pytest.approx(15, abs=1.0)
    mar = result.details["columns"]["MAR"]
    assert mar["value"] == "2" and mar["reference_share"] < 0.1 < 0.4 < mar["current_share"]


def test_a_shifted_batch_drifts_overall_and_in_its_predictions(drift):
    result = drift.mon_shifted
    assert result.dataset_drift is True and result.drift_share >= 0.5
    assert result.prediction_drift is True
    assert {"AGEP", "SEX", "MAR"} <= set(result.drifted_columns)


def test_segments_are_reported_per_value_and_tiny_ones_skipped(drift):
    segments = drift.mon_moved.details["segments"]
    assert list(segments) == ["SEX=1", "SEX=2"]
    for key, entry in segments.items():
        assert key == f"{entry['column']}={entry['value']}"
        assert min(entry["rows"]) >= 200 and "skipped" not in entry
        assert {"AGEP", "MAR"} <= set(entry["drifted_columns"])
        assert "SEX" not in entry["scores"] and PREDICTION in entry["scores"]
        assert entry["drift_share"] == len(entry["drifted_columns"]) / 15
    assert sum(e["rows"][1] for e in segments.values()) == 1500
    shifted = drift.mon_shifted.details["segments"]
    assert shifted["SEX=2"]["rows"][1] == 0 and "skipped" in shifted["SEX=2"]
    assert shifted["SEX=1"]["dataset_drift"] is True


@pytest.mark.parametrize("batch_id", ["mon_resample", "mon_moved", "mon_shifted"])
def test_reports_are_written_and_recorded(drift, batch_id):
    result = getattr(drift, batch_id)
    json_path, html_path = Path(result.json_uri), Path(result.html_uri)
    assert json_path.parent == drift.settings.partition("reports", "census_employment", batch_id)
    saved = json.loads(json_path.read_text())
    assert saved["details"] == result.details
    assert len(saved["evidently"]["all"]["metrics"]) == 17  # 16 features + the prediction
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "AGEP" in html and "Segments" in html
    assert html_path.stat().st_size < 2_000_000
    [row] = reports(drift.settings, batch_id)
    assert (row.model_version, row.json_uri, row.html_uri) == (
        drift.version, result.json_uri, result.html_uri)
    assert (row.drift_share, row.dataset_drift) == (result.drift_share, result.dataset_drift)
    assert row.drifted_columns == result.drifted_columns and row.details == result.details


def test_details_round_trip_through_both_stores(drift, db_url):
    _record(drift.mon_moved, db_url)
    with session_scope(db_url) as s:
        [row] = s.scalars(select(DriftReport))
    assert row.details == drift.mon_moved.details


def test_rerunning_keeps_one_report_per_batch_and_version(spec, drift):
    again = detect_drift(spec, "mon_moved", drift.settings)
    assert len(reports(drift.settings, "mon_moved")) == 1
    assert again.details["columns"] == drift.mon_moved.details["columns"]
    assert again.details["prediction"] == drift.mon_moved.details["prediction"]


def test_drift_files_no_retrain_request_itself(drift):
    """Deciding on a retrain is the policy's job (DriftResult has what it needs)."""
    with session_scope(drift.settings.db_url) as s:
        assert list(s.scalars(select(RetrainRequest).where(
            RetrainRequest.batch_id.in_(["mon_moved", "mon_shifted"])))) == []
    assert "retrain_request_id" not in DriftResult.__dataclass_fields__


def test_the_champion_has_a_reference_profile(spec, loop):
    mv = get_version(spec.name, loop.contender.version, loop.settings.db_url)
    profile = mv.reproducibility["reference_profile"]
    path = profile_path(mv, profile)
    assert path.parent == Path(mv.artifact_uri).parent and path.name == "reference.parquet"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == profile["sha256"]
    frame = pd.read_parquet(path)
    assert list(frame.columns) == profile["columns"] == [*spec.feature_names, PREDICTION]
    assert len(frame) == profile["rows"] == mv.train_rows  # under sample_rows: every row
    assert frame[PREDICTION].between(0, 1).all()


def test_drift_step_on_in_memory_frames(spec, slices):
    reference = curate(pd.read_parquet(slices[2015]), spec).assign(prediction=0.3)
    details, snapshots = measure_drift(reference, reference.copy(), spec)
    assert (details["drift_share"], details["drifted_columns"]) == (0.0, [])
    assert {c["score"] for c in details["columns"].values()} == {0.0}
    assert details["prediction"]["score"] == 0.0 and not details["prediction_drift"]
    assert set(snapshots) == {"all", "SEX=1", "SEX=2"}
    current = curate(shifted(pd.read_parquet(slices[2016])), spec).assign(prediction=0.9)
    details, _ = measure_drift(reference, current, spec)
    assert details["dataset_drift"] and details["prediction_drift"]
    assert {"AGEP", "SEX"} <= set(details["drifted_columns"])


def test_scores_and_verdicts_equal_evidentlys_stock_value_drift(spec, slices, monkeypatch):
    """The lean metric (no widgets) computes what ``ValueDrift`` computes, NaNs included."""
    from evidently.metrics import ValueDrift

    import mlcore.model.drift as drift

    rng = np.random.default_rng(0)
    reference = curate(pd.read_parquet(slices[2015]), spec).assign(prediction=rng.random(1500))
    current = curate(moved(pd.read_parquet(slices[2016])), spec).assign(
        prediction=rng.random(1500) ** 2)
    current.loc[:99, "AGEP"] = np.nan
    tests = stattests(spec)
    lean = drift.run_drift(reference, current, tests)[1]
    monkeypatch.setattr(drift, "drift_metric", lambda: ValueDrift)
    stock = drift.run_drift(reference, current, tests)[1]
    assert lean == stock
    assert {c for c, v in lean.items() if v["drift"]} == {"AGEP", "MAR", PREDICTION}


def test_monitoring_without_a_champion_is_not_found(spec, slices, sqlite_settings):
    ingest_batch(spec, str(slices[2015]), "2015", sqlite_settings)
    with pytest.raises(ModelNotFound, match="no champion"):
        detect_drift(spec, "2015", sqlite_settings)
