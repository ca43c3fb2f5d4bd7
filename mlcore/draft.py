"""Draft a problem spec from a sample file (``mlcore problem draft FILE --target --key --time``).

Three pure steps: ``profile_frame`` reads a frame into a ``Profile`` (each column's kind and
vocabulary or range, the target's kind and a naive baseline), ``spec_dict`` turns that into the
data of a spec, ``render_yaml`` into commented YAML that reads like ``problems/*.yaml``.
``draft_yaml`` runs all three and checks that the text loads back to the same spec.
``read_sample`` is the one I/O helper; the CLI reads the file and writes the draft.

How columns are read (each rule keeps every row of the sample valid under the draft):

* entity key: ``int64`` when the key column holds integers, else ``string``;
* event time: ``year_end`` when the column holds plain years (never a feature: a year is constant
  within a batch); ``timestamp`` for ISO 8601 text or a timestamp column. A timestamp event time
  is also a feature, with those of ``hour`` and ``day_of_week`` that vary in the sample: the
  cycles a batch spans. Not ``month`` or ``year``: near-constant within a batch, they would only
  extrapolate on later batches;
* boolean: bool columns, and text of only true/false. timestamp: timestamp columns and ISO 8601
  date text, parts ``hour``, ``day_of_week``, ``month`` (those constant in the sample dropped);
* categorical: pandas category columns, integer columns with few distinct values (at most 20 and
  at most 5 % of the rows), other text. The vocabulary is every value seen, sorted, in its own
  type (text quoted, so YAML never reads ``"yes"`` or ``"on"`` as a boolean). Text with more than
  200 distinct values, or more than 20 that are over half of its rows (free text, IDs), is left
  out (then ``validation.extra_columns: ignore``);
* numeric: other numbers (float columns stay numeric even when whole). Bounds: the seen range
  widened by 10 % of it on each side, rounded outwards; ``min: 0`` when every seen value is >= 0;
* ``nullable: true`` wherever a value was missing (None, NaN, blank text).

The target: two distinct labels are ``binary`` (``positive`` 1/true/yes when present, else the
minority label); up to 20 labels that are not floats ``multiclass`` (text labels: any number);
otherwise numbers are ``regression``. The promotion floor is a naive baseline on the sample.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mlcore.columns import missing, parse_timestamp
from mlcore.data.parsing import numeric
from mlcore.problems import NAME_PATTERN, ProblemSpec
from mlcore.spec_columns import label_key
from mlcore.spec_rules import DEFAULT_METRIC, METRICS_BY_KIND

MARGIN = 0.1  # numeric bounds: widened by this share of the seen range on each side
MAX_INT_CATEGORIES = 20  # integer columns with at most this many values ...
MAX_INT_CATEGORY_SHARE = 0.05  # ... and at most this share of the rows are categorical
MAX_CLASSES = 20  # a numeric target with more labels than this is a regression
MAX_VOCABULARY = 200  # text with more distinct values is left out (free text, IDs) ...
MAX_TEXT_DISTINCT_SHARE = 0.5  # ... and so is text with over 20 values, most of them unique
MAX_SLICE_VALUES = 10  # a slice guardrail / drift segment column has at most this many values
BINARY_FLOOR = 0.55  # roc_auc floor: a little better than chance
FEATURE_TIME_PARTS = ("hour", "day_of_week", "month")
EVENT_TIME_PARTS = ("hour", "day_of_week")
POSITIVE_TEXT = ("1", "true", "yes")
DATE_TEXT = re.compile(r"^\s*\d{4}-\d{2}-\d{2}")
YEAR_RANGE = (1678, 2261)  # what pandas timestamps hold (and so what year_end accepts)
NOTE_COLUMN = 26  # trailing comments start here when the line is shorter


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
class TargetDraft:
    """The target as drafted, with its naive baseline on the sample."""

    name: str
    kind: str  # binary, multiclass or regression
    positive: Any = None
    classes: tuple[Any, ...] | None = None
    baseline: float = 0.0  # the promotion floor: roc_auc, log_loss or rmse
    missing: int = 0  # rows without a label
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


def read_sample(path: Path) -> pd.DataFrame:
    """The sample as ingestion reads it (parquet, or CSV with pandas' default parsing).

    Raises:
        ValueError: not a parquet or CSV file, or not readable as one (the message names it).
    """
    if path.suffix.lower() not in {".parquet", ".pq", ".csv"}:
        raise ValueError(f"{path}: unsupported file type {path.suffix or '(none)'!r} "
                         "(parquet or csv)")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow, OSError, parser errors: all mean "unreadable"
        kind = "CSV" if path.suffix.lower() == ".csv" else "parquet"
        raise ValueError(f"{path} is not a readable {kind} file "
                         f"({type(exc).__name__}: {exc})") from exc


def default_name(path: Path | str) -> str:
    """The file stem made a valid problem name (``^[a-z][a-z0-9_]{0,47}$``)."""
    stem = re.sub(r"[^a-z0-9]+", "_", Path(path).stem.lower()).strip("_")
    stem = re.sub(r"^[^a-z]+", "", stem)
    return (stem or "problem")[:48].rstrip("_") or "problem"


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
                   target=_target(df[target], target), features=tuple(features),
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


def _plain(col: pd.Series) -> pd.Series:
    """A category column as its values (object); other columns unchanged."""
    return col.astype(object) if isinstance(col.dtype, pd.CategoricalDtype) else col


def _each_distinct(col: pd.Series, fn: Any) -> pd.Series:
    """``col.map(fn)`` computed once per distinct value (a 1M-row column: one hash pass)."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    table = np.array([fn(u) for u in uniques] + [None], dtype=object)
    return pd.Series(table[codes], index=col.index, dtype=object)


def _key_dtype(col: pd.Series, key: str) -> str:
    """``int64`` when the key column holds integers, else ``string``."""
    if (n := int(missing(col).sum())) > 0:
        raise ValueError(f"key column {key!r} has {n} missing values: every row needs its key")
    values = _plain(col)
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
        stamps = pd.to_datetime(_plain(col), errors="coerce", utc=True, format="ISO8601")
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
    present = _plain(col[~absent])
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
                        note=f"seen {_short(lo)} .. {_short(hi)}")


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
    vocabulary = tuple(sorted(counts.index.tolist(), key=_sort_key))
    balance = float(counts.min() / counts.sum())
    head = f"{len(vocabulary)} value{'s' if len(vocabulary) != 1 else ''} seen"
    return FeatureDraft(name, "categorical", nullable, values=vocabulary,
                        distinct=len(vocabulary), balance=balance,
                        note=f"{head}; {note}" if note else head)


def _sort_key(value: Any) -> tuple[int, float, str]:
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


def _target(col: pd.Series, name: str) -> TargetDraft:
    """The target's kind from its labels: two → binary, a few non-floats → multiclass, else
    numbers → regression (text: multiclass, however many)."""
    absent = missing(col)
    present = _plain(col[~absent])
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
    classes = tuple(sorted((labels[k] for k in counts.index), key=_sort_key))
    return TargetDraft(name, "binary", positive=labels[positive], classes=classes,
                       baseline=BINARY_FLOOR, missing=lost, note=f"review: {why}")


def _multiclass(name: str, counts: pd.Series, labels: dict[str, Any], lost: int) -> TargetDraft:
    prior = counts.to_numpy(dtype="float64") / counts.sum()
    entropy = float(-(prior * np.log(prior)).sum())
    classes = tuple(sorted((labels[k] for k in counts.index), key=_sort_key))
    note = (f"{len(classes)} labels seen" if len(classes) <= MAX_CLASSES else
            f"{len(classes)} text labels seen; review: that many classes need much data")
    return TargetDraft(name, "multiclass", classes=classes, baseline=round(entropy, 4),
                       missing=lost, note=note)


def _regression(name: str, present: pd.Series, lost: int) -> TargetDraft:
    values = numeric(present).to_numpy()
    finite = values[np.isfinite(values)]
    std = float(finite.std()) if len(finite) else 0.0
    return TargetDraft(name, "regression", baseline=_significant(std, 4), missing=lost,
                       note=f"{pd.Series(finite).nunique()} distinct numbers, "
                            f"{_short(float(finite.min()))} .. {_short(float(finite.max()))}")


def _short(x: float) -> str:
    """A number for a comment: whole numbers as such, others to 4 significant digits (one
    decimal from 1000 on)."""
    if abs(x) < 1e15 and x == int(x):
        return str(int(x))
    return f"{x:.1f}" if 1000 <= abs(x) < 1e15 else f"{x:.4g}"


def _significant(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def slice_column(features: tuple[FeatureDraft, ...]) -> str | None:
    """The categorical (or boolean) feature with 2..``MAX_SLICE_VALUES`` values whose rarest
    value is most common (the best-balanced split), for slice guardrails and drift segments."""
    fits = [f for f in features if f.kind in ("categorical", "boolean")
            and 2 <= f.distinct <= MAX_SLICE_VALUES]
    return max(fits, key=lambda f: (f.balance, -f.distinct)).name if fits else None


CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {
        "logistic_regression": {
            "estimator": "sklearn.linear_model.LogisticRegression", "preprocessing": "one_hot",
            "params": {"max_iter": 500}, "search": {"C": [0.1, 1.0]}},
        "hist_gradient_boosting": {
            "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
            "preprocessing": "ordinal", "params": {"max_iter": 200, "max_leaf_nodes": 31},
            "search": {"learning_rate": [0.05, 0.1]}},
    },
    "regression": {
        "ridge": {"estimator": "sklearn.linear_model.Ridge", "preprocessing": "one_hot",
                  "search": {"alpha": [0.1, 1.0, 10.0]}},
        "hist_gradient_boosting": {
            "estimator": "sklearn.ensemble.HistGradientBoostingRegressor",
            "preprocessing": "ordinal", "params": {"max_iter": 200, "max_leaf_nodes": 31},
            "search": {"learning_rate": [0.05, 0.1]}},
    },
}
STAGES_WITH_DEADLINES = ("ingest_batch", "materialize_features", "score_batch", "monitor_model",
                         "ingest_labels")


def spec_dict(p: Profile) -> dict[str, Any]:
    """The draft as spec data (``ProblemSpec.model_validate`` accepts it)."""
    kind = p.target.kind
    metric = DEFAULT_METRIC[kind]
    family = "regression" if kind == "regression" else "classification"
    tolerance = metric_tolerance(p.target)
    return {
        "name": p.name,
        "description": f"DRAFT from {p.source}: {kind} target {p.target.name}. Review it.",
        "entity": {"name": "record", "key": p.key, "dtype": p.key_dtype},
        "event_time": {"column": p.time, "kind": p.time_kind},
        "target": _target_dict(p.target),
        "features": [_feature_dict(f) for f in p.features],
        "feature_ttl_days": 400,
        "metric": {"name": metric, "direction": METRICS_BY_KIND[kind][metric]},
        "algorithms": {n: dict(c) for n, c in CANDIDATES[family].items()},
        "promotion": _promotion(p, tolerance),
        "validation": {"max_bad_row_share": 0.05, "critical_rules": ["event_time_in_future"],
                       "extra_columns": "ignore" if p.skipped else "reject",
                       "max_future_seconds": 0},
        "drift": {"drift_share": 0.5, "sample_rows": 50000, "numeric_threshold": 0.1,
                  "categorical_threshold": 0.1, "prediction_threshold": 0.1,
                  "segments": [s] if (s := slice_column(p.features)) else [],
                  "budget_seconds": 300},
        "labels": {"maturity_days": 0, "min_rows": 500},
        "retrain": {"cooldown_days": 7, "performance_drop": tolerance, "lease_hours": 6,
                    "shadow_promotion": False},
        "alerts": {"deadline_minutes": {s: 60 for s in STAGES_WITH_DEADLINES}},
    }


def metric_tolerance(t: TargetDraft) -> float:
    """A change of the metric worth acting on (slice guardrail bound, retrain's
    ``performance_drop``): 0.05 for classification metrics, 5 % of the target's standard
    deviation (the rmse floor) for regression."""
    return 0.05 if t.kind != "regression" else max(_significant(0.05 * t.baseline, 2), 1e-9)


def _target_dict(t: TargetDraft) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "kind": t.kind}
    if t.positive is not None:
        out["positive"] = t.positive
    if t.classes is not None:
        out["classes"] = list(t.classes)
    return out


def _feature_dict(f: FeatureDraft) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name, "kind": f.kind}
    if f.min is not None:
        out["min"] = f.min
    if f.max is not None:
        out["max"] = f.max
    if f.values is not None:
        out["values"] = list(f.values)
    if f.parts is not None:
        out["parts"] = list(f.parts)
    if f.nullable:
        out["nullable"] = True
    return out


def _promotion(p: Profile, tolerance: float) -> dict[str, Any]:
    column = slice_column(p.features)
    return {"min_metric": p.target.baseline, "min_improvement": 0.0,
            "non_inferiority_margin": 0.0, "confidence": 0.95, "bootstrap_samples": 1000,
            "seed": 0,
            "guardrails": {"slices": {column: tolerance} if column else {},
                           "min_slice_rows": 500, "min_rows_per_second": 1000},
            "require_approval": False}


# ---- YAML text -------------------------------------------------------------------------------

PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
FLOW_KEYS = {"params", "search", "slices"}  # nested mappings written on one line


def _number(x: float | int) -> str:
    """A number as YAML 1.1 reads it back as the same number (floats keep a dot)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    text = repr(float(x))
    mantissa, _, exponent = text.partition("e")
    if exponent and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def _text(value: str, quote: bool = False) -> str:
    """Text plain when YAML reads it back as itself (and ``quote`` is off), else double-quoted."""
    if not quote and PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return yaml.safe_dump(value, default_style='"', width=1 << 30).strip()


def _flow(value: Any, quote: bool = False) -> str:
    """One value in YAML flow style."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_text(str(k))}: {_flow(v, quote)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v, quote) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, str):
        return _text(value, quote)
    return _number(value)


def _note(line: str, note: str | None) -> str:
    """``line`` with a trailing comment (aligned like the hand-written specs)."""
    if not note:
        return line
    return f"{line.ljust(NOTE_COLUMN)} # {note}" if len(line) < NOTE_COLUMN else \
        f"{line}  # {note}"


def _comment(text: str, indent: str = "") -> list[str]:
    """``text`` as comment lines of at most 100 characters."""
    return textwrap.wrap(text, width=100, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)


def _block(key: str, value: Any, indent: int, path: str, notes: dict[str, str]) -> list[str]:
    """``key: value`` in block style (nested mappings too, but params/search/slices in flow
    style), each line with its note from ``notes`` (by dotted path)."""
    pad, where = "  " * indent, f"{path}{key}"
    if isinstance(value, dict) and value and key not in FLOW_KEYS:
        lines = [_note(f"{pad}{_text(key)}:", notes.get(where))]
        for k, v in value.items():
            lines += _block(str(k), v, indent + 1, f"{where}.", notes)
        return lines
    quote = key in ("positive", "classes")
    return [_note(f"{pad}{_text(key)}: {_flow(value, quote)}", notes.get(where))]


def _feature_tokens(feature: dict[str, Any]) -> list[str]:
    """A feature's flow mapping cut where a line may break (between entries and values)."""
    tokens: list[str] = []
    for k, v in feature.items():
        if k == "values":
            items = [_flow(x, quote=True) for x in v]
            items[0], items[-1] = f"values: [{items[0]}", f"{items[-1]}]"
            tokens += items if len(items) > 1 else [f"{items[0]}]"]
        else:
            tokens.append(f"{k}: {_flow(v)}")
    tokens[0], tokens[-1] = "{" + tokens[0], tokens[-1] + "}"
    return tokens


def _feature_lines(feature: dict[str, Any], width: int = 100) -> list[str]:
    """``  - {name: ..., kind: ...}``, wrapped at ``width`` (continuations indented)."""
    lines, line = [], "  - "
    for i, token in enumerate(_feature_tokens(feature)):
        piece = token if i == 0 else f", {token}"
        if i and len(line) + len(piece) + 1 > width:
            lines.append(line + ",")
            line = "     " + token
        else:
            line += piece
    return [*lines, line]


def _notes(p: Profile, spec: dict[str, Any]) -> dict[str, str]:
    """Trailing comments, by dotted path."""
    t, slices = p.target, spec["promotion"]["guardrails"]["slices"]
    notes = {
        "entity.name": "review: what one row is about (a person, an application, a sale)",
        "entity.dtype": ("the key holds integers" if p.key_dtype == "int64"
                         else "the key holds text"),
        f"target.{'positive' if t.kind == 'binary' else 'kind'}": t.note,
        "promotion.min_metric": "absolute floor: the naive baseline (see above)",
        "promotion.require_approval": "true: retrain_model waits for a human to approve",
        "drift.segments": "drift is also reported within each value of these columns",
        "retrain.performance_drop": "matured metric this far below the champion's holdout",
        "labels.maturity_days": "review: days until a row's label is final",
    }
    if slices:
        notes["promotion.guardrails.slices"] = "review: the slice column and its bound"
    if p.skipped:
        notes["validation.extra_columns"] = "the columns left out above are ignored"
    return notes


def _head_comments(p: Profile) -> dict[str, str]:
    """The comment paragraph above each section."""
    t, column = p.target, slice_column(p.features)
    return {
        "event_time": p.time_note,
        "target": _target_comment(t),
        "features": _features_comment(p),
        "validation": ("When a batch is rejected as a whole instead of publishing its valid "
                       "rows. An event time in the future means a broken export: critical."),
        "metric": f"The {t.kind} default metric (the direction is implied by the name).",
        "algorithms": ("Candidates from the library in mlcore/spec_rules.py: fixed `params` and a "
                       "small `search` grid tried on a validation slice; the run's seed sets "
                       "random_state. Linear models get one-hot categories, trees ordinal "
                       "codes."),
        "promotion": _promotion_comment(t, column),
        "drift": ("Drift of each batch against the champion's reference profile, judged by "
                  "effect size. " + (f"Segments: {column}, the best-balanced low-cardinality "
                                     "column; review." if column else "No segment column: "
                                     "no categorical has 2..10 values.")),
        "labels": "Ground truth arrives after scoring: review maturity_days for your labels.",
        "retrain": ("No schedule: a retrain is requested on drift, on a drop of the matured "
                    "metric, or by hand. Review: add `schedule: \"0 6 * * 1\"` (cron, on data "
                    "time) to retrain weekly, or `new_data_rows`."),
        "alerts": ("A run of a stage still unfinished this many minutes after it was queued "
                   "pages on-call (RUNBOOK.md). Review for your batch sizes."),
    }


def _target_comment(t: TargetDraft) -> str:
    text = {"binary": f"Two labels: binary. positive: {_flow(t.positive, True)} is the label "
                      "whose probability the model scores; review it.",
            "multiclass": "A few labels that are not floats: multiclass, classes as seen (a "
                          "later label outside them is a quarantined row).",
            "regression": "Many numbers: regression."}[t.kind]
    if t.missing:
        text += (f" {t.missing} rows of the sample have no label: validation quarantines them "
                 "(ingest such rows unlabelled, without the target column).")
    return text


def _features_comment(p: Profile) -> str:
    text = ("Kinds as read from the sample; review each. numeric: the seen range widened by "
            f"{MARGIN:.0%} of it on each side (min 0 when every value seen is >= 0); a value "
            "outside quarantines its row. categorical: every value seen; an unseen one "
            "quarantines its row (`unknown: other` lets it reach the model as an unknown "
            "category). nullable: missing values were seen (they are data, not bad rows).")
    if p.skipped:
        text += " Left out: " + "; ".join(f"{c} ({why})" for c, why in p.skipped) + "."
    return text


def _promotion_comment(t: TargetDraft, column: str | None) -> str:
    floor = {"binary": f"roc_auc {BINARY_FLOOR}, a little better than chance (0.5)",
             "multiclass": f"log_loss {t.baseline}, the loss of predicting the class prior "
                           "(its entropy on the sample): a model must do better",
             "regression": f"rmse {_number(t.baseline)}, the target's standard deviation on "
                           "the sample, what predicting the mean scores: a model must do "
                           "better"}[t.kind]
    slices = (f"Guardrail: no value of {column} may lose more than "
              f"{_number(metric_tolerance(t))} of the metric." if column else
              "No slice guardrail: no categorical has 2..10 values.")
    return (f"The blessing. Floor: {floor}. Review it: a useful model should clear it "
            f"clearly. {slices}")


def render_yaml(p: Profile, spec: dict[str, Any]) -> str:
    """The draft as commented YAML in the layout of ``problems/*.yaml``."""
    heads = _head_comments(p)
    notes = _notes(p, spec)
    out = [*_comment(f"DRAFT drawn by `mlcore problem draft` from {p.source} ({p.rows} rows, "
                     f"{p.columns} columns). Every value was read off that sample: review it "
                     "before use, above all the comments that say review. As written it loads, "
                     "and every row of the sample passes its validation."),
           f"name: {_text(spec['name'])}", f"description: {_flow(spec['description'])}", ""]
    for section, value in spec.items():
        if section in ("name", "description"):
            continue
        out += _comment(heads[section]) if section in heads else []
        if section == "features":
            out.append("features:")
            for f, d in zip(p.features, value, strict=True):
                out += _comment(f"{f.name}: {f.note}", "  ") if f.note else []
                out += _feature_lines(d)
        else:
            out += _block(section, value, 0, "", notes)
        out.append("")
    return "\n".join(out[:-1]) + "\n"


def draft_yaml(df: pd.DataFrame, *, target: str, key: str, time: str, name: str,
               source: str = "the sample") -> tuple[str, ProblemSpec]:
    """Profile ``df``, and write the draft: its YAML text and the spec it loads as.

    Raises:
        ValueError: as ``profile_frame``.
        RuntimeError: the text does not load back to the drafted spec (a bug here).
    """
    profile = profile_frame(df, target=target, key=key, time=time, name=name, source=source)
    data = spec_dict(profile)
    text = render_yaml(profile, data)
    spec = ProblemSpec.model_validate(data)
    loaded = ProblemSpec.model_validate(yaml.safe_load(text))
    if loaded.model_dump() != spec.model_dump():
        raise RuntimeError("the drafted YAML does not load back to the drafted spec")
    return text, spec
