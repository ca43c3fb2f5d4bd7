"""Fixtures of the mlcore unit tests: fresh SQLite homes, and one small loop shared read-mostly.

The ``loop`` home is expensive (Feast apply, materialization, a fit), so it is built once per
session. Tests that use it only add rows keyed by their own batch IDs, never change what others
read: synthetic batches added there carry no target, so they never enter a training set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]

# One OpenMP thread: on a busy 2-core box, HistGradientBoosting's spinning OpenMP workers turn a
# 0.2 s fit into a minute. Set before any test module imports scikit-learn.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _make_settings(base: Path):
    from mlcore.config import Settings
    from mlcore.store.session import upgrade

    home = base / "home"
    home.mkdir(parents=True)
    settings = Settings(home=home, problems_dir=ROOT / "problems",
                        feature_repo=ROOT / "feature_repo")
    upgrade(settings.db_url)
    return settings


@pytest.fixture(scope="session")
def settings_factory(tmp_path_factory) -> Callable[[str], object]:
    """Make a migrated SQLite ``Settings`` over a new temporary home (for module fixtures)."""
    return lambda name: _make_settings(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def loop(settings_factory, spec, slices):
    """2015-2017 ingested and materialized, dataset built (holdout 2017), a champion promoted."""
    from mlcore.config import TrainConfig
    from mlcore.datasets import build_dataset
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.registry import move_alias
    from mlcore.training import train_contender

    settings = settings_factory("loop")
    manifests = {y: ingest_batch(spec, str(slices[y]), str(y), settings)
                 for y in (2015, 2016, 2017)}
    for year in manifests:
        materialize_batch(spec, str(year), settings)
    dataset = build_dataset(spec, settings)
    contender = train_contender(spec, dataset, TrainConfig(algorithm="logistic_regression"),
                                settings)
    move_alias(spec.name, expected=None, new=contender.version, reason="first model",
               url=settings.db_url, actor="tests")
    return SimpleNamespace(settings=settings, manifests=manifests, dataset=dataset,
                           contender=contender)
