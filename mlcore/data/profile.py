"""A sample file's columns, profiled: the entity key's dtype, the event time's kind, each
other column's kind with its vocabulary or range (what ``mlcore problem draft`` writes).

Every rule keeps every row of the sample valid under the drafted spec; the rules themselves
are listed in ``mlcore.draft``'s docstring. The target is profiled by
``mlcore.data.target_profile``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from mlcore.columns import missing, parse_timestamp
from mlcore.data.parsing import numeric
from mlcore.data.target_profile import (
    TargetDraft,
    draft_target,
    plain_values,
    short_number,
    sort_key,
)
from mlcore.problems import NAME_PATTERN
from mlcore.spec_columns import label_key

MARGIN = 0.1  # numeric bounds: widened by this share of the seen range on each side
MAX_INT_CATEGORIES = 20  # integer columns with at most this many values ...
MAX_INT_CATEGORY_SHARE = 0.05  # ... and at most this share of the rows are categorical
MAX_VOCABULARY = 200  # text with more distinct values is left out (free text, IDs) ...
MAX_TEXT_DISTINCT_SHARE = 0.5  # ... and so is text with over 20 values, most of them unique
MAX_SLICE_VALUES = 10  # a slice guardrail / drift segment column has at most this many values
FEATURE_TIME_PARTS = ("hour", "day_of_week", "month")
EVENT_TIME_PARTS = ("hour", "day_of_week")
DATE_TEXT = re.compile(r"^\s*\d{4}-\d{2}-\d{2}")
YEAR_RANGE = (1678, 2261)  # what pandas timestamps hold (and so what year_end accepts)


@dataclass(frozen=True)
class FeatureDraft:
    """One feature as drafted, with what the YAML comment says about it."""

    name: str
    kind: str  # numeric, categorical, boolean or timestamp
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    parts: tuple[str, ...] | None = None
    distinct: int = 0  # distinct values seen
    balance: float = 0.0  # share of the rarest value (categorical, boolean): slice choice
    note: str = ""


@dataclass(frozen=True)
class Profile:
    """What ``profile_frame`` read off a sample: everything the draft is made of."""

    name: str
    source: str
    rows: int
    columns: int
    key: str
    key_dtype: str
    time: str
    time_kind: str
    target: TargetDraft
    features: tuple[FeatureDraft, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (column, why it is left out)
    time_note: str = ""


def profile_frame(df: pd.DataFrame, *, target: str, key: str, time: str, name: str,
                  source: str = "the sample") -> Profile:
    """Read a sample frame: roles checked, every other column's kind, the target's kind.

    Raises:
        ValueError: a role is not a column (or two roles share one), the name is invalid, the
            key or time has missing or unusable values, the key repeats within a time, the
            target has fewer than two labels, or no column is left as a feature.
    """
    _check_roles(df, target=target, key=key, time=time)
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"problem name {name!r} must match {NAME_PATTERN} (pass --name)")
    key_dtype = _key_dtype(df[key], key)
    time_kind, stamps = _event_time(df[time], time)
    _check_unique(df[key], stamps, key, time)
    features, skipped = _features(df, roles={key, target, time})
    time_note = _time_note(time, time_kind)
    if time_kind == "timestamp":
        taken = {str(c) for c in df.columns}
        parts = _varying_parts(stamps, EVENT_TIME_PARTS, time, taken)
        if parts:
            features.append(FeatureDraft(time, "timestamp", parts=parts, note=(
                f"the event time: {', '.join(parts)} (the cycles within a batch)")))
        else:
            time_note += " Neither its hour nor its day of week varies: it is no feature."
    if not features:
        raise ValueError("no feature columns: every column is the key, the time, the target or "
                         f"left out ({', '.join(f'{c}: {why}' for c, why in skipped)})")
    return Profile(name=name, source=source, rows=len(df), columns=len(df.columns), key=key,
                   key_dtype=key_dtype, time=time, time_kind=time_kind,
                   target=draft_target(df[target], target), features=tuple(features),
                   skipped=tuple(skipped), time_note=time_note)


def _check_roles(df: pd.DataFrame, *, target: str, key: str, time: str) -> None:
    columns = [str(c) for c in df.columns]
    for flag, column in (("--target", target), ("--key", key), ("--time", time)):
        if column not in columns:
            raise ValueError(f"{flag} column {column!r} is not a column of the sample "
                             f"(columns: {', '.join(columns)})")
    if len({target, key, time}) < 3:
        raise ValueError(f"--target {target!r}, --key {key!r} and --time {time!r} must be three "
                         "different columns")
    if df.empty:
        raise ValueError("the sample has no rows")


def _each_distinct(col: pd.Series, fn: Any) -> pd.Series:
    """``col.map(fn)`` computed once per distinct value (a 1M-row column: one hash pass)."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    table = np.array([fn(u) for u in uniques] + [None], dtype=object)
    return pd.Series(table[codes], index=col.index, dtype=object)


def _key_dtype(col: pd.Series, key: str) -> str:
    """``int64`` when the key column holds integers, else ``string``."""
    if (n := int(missing(col).sum())) > 0:
        raise ValueError(f"key column {key!r} has {n} missing values: every row needs its key")
    values = plain_values(col)
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    if inferred == "integer":
        return "int64"
    if inferred == "floating" and bool((values == values.round()).all()):
        return "int64"
    return "string"


def _event_time(col: pd.Series, time: str) -> tuple[str, pd.Series]:
    """The time column's kind and its parsed UTC times (as validation parses them)."""
    if (n := int(missing(col).sum())) > 0:
        raise ValueError(f"time column {time!r} has {n} missing values: every row needs its time")
    if not pd.api.types.is_datetime64_any_dtype(col.dtype):
        years = numeric(col)
        if bool(((years == years.round()) & years.between(*YEAR_RANGE)).all()):
            text = years.astype("int64").astype(str) + "-12-31"
            return "year_end", pd.to_datetime(text, utc=True)
    try:
        stamps = pd.to_datetime(plain_values(col), errors="coerce", utc=True, format="ISO8601")
    except (TypeError, ValueError):  # e.g. bools: not times at all
        stamps = pd.Series(pd.NaT, index=col.index, dtype="datetime64[ns, UTC]")
    if bool(stamps.isna().any()):
        example = col[stamps.isna()].iloc[0]
        raise ValueError(f"time column {time!r} holds neither ISO 8601 timestamps nor plain "
                         f"years {YEAR_RANGE[0]}..{YEAR_RANGE[1]} (e.g. {example!r})")
    return "timestamp", stamps


def _check_unique(keys: pd.Series, stamps: pd.Series, key: str, time: str) -> None:
    """Refuse a key that repeats within the same time (validation quarantines such rows)."""
    pairs = pd.DataFrame({"key": _each_distinct(keys, label_key).to_numpy(),
                          "time": stamps.to_numpy()})
    dup = pairs.duplicated(keep=False).to_numpy()
    if dup.any():
        first = pairs[dup].iloc[0]
        raise ValueError(f"key column {key!r} has duplicates within the same time ({time!r}): "
                         f"{int(dup.sum())} rows, e.g. {key}={first['key']} at "
                         f"{pd.Timestamp(first['time']).isoformat()}")


def _time_note(time: str, kind: str) -> str:
    if kind == "year_end":
        return (f"`{time}` holds plain years: a row counts as known at the end of its year "
                f"(<{time}>-12-31T00:00:00Z). A year is constant within a batch: no feature.")
    return (f"`{time}` holds timestamps (ISO 8601 text or a timestamp column; naive = UTC).")


def _features(df: pd.DataFrame, roles: set[str]) -> tuple[list[FeatureDraft],
                                                          list[tuple[str, str]]]:
    """Every non-role column as a feature, or left out with the reason."""
    features: list[FeatureDraft] = []
    skipped: list[tuple[str, str]] = []
    for column in df.columns:
        if str(column) in roles:
            continue
        drafted = _feature(df[column], str(column), len(df))
        if isinstance(drafted, str):
            skipped.append((str(column), drafted))
        else:
            features.append(drafted)
    return features, skipped


def _feature(col: pd.Series, name: str, rows: int) -> FeatureDraft | str:
    """One column's draft (nullable where a value is missing), or why it is left out."""
    absent = missing(col)
    present = plain_values(col[~absent])
    if present.empty:
        return "every value is missing"
    drafted = _feature_kind(col, present, name, rows, nullable=bool(absent.any()))
    if isinstance(drafted, FeatureDraft) and drafted.nullable:
        drafted = replace(drafted, note=f"{drafted.note}; {int(absent.sum())} missing")
    return drafted


def _feature_kind(col: pd.Series, present: pd.Series, name: str, rows: int,
                  nullable: bool) -> FeatureDraft | str:
    """The kind of a column from its present values (see the module doc)."""
    inferred = pd.api.types.infer_dtype(present, skipna=True)
    if inferred == "boolean":
        return _boolean(present.astype(bool), name, nullable)
    if inferred in ("datetime64", "datetime", "date"):
        return _timestamp(present, name, nullable, "timestamps")
    if inferred == "integer":
        many = present.nunique() > min(MAX_INT_CATEGORIES, MAX_INT_CATEGORY_SHARE * rows)
        if many and not isinstance(col.dtype, pd.CategoricalDtype):
            return _numeric(present, name, nullable)
        note = ("" if isinstance(col.dtype, pd.CategoricalDtype) else
                "integer codes with few values, read as categories; review: make it numeric "
                "if it is a quantity")
        return _categorical(_each_distinct(present, int), name, nullable, note)
    if inferred in ("floating", "mixed-integer-float", "decimal"):
        return _numeric(present, name, nullable)
    if inferred == "string":
        return _text_column(present, name, nullable)
    return _categorical(_each_distinct(present, label_key), name, nullable,
                        "mixed types, read as text")


def _text_column(present: pd.Series, name: str, nullable: bool) -> FeatureDraft | str:
    """A text column: true/false text, ISO 8601 dates, or categories."""
    text = _each_distinct(present, label_key)
    uniques = pd.unique(text)
    if {u.lower() for u in uniques} <= {"true", "false"}:
        return _boolean(text.str.lower() == "true", name, nullable)
    if all(DATE_TEXT.match(u) for u in uniques) and parse_timestamp(present).notna().all():
        return _timestamp(present, name, nullable, "ISO 8601 text")
    if len(uniques) > MAX_VOCABULARY or (len(uniques) > MAX_INT_CATEGORIES
                                         and len(uniques) > MAX_TEXT_DISTINCT_SHARE * len(text)):
        return f"{len(uniques)} distinct text values in {len(text)} rows: free text or an ID?"
    return _categorical(text, name, nullable, "")


def _boolean(flags: pd.Series, name: str, nullable: bool) -> FeatureDraft:
    share = float(flags.mean())
    return FeatureDraft(name, "boolean", nullable, distinct=int(flags.nunique()),
                        balance=min(share, 1 - share), note=f"true in {share:.1%} of rows")


def _timestamp(present: pd.Series, name: str, nullable: bool, what: str) -> FeatureDraft:
    stamps = parse_timestamp(present)
    parts = _varying_parts(stamps, FEATURE_TIME_PARTS, name, set()) or FEATURE_TIME_PARTS
    return FeatureDraft(name, "timestamp", nullable, parts=parts,
                        note=f"{what}; parts: {', '.join(parts)} (constant ones dropped)")


def _varying_parts(stamps: pd.Series, parts: tuple[str, ...], name: str,
                   taken: set[str]) -> tuple[str, ...]:
    """Those of ``parts`` that vary among ``stamps`` and name no existing column."""
    dt = stamps.dt
    values = {"hour": dt.hour, "day_of_week": dt.dayofweek, "month": dt.month}
    return tuple(p for p in parts
                 if values[p].nunique() > 1 and f"{name}_{p}" not in taken)


def _numeric(present: pd.Series, name: str, nullable: bool) -> FeatureDraft:
    values = numeric(present).to_numpy()
    finite = values[np.isfinite(values)]
    if not len(finite):
        return FeatureDraft(name, "numeric", nullable, note="no finite value seen: no bounds")
    lo, hi = float(finite.min()), float(finite.max())
    low, high = widen(lo, hi)
    return FeatureDraft(name, "numeric", nullable, min=low, max=high,
                        distinct=int(pd.Series(finite).nunique()),
                        note=f"seen {short_number(lo)} .. {short_number(hi)}")


def widen(lo: float, hi: float) -> tuple[float | int, float | int]:
    """Bounds around a seen range: widened by ``MARGIN`` of it on each side (of the value when
    the range is empty), rounded outwards to the margin's order of magnitude (ints when that is
    1 or more); the lower bound is 0 when ``lo >= 0`` (a non-negative quantity)."""
    margin = MARGIN * (hi - lo) if hi > lo else MARGIN * max(abs(hi), 1.0)
    power = math.floor(math.log10(margin))
    step = 10.0 ** power
    low, high = math.floor((lo - margin) / step) * step, math.ceil((hi + margin) / step) * step
    if power >= 0:
        return (0 if lo >= 0 else int(low)), int(high)
    return (0 if lo >= 0 else round(low, -power)), round(high, -power)


def _categorical(values: pd.Series, name: str, nullable: bool, note: str) -> FeatureDraft:
    """Categories from plain values (int or text), the vocabulary sorted."""
    counts = values.value_counts()
    vocabulary = tuple(sorted(counts.index.tolist(), key=sort_key))
    balance = float(counts.min() / counts.sum())
    head = f"{len(vocabulary)} value{'s' if len(vocabulary) != 1 else ''} seen"
    return FeatureDraft(name, "categorical", nullable, values=vocabulary,
                        distinct=len(vocabulary), balance=balance,
                        note=f"{head}; {note}" if note else head)


def slice_column(features: tuple[FeatureDraft, ...]) -> str | None:
    """The categorical (or boolean) feature with 2..``MAX_SLICE_VALUES`` values whose rarest
    value is most common (the best-balanced split), for slice guardrails and drift segments."""
    fits = [f for f in features if f.kind in ("categorical", "boolean")
            and 2 <= f.distinct <= MAX_SLICE_VALUES]
    return max(fits, key=lambda f: (f.balance, -f.distinct)).name if fits else None
