"""Reference profiles (``mlcore.model.reference``): a seeded, bounded sample of the training
rows with the model's outputs, written atomically."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlcore.data.curation import curate
from mlcore.model.drift import PREDICTION, comparable
from mlcore.model.reference import write_reference_profile


class _Half:
    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        return np.full((len(X), 2), 0.5)


def test_reference_profile_is_a_seeded_bounded_sample(spec, slices, tmp_path):
    small = spec.model_copy(update={"drift": spec.drift.model_copy(update={"sample_rows": 100})})
    train = curate(pd.read_parquet(slices[2015]), spec)
    first = write_reference_profile(small, train, _Half(), tmp_path, seed=3)
    frame = pd.read_parquet(tmp_path / first["uri"])
    assert first["rows"] == len(frame) == 100 and set(frame[PREDICTION]) == {0.5}
    assert frame.drop(columns=PREDICTION).equals(comparable(  # text categories kept as text
        train[spec.feature_names].sample(100, random_state=3).reset_index(drop=True), spec))
    assert write_reference_profile(small, train, _Half(), tmp_path, seed=3) == first
    assert write_reference_profile(small, train, _Half(), tmp_path, seed=4)["sha256"] != (
        first["sha256"])
    assert [p.name for p in tmp_path.iterdir()] == ["reference.parquet"]  # no temp files left
