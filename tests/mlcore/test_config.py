"""Settings from ``MLCORE_*`` and the frozen run configs built from DAG Params."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mlcore.config import IngestConfig, Settings, TrainConfig, get_settings


def test_settings_default_to_sqlite_under_home(tmp_path):
    s = Settings(home=tmp_path)
    assert s.db_url == f"sqlite:///{tmp_path / 'mlcore.db'}"
    assert Settings(home=tmp_path, database_url="postgresql://h/db").db_url == "postgresql://h/db"


@pytest.mark.parametrize("area, batch_id, tail", [
    ("curated", "2015", "curated/problem=p/batch=2015"),
    ("features", None, "features/problem=p"),
])
def test_partition_layout(tmp_path, area, batch_id, tail):
    assert Settings(home=tmp_path).partition(area, "p", batch_id) == tmp_path / tail


def test_get_settings_reads_the_environment_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "a"))
    get_settings.cache_clear()
    try:
        assert get_settings().home == tmp_path / "a"
        monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "b"))
        assert get_settings().home == tmp_path / "a"  # cached: resolved at first use
        get_settings.cache_clear()
        assert get_settings().home == tmp_path / "b"
    finally:
        get_settings.cache_clear()


def test_settings_are_frozen(tmp_path):
    with pytest.raises(ValidationError):
        Settings(home=tmp_path).home = Path("/elsewhere")  # type: ignore[misc]


def test_from_params_keeps_own_fields_and_drops_none():
    cfg = TrainConfig.from_params({"algorithm": "logistic_regression", "random_state": 3,
                                   "until_batch": None, "batch_id": "ignored", "other": 1})
    assert (cfg.algorithm, cfg.random_state, cfg.until_batch) == ("logistic_regression", 3, None)
    assert TrainConfig.from_params(None) == TrainConfig()


@pytest.mark.parametrize("model, params", [
    (TrainConfig, {"validation_fraction": 0.5}),
    (TrainConfig, {"validation_fraction": 0.0}),
    (TrainConfig, {"random_state": -1}),
    (TrainConfig, {"max_train_rows": 99}),
    (TrainConfig, {"until_batch": "x" * 65}),
    (IngestConfig, {"source": "s"}),
    (IngestConfig, {"batch_id": "", "source": "s"}),
    (IngestConfig, {"batch_id": "b"}),
])
def test_from_params_rechecks_bounds(model, params):
    with pytest.raises(ValidationError):
        model.from_params(params)


def test_run_configs_are_frozen():
    cfg = IngestConfig.from_params({"batch_id": "2015", "source": "s"})
    with pytest.raises(ValidationError):
        cfg.batch_id = "2016"  # type: ignore[misc]
