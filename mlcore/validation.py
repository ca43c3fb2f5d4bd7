"""Batch validation: whole-batch schema checks and row-level rules with reasons."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mlcore.batches import BatchRejected
from mlcore.problems import ProblemSpec


@dataclass(frozen=True)
class ValidationResult:
    """Rows that passed, and one (row_number, rule, reason) per rule a failing row broke."""

    valid: pd.DataFrame
    violations: pd.DataFrame  # columns: row_number, rule, reason

    @property
    def quarantined_rows(self) -> int:
        """How many distinct input rows were kept out."""
        return int(self.violations["row_number"].nunique())


def required_columns(spec: ProblemSpec) -> list[str]:
    """Columns every batch must carry (the target is optional: unlabelled batches are scored)."""
    return [spec.entity.key, spec.event_time.column, *spec.feature_names]


def check_schema(df: pd.DataFrame, spec: ProblemSpec, batch_id: str) -> None:
    """Reject the whole batch when a required column is missing or the batch is empty.

    Raises:
        BatchRejected: naming the batch and the missing columns.
    """
    missing = [c for c in required_columns(spec) if c not in df.columns]
    if missing:
        raise BatchRejected(f"batch {batch_id!r}: missing required columns {missing}")
    if df.empty:
        raise BatchRejected(f"batch {batch_id!r}: no rows")


def _event_time(col: pd.Series, spec: ProblemSpec) -> pd.Series:
    """Parsed event times, NaN/NaT where invalid (years must be whole and within pandas' range)."""
    if spec.event_time.kind == "timestamp":
        return pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
    year = pd.to_numeric(col.astype("object"), errors="coerce")
    return year.where((year == year.round()) & year.between(1678, 2261))


def _row_rules(df: pd.DataFrame, spec: ProblemSpec) -> dict[str, tuple[pd.Series, str]]:
    """Each rule as (mask of failing rows, reason). Vectorized: one pass per column."""
    raw_key = df[spec.entity.key]
    key = raw_key.astype("object")
    if spec.entity.dtype == "int64":
        key = pd.to_numeric(key, errors="coerce")
        key = key.where(key == key.round())  # 1.5 is not an int64 key
    rules: dict[str, tuple[pd.Series, str]] = {
        "entity_key_missing": (raw_key.isna(), f"{spec.entity.key} is null"),
        "entity_key_invalid": (key.isna() & raw_key.notna(),
                               f"{spec.entity.key} is not a valid {spec.entity.dtype}"),
        "entity_key_duplicate": (key.duplicated(keep=False) & key.notna(),
                                 f"{spec.entity.key} appears more than once in the batch"),
    }
    rules["event_time_invalid"] = (_event_time(df[spec.event_time.column], spec).isna(),
                                   f"{spec.event_time.column} is missing or invalid")
    for feat in spec.features:
        col = pd.to_numeric(df[feat.name].astype("object"), errors="coerce")
        if feat.kind == "categorical":
            bad = ~col.isin(list(feat.values or ()))
            rules[f"{feat.name}_not_allowed"] = (bad, f"{feat.name} not in its allowed values")
            continue
        lo = -float("inf") if feat.min is None else feat.min
        hi = float("inf") if feat.max is None else feat.max
        rules[f"{feat.name}_out_of_range"] = (col.isna() | (col < lo) | (col > hi),
                                             f"{feat.name} missing or outside [{lo}, {hi}]")
    if spec.target.name in df.columns:
        target = pd.to_numeric(df[spec.target.name].astype("object"), errors="coerce")
        rules["target_invalid"] = (~target.isin([0, 1]), f"{spec.target.name} is not 0 or 1")
    return rules


def validate_rows(df: pd.DataFrame, spec: ProblemSpec, batch_id: str) -> ValidationResult:
    """Split a batch into valid rows and row-level violations (row_number = 0-based input row).

    Raises:
        BatchRejected: the schema is wrong, or no row is valid.
    """
    check_schema(df, spec, batch_id)
    frames, bad_any = [], pd.Series(False, index=df.index)
    for rule, (mask, reason) in _row_rules(df, spec).items():
        mask = mask.fillna(True).astype(bool)
        if mask.any():
            rows = pd.Series(range(len(df)), index=df.index)[mask]
            frames.append(pd.DataFrame({"row_number": rows.to_numpy(), "rule": rule,
                                        "reason": reason}))
            bad_any |= mask
    violations = (pd.concat(frames, ignore_index=True) if frames
                  else pd.DataFrame({"row_number": [], "rule": [], "reason": []}))
    valid = df.loc[~bad_any]
    if valid.empty:
        raise BatchRejected(f"batch {batch_id!r}: every one of {len(df)} rows failed validation")
    return ValidationResult(valid=valid, violations=violations)
