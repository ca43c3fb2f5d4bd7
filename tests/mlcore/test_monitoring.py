"""Monitoring with Evidently: reports stored, drift on a synthetic shifted batch files a retrain
request, a same-distribution batch does not."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from sqlalchemy import select

from mlcore.ingestion import curate, ingest_batch
from mlcore.monitoring import close_retrain_requests, detect_drift, drift_report, summarize
from mlcore.registry import ModelNotFound
from mlcore.store.models import DriftReport, RetrainRequest
from mlcore.store.session import session_scope

DATA = Path(__file__).resolve().parents[2] / "data" / "census_ma_employment"

# Every feature pushed somewhere the 2015-2016 reference rarely is.
SHIFT = {"SCHL": 1, "MAR": 5, "RELP": 17, "DIS": 1, "ESP": 8, "CIT": 5, "MIG": 3, "MIL": 2,
         "ANC": 4, "NATIVITY": 2, "DEAR": 1, "DEYE": 1, "DREM": 1, "SEX": 1, "RAC1P": 9}


def more_2015(start: int) -> pd.DataFrame:
    """1,500 further real 2015 rows (ids unseen by the loop), without the target."""
    rows = pd.read_parquet(DATA / "employment_2015.parquet").iloc[start:start + 1500]
    return rows.drop(columns=["employed"]).reset_index(drop=True)


def shifted(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.assign(AGEP=(raw["AGEP"] + 40).clip(upper=120), **SHIFT)


def requests(settings, batch_id: str) -> list[RetrainRequest]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(RetrainRequest).where(RetrainRequest.batch_id == batch_id)))


def reports(settings, batch_id: str) -> list[DriftReport]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(DriftReport).where(DriftReport.batch_id == batch_id)))


@pytest.fixture(scope="module")
def drift(spec, loop, tmp_path_factory):
    """Two unlabelled batches in the loop home, each checked once against the champion."""
    folder = tmp_path_factory.mktemp("drift")
    results = {}
    for batch_id, frame in (("same", more_2015(1500)), ("shifted", shifted(more_2015(3000)))):
        path = folder / f"{batch_id}.parquet"
        frame.to_parquet(path, index=False)
        ingest_batch(spec, str(path), batch_id, loop.settings)
        results[batch_id] = detect_drift(spec, batch_id, loop.settings)
    return SimpleNamespace(settings=loop.settings, version=loop.contender.version, **results)


@pytest.mark.parametrize("batch_id", ["same", "shifted"])
def test_reports_are_written_and_recorded(drift, batch_id):
    result = getattr(drift, batch_id)
    json_path, html_path = Path(result.json_uri), Path(result.html_uri)
    assert json_path.parent == drift.settings.partition("reports", "census_employment", batch_id)
    assert json.loads(json_path.read_text())["metrics"]
    assert "<html" in html_path.read_text()[:5000].lower()
    [row] = reports(drift.settings, batch_id)
    assert (row.model_version, row.json_uri, row.html_uri) == (
        drift.version, result.json_uri, result.html_uri)
    assert (row.drift_share, row.dataset_drift) == (result.drift_share, result.dataset_drift)
    assert row.drifted_columns == result.drifted_columns


def test_a_shifted_batch_drifts_and_files_a_retrain_request(drift):
    result = drift.shifted
    assert result.dataset_drift is True and result.drift_share >= 0.5
    assert {"AGEP", "SEX", "MAR"} <= set(result.drifted_columns)
    [request] = [r for r in requests(drift.settings, "shifted")
                 if r.id == result.retrain_request_id]
    assert (request.trigger, request.state) == ("drift", "pending")
    assert request.problem == "census_employment" and "AGEP" in request.reason


def test_a_same_distribution_batch_files_no_request(drift):
    result = drift.same
    assert result.dataset_drift is False and result.drift_share < 0.5
    assert result.retrain_request_id is None
    assert requests(drift.settings, "same") == []


def test_rerunning_keeps_one_report_per_batch_and_version(spec, drift):
    detect_drift(spec, "same", drift.settings)
    assert len(reports(drift.settings, "same")) == 1


def test_rerunning_on_a_drifting_batch_files_no_second_request(spec, drift):
    before = len(requests(drift.settings, "shifted"))
    again = detect_drift(spec, "shifted", drift.settings)
    assert again.dataset_drift and len(reports(drift.settings, "shifted")) == 1
    assert len(requests(drift.settings, "shifted")) == before


def test_drift_report_on_in_memory_frames(spec, slices):
    reference = curate(pd.read_parquet(slices[2015]), spec)
    same = summarize(drift_report(reference, reference.copy(), spec), spec)
    assert same == (0.0, [])
    moved = summarize(drift_report(reference, curate(shifted(pd.read_parquet(slices[2016])),
                                                         spec), spec), spec)
    assert moved[0] >= 0.5 and {"AGEP", "SEX"} <= set(moved[1])


def test_monitoring_without_a_champion_is_not_found(spec, slices, sqlite_settings):
    ingest_batch(spec, str(slices[2015]), "2015", sqlite_settings)
    with pytest.raises(ModelNotFound, match="no champion"):
        detect_drift(spec, "2015", sqlite_settings)


def test_close_retrain_requests_answers_every_pending_one(spec, sqlite_settings):
    with session_scope(sqlite_settings.db_url) as s:
        s.add_all([RetrainRequest(problem=spec.name, trigger="drift", reason="a"),
                   RetrainRequest(problem=spec.name, trigger="manual", reason="b"),
                   RetrainRequest(problem="other", trigger="drift", reason="c")])
    assert close_retrain_requests(spec.name, 4, sqlite_settings.db_url) == 2
    with session_scope(sqlite_settings.db_url) as s:
        rows = {r.reason: (r.state, r.resolved_by_version) for r in s.scalars(
            select(RetrainRequest))}
    assert rows == {"a": ("trained", 4), "b": ("trained", 4), "c": ("pending", None)}
    assert close_retrain_requests(spec.name, 5, sqlite_settings.db_url) == 0
