"""Model-side preprocessing shared by every candidate: categories of any scalar type as codes of
the declared vocabulary, so one-hot and ordinal encodings (and native categorical splits) see
the same thing whether the data holds strings, ints or bools."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from mlcore.columns import vocabulary_codes


class CategoryCodes(TransformerMixin, BaseEstimator):
    """Each column as the position of its value in its vocabulary (float64); NaN where the value
    is missing or outside the vocabulary (``unknown: other``), which one-hot encodes as all zeros
    and HistGradientBoosting treats as missing.

    Args:
        vocabularies: one list of categories per input column, in column order.
    """

    def __init__(self, vocabularies: list[list[Any]] | None = None) -> None:
        self.vocabularies = vocabularies

    def fit(self, X: Any, y: Any = None) -> CategoryCodes:
        """Nothing is learnt: the vocabulary is declared."""
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The codes, shape (n_rows, n_columns)."""
        frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
        vocabularies = self.vocabularies or []
        if frame.shape[1] != len(vocabularies):
            raise ValueError(f"CategoryCodes: {frame.shape[1]} columns, "
                             f"{len(vocabularies)} vocabularies")
        out = np.empty(frame.shape, dtype="float64")
        for i, vocab in enumerate(vocabularies):
            out[:, i] = vocabulary_codes(frame.iloc[:, i], vocab)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Input names, unchanged."""
        return np.asarray(input_features if input_features is not None else
                          [f"x{i}" for i in range(len(self.vocabularies or []))], dtype=object)
