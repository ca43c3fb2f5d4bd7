"""Training: the spec's candidate algorithms as scikit-learn pipelines; pick, fit, save, register.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from mlcore.batches import sha256_file
from mlcore.config import Settings, TrainConfig
from mlcore.datasets import DatasetRef, entity_bucket, load_part
from mlcore.evaluation import compute_metrics, predict_proba
from mlcore.problems import ProblemSpec


def _categories(spec: ProblemSpec) -> list[list[int]]:
    return [list(f.values or ()) for f in spec.features if f.kind == "categorical"]


def _logistic(spec: ProblemSpec, hp: dict[str, Any], seed: int) -> Pipeline:
    prep = ColumnTransformer([
        ("num", StandardScaler(), spec.numeric),
        ("cat", OneHotEncoder(categories=_categories(spec), handle_unknown="ignore"),
         spec.categorical),
    ])
    return Pipeline([("prep", prep), ("model", LogisticRegression(random_state=seed, **hp))])


def _hist_gb(spec: ProblemSpec, hp: dict[str, Any], seed: int) -> Pipeline:
    # Categories become 0..k-1 codes (unknown -> NaN, treated as missing) for native splits.
    prep = ColumnTransformer([
        ("cat", OrdinalEncoder(categories=_categories(spec), handle_unknown="use_encoded_value",
                               unknown_value=np.nan), spec.categorical),
        ("num", "passthrough", spec.numeric),
    ])
    n_cat = len(spec.categorical)
    mask = [True] * n_cat + [False] * len(spec.numeric)
    model = HistGradientBoostingClassifier(categorical_features=mask, random_state=seed, **hp)
    return Pipeline([("prep", prep), ("model", model)])


ALGORITHMS: dict[str, Callable[[ProblemSpec, dict[str, Any], int], Pipeline]] = {
    "logistic_regression": _logistic,
    "hist_gradient_boosting": _hist_gb,
}


def build_pipeline(spec: ProblemSpec, algorithm: str, seed: int = 0) -> Pipeline:
    """An unfitted pipeline for one of the spec's candidate algorithms.

    Raises:
        ValueError: the algorithm is not a candidate of the spec, or not in the library.
    """
    if algorithm not in spec.algorithms:
        raise ValueError(f"algorithm {algorithm!r} is not a candidate of problem {spec.name!r} "
                         f"(candidates: {sorted(spec.algorithms)})")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not in the library ({sorted(ALGORITHMS)})")
    return ALGORITHMS[algorithm](spec, dict(spec.algorithms[algorithm]), seed)


@dataclass(frozen=True)
class TrainedModel:
    """A fitted pipeline and how it was chosen."""

    pipeline: Pipeline
    algorithm: str
    validation: dict[str, dict[str, float]]  # candidate -> metrics on the validation slice
    fit_seconds: float


def select_and_fit(spec: ProblemSpec, train: pd.DataFrame, cfg: TrainConfig) -> TrainedModel:
    """Fit every candidate on the fit slice, keep the best on the validation slice, refit on all.

    With ``cfg.algorithm`` set, only that candidate is fitted.
    """
    X, y = train[spec.feature_names], train[spec.target.name].to_numpy()
    candidates = sorted(spec.algorithms) if cfg.algorithm == "auto" else [cfg.algorithm]
    val = (entity_bucket(train[spec.entity.key], "validation")
           < round(cfg.validation_fraction * 100)).to_numpy()
    scores: dict[str, dict[str, float]] = {}
    for name in candidates:
        model = build_pipeline(spec, name, cfg.random_state).fit(X[~val], y[~val])
        scores[name] = compute_metrics(y[val], predict_proba(model, X[val]))
    sign = 1 if spec.metric.direction == "maximize" else -1
    best = max(candidates, key=lambda n: sign * scores[n][spec.metric.name])
    start = time.perf_counter()
    final = build_pipeline(spec, best, cfg.random_state).fit(X, y)
    return TrainedModel(final, best, scores, time.perf_counter() - start)


def save_artifact(pipeline: Pipeline, settings: Settings, problem: str) -> tuple[str, str]:
    """Dump the pipeline under a content-addressed path. Returns (uri, sha256)."""
    root = settings.home / "artifacts" / f"problem={problem}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".model-{time.time_ns()}.joblib"
    joblib.dump(pipeline, tmp)
    sha = sha256_file(tmp)
    dest = root / f"sha256={sha[:16]}" / "model.joblib"
    dest.parent.mkdir(exist_ok=True)
    tmp.replace(dest)
    return str(dest), sha


@dataclass(frozen=True)
class ContenderRef:
    """A trained, registered contender (small enough for XCom)."""

    problem: str
    version: int
    algorithm: str
    artifact_uri: str
    artifact_sha256: str
    validation: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def train_contender(spec: ProblemSpec, dataset: DatasetRef, cfg: TrainConfig,
                    settings: Settings) -> ContenderRef:
    """Train on the dataset's train part, save the artifact and register a new version."""
    from mlcore.monitoring import close_retrain_requests
    from mlcore.registry import register_version

    start = time.perf_counter()
    train = load_part(dataset.train_uri, dataset.train_hash)
    if len(train) > cfg.max_train_rows:
        train = train.sample(cfg.max_train_rows, random_state=cfg.random_state)
    trained = select_and_fit(spec, train, cfg)
    uri, sha = save_artifact(trained.pipeline, settings, spec.name)
    timings = {"fit_seconds": round(trained.fit_seconds, 3),
               "total_seconds": round(time.perf_counter() - start, 3)}
    version = register_version(
        spec, settings, algorithm=trained.algorithm, artifact_uri=uri, artifact_sha256=sha,
        hyperparameters={"algorithm": trained.algorithm, **spec.algorithms[trained.algorithm],
                         "random_state": cfg.random_state},
        dataset=dataset, train_rows=len(train), validation=trained.validation, timings=timings)
    close_retrain_requests(spec.name, version, settings.db_url)
    return ContenderRef(spec.name, version, trained.algorithm, uri, sha, trained.validation)


def spec_hash(spec: ProblemSpec) -> str:
    """SHA-256 of the spec as validated (what a model was trained under)."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


