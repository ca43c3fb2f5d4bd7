"""Monitoring with ``MLCORE_HOME=s3://bucket/prefix`` against a real S3 API server (moto's
standalone server, its own process): the drift of the 2016 census batch against an S3-trained
champion equals a folder home's, and the JSON/HTML reports are objects under
``<home>/reports/problem=<p>/batch=<id>/`` whose URIs are the ones recorded; the monitoring page
and its JSON are objects under ``<home>/reports/problem=<p>/`` linking to them relatively."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3Server, folder_home, s3_home, s3_server
from sqlalchemy import select

from mlcore.config import Settings, TrainConfig
from mlcore.datasets import build_dataset
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.registry import move_alias
from mlcore.monitoring import detect_drift
from mlcore.reporting import summary
from mlcore.reports.monitoring_page import write_monitoring_page
from mlcore.store.models import DriftReport
from mlcore.store.session import session_scope
from mlcore.training import train_contender

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig(algorithm="logistic_regression")


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def s3_settings(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """An S3 home (a fresh prefix), a SQLite store and Feast's embedded state outside it."""
    return s3_home(server, monkeypatch, tmp_path, feast_local=True, chdir=True)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return folder_home(tmp_path)


def champion(spec, slices, settings: Settings) -> int:
    """2015 + 2016 ingested and materialized, a contender trained and made champion."""
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
        materialize_batch(spec, str(year), settings)
    contender = train_contender(spec, build_dataset(spec, settings), CFG, settings)
    move_alias(spec.name, expected=None, new=contender.version, reason="t",
               url=settings.db_url, actor="tests", settings=settings)
    return contender.version


def test_drift_on_s3_matches_a_folder_home_and_reports_go_to_the_bucket(
        s3_settings, local_settings, spec, slices, tmp_path):
    v3 = champion(spec, slices, s3_settings)
    champion(spec, slices, local_settings)
    got = detect_drift(spec, "2016", s3_settings)
    want = detect_drift(spec, "2016", local_settings)
    # the same verdict: share, per-feature flags and scores, prediction drift
    assert (got.drift_share, got.drifted_columns, got.dataset_drift, got.prediction_drift) == (
        want.drift_share, want.drifted_columns, want.dataset_drift, want.prediction_drift)
    assert {c: (v["drift"], v["score"]) for c, v in got.details["columns"].items()} == {
        c: (v["drift"], v["score"]) for c, v in want.details["columns"].items()}
    assert got.details["rows"] == want.details["rows"]
    assert got.details["reference"]["sha256"] == want.details["reference"]["sha256"]
    # the reports: objects under <home>/reports/problem=<p>/batch=2016/, the URIs recorded
    home = s3_settings.store_home()
    base = home.uri("reports", f"problem={spec.name}", "batch=2016")
    assert (got.json_uri, got.html_uri) == (f"{base}/drift_v{v3}.json",
                                            f"{base}/drift_v{v3}.html")
    assert home.exists(got.json_uri) and home.exists(got.html_uri)
    report = json.loads(home.open(got.json_uri).read())
    assert report["drift_share"] == got.drift_share
    assert b"<html" in home.open(got.html_uri).read().lower()
    with session_scope(s3_settings.db_url) as s:
        row = s.scalars(select(DriftReport).where(DriftReport.batch_id == "2016")).one()
        assert (row.json_uri, row.html_uri) == (got.json_uri, got.html_uri)
    assert sorted(home.find(base)) == sorted([got.json_uri, got.html_uri])
    # a re-run writes the same keys again, nothing else; no staging, no "s3:" folder
    again = detect_drift(spec, "2016", s3_settings)
    assert (again.json_uri, again.drift_share) == (got.json_uri, got.drift_share)
    assert sorted(home.find(base)) == sorted([got.json_uri, got.html_uri])
    # the monitoring page: objects beside the reports, linking to them relatively
    page = write_monitoring_page(spec.name, s3_settings)
    prefix = home.uri("reports", f"problem={spec.name}")
    assert (page.path, page.json_path) == (f"{prefix}/monitoring.html",
                                           f"{prefix}/monitoring.json")
    data = json.loads(home.open(page.json_path).read())
    row16 = next(b for b in data["batches"] if b["batch_id"] == "2016")
    assert row16["drift"]["report_href"] == f"batch=2016/drift_v{v3}.html"
    html = home.open(page.path).read()
    assert len(html) == page.bytes and b"batch=2016/drift_v" in html
    assert summary(spec.name, s3_settings)["home"] == s3_settings.home_uri
    made = [p for p in tmp_path.rglob("s3:*")] + [p for p in Path.cwd().glob("s3:*")]
    assert not made, made
    assert not list(Path(tempfile.gettempdir()).glob(f"mlcore-report-{os.getpid()}-*"))


CARD = {"problem": "census_employment", "evaluation_id": 4,
        "target": {"kind": "binary", "classes": ["0", "1"]}, "outcome": "reject",
        "promote": False, "reason": "r", "metric": {"name": "roc_auc", "direction": "maximize"},
        "contender": {"version": 2, "algorithm": "logistic_regression",
                      "metrics": {"roc_auc": 0.8}},
        "champion": None, "slices": [], "guardrails": []}


def test_an_evaluation_run_card_goes_to_the_bucket(s3_settings, local_settings, tmp_path):
    """``write_evaluation_card``: the folder home's files, byte for byte, as objects under
    ``<home>/reports/problem=<p>/evaluation=<id>/``; nothing staged left."""
    from mlcore.reports.runcard import write_evaluation_card

    got = write_evaluation_card(CARD, s3_settings, "census_employment", 4)
    want = write_evaluation_card(CARD, local_settings, "census_employment", 4)
    assert want.html_path == (local_settings.home / "reports" / "problem=census_employment"
                              / "evaluation=4" / "run_card.html")
    home = s3_settings.store_home()
    base = home.uri("reports", "problem=census_employment", "evaluation=4")
    assert (got.html_path, got.json_path) == (f"{base}/run_card.html", f"{base}/run_card.json")
    assert home.open(str(got.html_path)).read() == Path(want.html_path).read_bytes()
    assert home.open(str(got.json_path)).read() == Path(want.json_path).read_bytes()
    assert got.bytes == want.bytes
    made = [p for p in tmp_path.rglob("s3:*")] + [p for p in Path.cwd().glob("s3:*")]
    assert not made, made
    assert not list(Path(tempfile.gettempdir()).glob(f"mlcore-report-{os.getpid()}-*"))
