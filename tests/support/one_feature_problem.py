"""The smallest problem spec the stages accept: entities ``thing`` keyed by ``id``, a timestamp
``at``, one numeric feature ``size``, a binary target ``y`` ("yes"), one logistic regression.
For the fault tests that write their own files (keys, cross-batch duplicates)."""

from __future__ import annotations

from typing import Any

import yaml

from mlcore.problems import ProblemSpec

SPEC = """
entity: {name: thing, key: id}
event_time: {column: at, kind: timestamp}
target: {name: y, kind: binary, positive: "yes"}
features:
  - {name: size, kind: numeric, min: 0}
algorithms:
  lr: {estimator: sklearn.linear_model.LogisticRegression, preprocessing: one_hot}
promotion: {min_metric: 0.5}
validation: {max_bad_row_share: 0.5}
"""


def one_feature_data(name: str, dtype: str, **changes: Any) -> dict[str, Any]:
    """The spec named ``name`` with entity keys of ``dtype``, top-level sections replaced by
    ``changes``, as the YAML's data (not validated)."""
    data = {"name": name, **yaml.safe_load(SPEC)}
    data["entity"]["dtype"] = dtype
    data.update(changes)
    return data


def one_feature_spec(name: str, dtype: str, **changes: Any) -> ProblemSpec:
    """``one_feature_data(name, dtype, **changes)``, validated."""
    return ProblemSpec.model_validate(one_feature_data(name, dtype, **changes))
