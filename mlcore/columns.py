"""Typed columns: how each declared column kind is read from a raw batch (vectorized), and how
labels and categories are matched against a declared vocabulary whatever their scalar type.

Matching is by a canonical text key (``label_key``): ``"Organic"`` stays ``"Organic"``, ``3`` and
``3.0`` are ``"3"``, ``True`` is ``"true"``. A vocabulary of booleans (what YAML makes of
``yes``/``no``/``true``/``false``) also matches the text forms of a boolean (``parse_bool``).
Each distinct value is keyed once (``factorize``), so a 1M-row string column costs one hash
pass, not a Python call per row (a categorical column none: its codes are used as they are).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from mlcore.spec_columns import label_key

TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE_TEXT = frozenset({"false", "f", "no", "n", "0", "0.0"})


def factorize(col: pd.Series) -> tuple[np.ndarray, Any]:
    """(codes, distinct values) with -1 for missing, like ``pd.factorize``; a categorical column
    (what parquet's dictionary-encoded text becomes) gives its own codes and categories with no
    hash pass. Lookup tables indexed by the codes get one extra last entry for the -1."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return np.asarray(col.array.codes), col.cat.categories
    return pd.factorize(col, use_na_sentinel=True)


def _bool_key(value: Any) -> str | None:
    key = label_key(value).lower()
    return "true" if key in TRUE_TEXT else "false" if key in FALSE_TEXT else None


def parse_bool(col: pd.Series) -> pd.Series:
    """``True``/``False`` per row (object dtype), None where missing or not a boolean's form."""
    if pd.api.types.is_bool_dtype(col.dtype) and not col.hasnans:
        return col.astype(object)
    codes, uniques = factorize(col)
    mapped = np.array([{"true": True, "false": False}.get(_bool_key(u) or "", None)
                       for u in uniques] + [None], dtype=object)
    return pd.Series(mapped[codes], index=col.index, dtype=object)


def vocabulary_codes(col: pd.Series, vocabulary: list[Any] | tuple[Any, ...]) -> np.ndarray:
    """Each row's position in ``vocabulary`` (float64), NaN where missing or not in it."""
    codes, uniques = factorize(col)
    lookup = np.array(_codes_of(list(uniques), vocabulary) + [np.nan], dtype="float64")
    return lookup[codes]


def missing(col: pd.Series) -> np.ndarray:
    """True where a value is missing (None, NaN, NaT, or empty/blank text)."""
    out = col.isna().to_numpy()
    if col.dtype == object or isinstance(col.dtype, pd.StringDtype):
        codes, uniques = factorize(col)
        blank = np.array([isinstance(u, str) and not u.strip() for u in uniques] + [False])
        out = out | blank[codes]
    return out


def vocabulary_check(col: pd.Series, vocabulary: list[Any] | tuple[Any, ...]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(``vocabulary_codes``, ``missing``) of one column from a single hash pass."""
    codes, uniques = factorize(col)
    found = _codes_of(list(uniques), vocabulary)
    blank = [isinstance(u, str) and not u.strip() for u in uniques]
    lookup = np.array(found + [np.nan], dtype="float64")
    absent = np.array(blank + [True])
    return lookup[codes], absent[codes]


def _codes_of(values: list[Any], vocabulary: list[Any] | tuple[Any, ...]) -> list[float]:
    keys = {label_key(v): i for i, v in enumerate(vocabulary)}
    if all(isinstance(v, bool) for v in vocabulary):
        found = [keys.get(k) if (k := _bool_key(u)) else None for u in values]
    else:
        found = [keys.get(label_key(u)) for u in values]
    return [np.nan if f is None else float(f) for f in found]


def parse_timestamp(col: pd.Series) -> pd.Series:
    """UTC timestamps (naive values are UTC), NaT where missing or not ISO 8601."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return col.dt.tz_localize("UTC")
    return pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")


def time_part(stamps: pd.Series, part: str) -> np.ndarray:
    """One calendar part of UTC timestamps as float64 (NaN where NaT)."""
    dt = stamps.dt
    values = {"year": dt.year, "month": dt.month, "day": dt.day, "day_of_week": dt.dayofweek,
              "day_of_year": dt.dayofyear, "hour": dt.hour, "minute": dt.minute,
              "is_weekend": dt.dayofweek >= 5}[part]
    return values.astype("float64").to_numpy()


def category_values(col: pd.Series, vocabulary: list[Any] | tuple[Any, ...],
                    value_type: str) -> pd.Series:
    """Values as the vocabulary's type (``int``/``str``/``bool``) for storage: the vocabulary's
    own value where a row matches one, else the row's own value in that type (None where it has
    none: missing, or not a value of the type). Each distinct value is converted once."""
    codes, uniques = factorize(col)
    table = np.array(_typed_uniques(list(uniques), vocabulary, value_type) + [None], dtype=object)
    return pd.Series(table[codes], index=col.index, dtype=object)


def category_array(col: pd.Series, vocabulary: list[Any] | tuple[Any, ...],
                   value_type: str, arrow_type: Any) -> Any:
    """``category_values`` as an Arrow array, built from the distinct values and their codes
    (no Python object per row): text as a dictionary array, other types decoded in C++."""
    import pyarrow as pa

    codes, uniques = factorize(col)
    dictionary = pa.array(_typed_uniques(list(uniques), vocabulary, value_type), arrow_type)
    indices = pa.array(codes.astype("int64", copy=False), mask=codes < 0)  # one type per file
    coded = pa.DictionaryArray.from_arrays(indices, dictionary)
    # text stays dictionary-encoded (parquet writes it as such; read back as plain text when
    # the file does not store the Arrow schema); other types are decoded
    return coded if value_type == "str" else coded.dictionary_decode()


def _typed_uniques(values: list[Any], vocabulary: list[Any] | tuple[Any, ...],
                   value_type: str) -> list[Any]:
    keys = {label_key(v): v for v in vocabulary}
    as_bool = value_type == "bool"
    out = []
    for u in values:
        key = _bool_key(u) if as_bool else label_key(u)
        out.append(keys[key] if key in keys else _as_type(u, value_type))
    return out


def _as_type(value: Any, value_type: str) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if value_type == "str":
        return label_key(value)
    if value_type == "bool":
        key = _bool_key(value)
        return None if key is None else key == "true"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None
