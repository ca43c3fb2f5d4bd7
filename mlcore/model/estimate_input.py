"""What a batch's performance estimate needs of its scored rows, kept a piece at a time: scoring
streams a batch in pieces and never holds all its rows, so it feeds each piece's features and
model outputs here (``EstimateInput.add``) and ``mlcore.estimation`` estimates from what was
kept. Memory is bounded by a piece plus, for a classifier, the outputs of at most
``MAX_EXPANDED_ROWS / 2`` rows (the estimate's own sample).

The estimate is the one ``PerformanceEstimator.estimate`` gives on the whole batch:
- classifiers (CBPE) read only the outputs, of every row up to ``MAX_EXPANDED_ROWS / (2 x
  classes)`` rows and above that of a seeded sample of rows. The sample is drawn here as the
  estimator draws it (the same generator, seed, population and size; row positions sorted), so
  the kept outputs are the very rows it would keep and the value is the same bit for bit;
- regression (DLE) is the mean of every row's predicted loss: the losses are predicted per piece
  (the fitted estimator is needed from the first piece on) and summed. In one piece the value is
  the same bit for bit; in several, the sum's rounding differs (relative error ~1e-16).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from mlcore.model import performance
from mlcore.model.performance import DLE_LOSSES, SEED, PerformanceEstimator

Fitted = tuple[PerformanceEstimator, str]  # the estimator and its cache key


class EstimateInput:
    """A batch's scored rows, fed in row order, reduced to what its estimate needs.

    Args:
        kind, metric: the problem's target kind and metric.
        features: the model's feature columns (DLE's loss model reads them).
        rows: the batch's rows (the sample is drawn over them before the first piece).
        fit: the version's fitted estimator (and cache key); called at the first piece when the
            losses need it (regression), else by the caller when it estimates.

    ``add`` never raises: the first error (a failed fit, a failed loss prediction) is kept in
    ``error`` and nothing more is kept; ``value`` raises it.
    """

    def __init__(self, kind: str, metric: str, features: list[str], rows: int,
                 fit: Callable[[], Fitted]) -> None:
        self.kind, self.metric, self.features, self.rows = kind, metric, features, rows
        self.seed = SEED  # the estimator's (part of its cache key)
        self.fit = fit
        self.fitted: Fitted | None = None
        self.error: Exception | None = None
        self.seen = 0
        self.loss_sum = 0.0
        self._sample: np.ndarray | None = None  # row positions kept (None: every row)
        self._kept: list[np.ndarray] = []
        self._drawn = False
        # DLE with a loss to predict: every row's loss is needed (r2 is not estimated at all)
        self.losses = kind == "regression" and metric in DLE_LOSSES and rows > 0

    def add(self, frame: pd.DataFrame, outputs: np.ndarray) -> None:
        """Keep what the estimate needs of the next ``len(outputs)`` rows (``frame``: their
        features, ``outputs``: the model's outputs of them)."""
        n, at = len(outputs), self.seen
        self.seen += n
        if self.error is not None:
            return
        try:
            if self.kind != "regression":
                self._keep(outputs, at, n)
            elif self.losses and n:
                self._sum_losses(frame, outputs)
        except Exception as exc:  # noqa: BLE001 - kept; ``value`` raises it
            self.error = exc

    def _keep(self, outputs: np.ndarray, at: int, n: int) -> None:
        if not self._drawn:
            self._sample, self._drawn = sample_positions(
                self.rows, 1 if outputs.ndim == 1 else outputs.shape[1], self.seed), True
        if self._sample is None:
            self._kept.append(outputs)
            return
        lo, hi = np.searchsorted(self._sample, [at, at + n])
        self._kept.append(outputs[self._sample[lo:hi] - at])

    def _sum_losses(self, frame: pd.DataFrame, outputs: np.ndarray) -> None:
        if self.fitted is None:
            self.fitted = self.fit()
        estimator = self.fitted[0]
        # what ``PerformanceEstimator.estimate`` computes for regression, one piece at a time
        features = estimator._loss_features(frame[self.features], outputs)
        losses = np.clip(estimator.loss_model_.predict(features), 0, None)
        self.loss_sum += float(losses.sum())

    def value(self, estimator: PerformanceEstimator) -> float:
        """The estimated metric of the whole batch (``estimator`` fitted for it).

        Raises:
            Exception: the error ``add`` kept; ValueError when the pieces fed did not add up
                to ``rows`` or the estimator samples with another seed.
        """
        if self.error is not None:
            raise self.error
        if self.seen != self.rows:
            raise ValueError(f"{self.seen} rows were scored for an estimate of {self.rows}")
        if self.kind == "regression":
            mean = self.loss_sum / self.rows
            return math.sqrt(mean) if self.metric == "rmse" else mean
        if self._sample is not None and estimator.seed != self.seed:
            raise ValueError(f"the estimator samples with seed {estimator.seed}, not {self.seed}")
        kept = self._kept[0] if len(self._kept) == 1 else np.concatenate(self._kept)
        # at most the estimator's sample size: it uses these outputs as they are (classifiers
        # read no feature)
        return estimator.estimate(pd.DataFrame(index=pd.RangeIndex(len(kept))), kept)


def sample_positions(rows: int, width: int, seed: int) -> np.ndarray | None:
    """The sorted row positions ``PerformanceEstimator.estimate`` keeps of a batch of ``rows``
    rows and ``width`` output columns (None: every row), drawn as it draws them."""
    cap = performance.MAX_EXPANDED_ROWS
    if rows * width * 2 <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, cap // (2 * width), replace=False))
