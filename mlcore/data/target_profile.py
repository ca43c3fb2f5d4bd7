"""The target of a sample, profiled: its kind from its labels and a naive baseline on it.

Two distinct labels are ``binary`` (``positive`` 1/true/yes when present, else the minority
label); up to 20 labels that are not floats ``multiclass`` (text labels: any number); otherwise
numbers are ``regression``. The baseline (the promotion floor a draft proposes): a little
better than chance for roc_auc, the prior's entropy for log_loss, the label spread for rmse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlcore.columns import missing
from mlcore.data.parsing import numeric
from mlcore.spec_columns import label_key

MAX_CLASSES = 20  # a numeric target with more labels than this is a regression
BINARY_FLOOR = 0.55  # roc_auc floor: a little better than chance
POSITIVE_TEXT = ("1", "true", "yes")


@dataclass(frozen=True)
class TargetDraft:
    """The target as drafted, with its naive baseline on the sample."""

    name: str
    kind: str  # binary, multiclass or regression
    positive: Any = None
    classes: tuple[Any, ...] | None = None
    baseline: float = 0.0  # the promotion floor: roc_auc, log_loss or rmse
    missing: int = 0  # rows without a label
    note: str = ""


def plain_values(col: pd.Series) -> pd.Series:
    """A category column as its values (object); other columns unchanged."""
    return col.astype(object) if isinstance(col.dtype, pd.CategoricalDtype) else col


def sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers (and numeric text) by value first, then text."""
    try:
        return (0, float(value), str(value))
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _label(value: Any) -> bool | int | str:
    """A label as a spec writes it: bools and whole numbers as themselves, the rest as text."""
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value) and value == int(value):
        return int(value)
    return label_key(value)


def draft_target(col: pd.Series, name: str) -> TargetDraft:
    """The target's kind from its labels: two → binary, a few non-floats → multiclass, else
    numbers → regression (text: multiclass, however many)."""
    absent = missing(col)
    present = plain_values(col[~absent])
    codes, uniques = pd.factorize(present)
    keys = [label_key(u) for u in uniques]
    counts = pd.Series(np.bincount(codes, minlength=len(uniques)), index=keys).groupby(
        level=0).sum()
    labels = {k: _label(u) for k, u in zip(keys, uniques, strict=True)}
    if len(counts) < 2:
        raise ValueError(f"target column {name!r} has {len(counts)} distinct label(s): "
                         "nothing to predict")
    inferred = pd.api.types.infer_dtype(present, skipna=True)
    lost = int(absent.sum())
    if len(counts) == 2:
        return _binary(name, counts, labels, lost)
    is_number = inferred in ("integer", "floating", "mixed-integer-float", "decimal")
    if is_number and (inferred != "integer" or len(counts) > MAX_CLASSES):
        return _regression(name, present, lost)
    return _multiclass(name, counts, labels, lost)


def _binary(name: str, counts: pd.Series, labels: dict[str, Any], lost: int) -> TargetDraft:
    conventional = [k for k in counts.index if k.lower() in POSITIVE_TEXT]
    if conventional:
        positive, why = conventional[0], "the conventional positive label"
    else:
        positive = str(counts.sort_values(kind="stable").index[0])
        why = f"the minority label, {counts[positive] / counts.sum():.1%} of labelled rows"
    classes = tuple(sorted((labels[k] for k in counts.index), key=sort_key))
    return TargetDraft(name, "binary", positive=labels[positive], classes=classes,
                       baseline=BINARY_FLOOR, missing=lost, note=f"review: {why}")


def _multiclass(name: str, counts: pd.Series, labels: dict[str, Any], lost: int) -> TargetDraft:
    prior = counts.to_numpy(dtype="float64") / counts.sum()
    entropy = float(-(prior * np.log(prior)).sum())
    classes = tuple(sorted((labels[k] for k in counts.index), key=sort_key))
    note = (f"{len(classes)} labels seen" if len(classes) <= MAX_CLASSES else
            f"{len(classes)} text labels seen; review: that many classes need much data")
    return TargetDraft(name, "multiclass", classes=classes, baseline=round(entropy, 4),
                       missing=lost, note=note)


def _regression(name: str, present: pd.Series, lost: int) -> TargetDraft:
    values = numeric(present).to_numpy()
    finite = values[np.isfinite(values)]
    std = float(finite.std()) if len(finite) else 0.0
    return TargetDraft(name, "regression", baseline=significant(std, 4), missing=lost,
                       note=f"{pd.Series(finite).nunique()} distinct numbers, "
                            f"{short_number(float(finite.min()))} .. "
                            f"{short_number(float(finite.max()))}")


def short_number(x: float) -> str:
    """A number for a comment: whole numbers as such, others to 4 significant digits (one
    decimal from 1000 on)."""
    if abs(x) < 1e15 and x == int(x):
        return str(int(x))
    return f"{x:.1f}" if 1000 <= abs(x) < 1e15 else f"{x:.4g}"


def significant(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))
