"""``mlcore problem draft`` on each shipped dataset gives a spec that runs the loop unchanged on
the file it was drawn from: ingest (nothing quarantined), features, train, evaluate, promote,
score, drift, labels and performance, and the champion reproduces bit for bit."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = 3000
DATASETS = {  # name: (data folder, target, key, time)
    "census_draft": ("census_ma_employment", "employed", "id", "year"),
    "cards_draft": ("credit_card_segment", "y_true", "id", "timestamp"),
    "cars_draft": ("used_car_price", "price", "id", "timestamp"),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_drafted_spec_runs_the_loop_on_its_own_file(name, tmp_path, capsys, monkeypatch):
    from mlcore.cli import main
    from mlcore.config import Settings, TrainConfig, get_settings
    from mlcore.datasets import build_dataset
    from mlcore.feast.store import apply_definitions
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.labels import ingest_labels, measure_performance
    from mlcore.model.registry import move_alias
    from mlcore.monitoring import detect_drift
    from mlcore.problems import load_problem_file
    from mlcore.promotion import evaluate_contender
    from mlcore.scoring import score_batch
    from mlcore.store.session import upgrade
    from mlcore.training import reproduce_version, train_contender

    folder, target, key, time = DATASETS[name]
    sample = tmp_path / "sample.parquet"
    source = sorted((ROOT / "data" / folder).glob("*.parquet"))[0]
    pd.read_parquet(source).head(ROWS).to_parquet(sample, index=False)
    problems = tmp_path / "problems"
    problems.mkdir()
    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "cli-home"))
    # mlcore.features exports the settings' problems dir for Feast's repo parsing: restore the
    # process-wide one afterwards, or later DAG runs would see only this draft
    monkeypatch.setenv("MLCORE_PROBLEMS_DIR", os.environ["MLCORE_PROBLEMS_DIR"])
    get_settings.cache_clear()
    code = main(["problem", "draft", str(sample), "--target", target, "--key", key,
                 "--time", time, "--name", name, "--out", str(problems / f"{name}.yaml")])
    get_settings.cache_clear()
    assert code == 0, capsys.readouterr().err
    spec = load_problem_file(problems / f"{name}.yaml")  # loads unchanged

    settings = Settings(home=tmp_path / "home", problems_dir=problems,
                        feature_repo=ROOT / "feature_repo")
    settings.home.mkdir()
    upgrade(settings.db_url)
    apply_definitions(settings)
    manifest = ingest_batch(spec, str(sample), "b1", settings)
    assert (manifest.published_rows, manifest.quarantine_count) == (ROWS, 0)
    materialize_batch(spec, "b1", settings)
    dataset = build_dataset(spec, settings)
    contender = train_contender(spec, dataset, TrainConfig(algorithm="auto"), settings)
    decision = evaluate_contender(spec, dataset, contender.version, settings)
    assert decision["outcome"] == "promote", decision["reason"]  # clears the drafted floor
    move_alias(spec.name, expected=None, new=contender.version, reason="draft e2e",
               url=settings.db_url, actor="tests")
    assert score_batch(spec, "b1", settings).rows == ROWS
    assert detect_drift(spec, "b1", settings).drift_share < 0.5  # its own training data
    ingest_labels(spec, str(sample), "b1", settings)
    [perf] = measure_performance(spec, "b1", settings)
    assert perf.value is not None and math.isfinite(perf.value)
    assert reproduce_version(spec, contender.version, settings).verified
