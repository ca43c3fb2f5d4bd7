"""Reporting: the read-side summary of a problem, as data and as text."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mlcore.batches import BatchRejected
from mlcore.ingestion import ingest_batch
from mlcore.reporting import batches, format_summary, summary


def test_summary_of_the_loop(spec, loop):
    data = summary(spec.name, loop.settings)
    json.dumps(data, default=str)  # plain data
    assert data["champion"] == loop.contender.version
    published = {b["batch_id"] for b in data["batches"] if b["state"] == "published"}
    assert {"2015", "2016", "2017"} <= published
    assert loop.contender.version in [m["version"] for m in data["models"]]
    assert data["alias_history"][0]["to"] == loop.contender.version

    text = format_summary(data)
    assert f"Champion: v{loop.contender.version}" in text
    assert "2015" in text and "logistic_regression" in text


def test_batches_lists_every_state_in_ingestion_order(spec, slices, sqlite_settings, tmp_path):
    ingest_batch(spec, str(slices[2016]), "b", sqlite_settings)
    bad = tmp_path / "bad.parquet"
    pd.read_parquet(slices[2015]).drop(columns=["id"]).to_parquet(bad, index=False)
    with pytest.raises(BatchRejected):
        ingest_batch(spec, str(bad), "a", sqlite_settings)
    rows = batches(spec.name, sqlite_settings.db_url)
    assert [(r["batch_id"], r["state"], r["rows"]) for r in rows] == [
        ("b", "published", 1500), ("a", "rejected", 1500)]


def test_an_empty_problem_summarizes_without_error(spec, sqlite_settings):
    data = summary(spec.name, sqlite_settings)
    assert (data["batches"], data["models"], data["champion"]) == ([], [], None)
    assert "Batchloop summary: census_employment" in format_summary(data)


def test_the_text_report_without_a_champion_does_not_print_vnone(spec, sqlite_settings):
    assert "vNone" not in format_summary(summary(spec.name, sqlite_settings))
