"""Batch validation: whole-batch schema checks, vectorized row rules with reasons, and the
accept/reject decision (bad-row share over the spec's tolerance, or a critical rule firing).

Plain pandas masks rather than pandera: every rule here is one vectorized expression whose
failing rows we need by position (for the quarantine table) and across chunks of a file
streamed in row groups (duplicates span chunks); pandera's lazy ``failure_cases`` gives the
first but would still need the chunking and the cross-chunk duplicate pass written by hand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from mlcore.batches import BatchRejected
from mlcore.columns import (
    category_values,
    missing,
    parse_bool,
    parse_timestamp,
    vocabulary_check,
)
from mlcore.data.parsing import FLOAT_EXACT, INT64_MAX, INT64_MIN, entity_keys, event_time, numeric
from mlcore.data.target_coding import TargetCoder, local_coder
from mlcore.problems import ProblemSpec
from mlcore.spec_columns import Feature

VIOLATION_COLUMNS = ["row_number", "rule", "reason"]


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
    return list(dict.fromkeys([spec.entity.key, spec.event_time.column, *spec.inputs]))


def check_columns(columns: list[str], spec: ProblemSpec, batch_id: str) -> None:
    """Reject the whole batch when a required column is missing or an undeclared one appears.

    Raises:
        BatchRejected: naming the batch and the columns.
    """
    missing = [c for c in required_columns(spec) if c not in columns]
    if missing:
        raise BatchRejected(f"batch {batch_id!r}: missing required columns {missing}")
    known = {*required_columns(spec), spec.target.name}
    extra = [c for c in columns if c not in known]
    if extra and spec.validation.extra_columns == "reject":
        raise BatchRejected(f"batch {batch_id!r}: undeclared columns {extra} (declare them in "
                            f"the problem spec or set validation.extra_columns: ignore)")


def check_schema(df: pd.DataFrame, spec: ProblemSpec, batch_id: str) -> None:
    """``check_columns`` plus: an empty batch is rejected.

    Raises:
        BatchRejected: naming the batch and the cause.
    """
    check_columns([str(c) for c in df.columns], spec, batch_id)
    if df.empty:
        raise BatchRejected(f"batch {batch_id!r}: no rows")


def key_reasons(raw: pd.Series, bad: np.ndarray, spec: ProblemSpec) -> pd.Series:
    """Why each ``bad`` (present but invalid) key is refused, naming its value."""
    name, reasons = spec.entity.key, pd.Series("", index=raw.index, dtype=object)
    values = raw.to_numpy(dtype=object)
    for i in np.flatnonzero(bad):
        value = values[i]
        why = f"is not a valid {spec.entity.dtype}"
        if spec.entity.dtype == "int64":
            text = str(value).strip()
            if isinstance(value, float | np.floating) and np.isfinite(value) \
                    and value == int(value):
                why = f"is a float beyond 2**53 ({FLOAT_EXACT}): not an exact integer"
            elif (body := text[1:] if text[:1] in "+-" else text).isascii() and body.isdigit():
                why = f"is outside the int64 range [{INT64_MIN}, {INT64_MAX}]"
            else:
                why = "is not an integer"
        reasons.iat[i] = f"{name} {value!r} {why}"
    return reasons


def duplicate_mask(keys: pd.Series, times: pd.Series) -> np.ndarray:
    """True for every row whose (entity, event time) appears more than once.

    Sorts int64 pairs instead of hashing Python objects (10M rows: ~1 GiB less memory).
    """
    valid = (keys.notna() & times.notna()).to_numpy()
    if keys.dtype == object:
        k = pd.factorize(keys)[0].astype("int64")
    else:  # int64 / nullable Int64 keys: exact, never via float64
        k = keys.to_numpy(dtype="int64", na_value=0)
    t = pd.DatetimeIndex(times).asi8
    idx = np.flatnonzero(valid)
    order = idx[np.lexsort((t[idx], k[idx]))]
    ks, ts = k[order], t[order]
    same = (ks[1:] == ks[:-1]) & (ts[1:] == ts[:-1])
    dup = np.zeros(len(keys), dtype=bool)
    dup[order[1:][same]] = True
    dup[order[:-1][same]] = True
    return dup


Rules = dict[str, tuple[pd.Series, str | pd.Series]]
PUBLISHED_RULE = "duplicate_in_published_batch"


def published_rule(df: pd.DataFrame, spec: ProblemSpec, published: np.ndarray) -> Rules:
    """Rows whose (key, event time) another published batch holds: ``published`` is that
    batch's ID per row (None where no batch holds it); the reason names the batch."""
    hit = pd.notna(published)
    reasons = pd.Series("", index=df.index, dtype=object)
    what = f"({spec.entity.key}, {spec.event_time.column})"
    reasons[hit] = [f"{what} already published in batch {b!r}" for b in published[hit]]
    return {PUBLISHED_RULE: (pd.Series(hit, index=df.index), reasons)}


def _row_rules(df: pd.DataFrame, spec: ProblemSpec, now: datetime, duplicates: np.ndarray | None,
               when: pd.Series | None, coder: TargetCoder | None = None,
               published: np.ndarray | None = None) -> Rules:
    """Each rule as (mask of failing rows, reason: one text, or one per row). Vectorized: one
    pass per column; per-row reasons only for the (few) invalid keys and rows another batch
    published (``published``: see ``published_rule``)."""
    raw_key = df[spec.entity.key]
    key = entity_keys(raw_key, spec)
    when = event_time(df[spec.event_time.column], spec) if when is None else when
    if duplicates is None:
        duplicates = duplicate_mask(key, when)
    horizon = pd.Timestamp(now) + pd.Timedelta(seconds=spec.validation.max_future_seconds)
    invalid = (key.isna() & raw_key.notna()).to_numpy(dtype=bool)
    rules: Rules = {
        "entity_key_missing": (raw_key.isna(), f"{spec.entity.key} is null"),
        "entity_key_invalid": (pd.Series(invalid, index=df.index),
                               key_reasons(raw_key, invalid, spec) if invalid.any() else ""),
        "duplicate_entity_event_time": (
            pd.Series(duplicates, index=df.index),
            f"({spec.entity.key}, {spec.event_time.column}) appears more than once in the batch"),
        "event_time_invalid": (when.isna(), f"{spec.event_time.column} is missing or invalid"),
        "event_time_in_future": (when > horizon, f"{spec.event_time.column} is after "
                                                 f"{horizon.isoformat()}"),
    }
    if published is not None:
        rules.update(published_rule(df, spec, published))
    for feat in spec.features:
        rules.update(feature_rules(df[feat.name], feat))
    if spec.target.name in df.columns:
        coder = coder or local_coder(spec, df[spec.target.name])
        codes = coder.encode(df[spec.target.name])
        rules["target_invalid"] = (pd.Series(np.isnan(codes), index=df.index),
                                   f"{spec.target.name} is missing or not {coder.describe()}")
    return rules


def describe_feature(feat: Feature) -> str:
    """What the spec declares for a column, in a few words (for error messages)."""
    if feat.kind == "numeric":
        lo = "-inf" if feat.min is None else f"{feat.min:g}"
        hi = "inf" if feat.max is None else f"{feat.max:g}"
        return f"{feat.name}: numeric in [{lo}, {hi}]" + (", nullable" if feat.nullable else "")
    if feat.kind == "categorical":
        values = list(feat.values or ())
        shown = ", ".join(repr(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        return f"{feat.name}: categorical of {feat.value_type} [{shown}]"
    return f"{feat.name}: {feat.kind}" + (", nullable" if feat.nullable else "")


def feature_rules(raw: pd.Series, feat: Feature) -> dict[str, tuple[pd.Series, str]]:
    """The row rules of one feature column, by its kind (masks of failing rows, reasons)."""
    name, index = feat.name, raw.index
    if feat.kind == "numeric":
        col = numeric(raw)
        finite = np.isfinite(col)
        bad = ~finite & ~pd.Series(missing(raw), index=index) if feat.nullable else ~finite
        lo = -np.inf if feat.min is None else feat.min
        hi = np.inf if feat.max is None else feat.max
        what = "NaN, inf or not a number" if feat.nullable else "missing, NaN, inf or not a number"
        return {f"{name}_not_finite": (bad, f"{name} is {what}"),
                f"{name}_out_of_range": (finite & ((col < lo) | (col > hi)),
                                         f"{name} outside [{lo}, {hi}]")}
    if feat.kind == "categorical":
        codes, absent = vocabulary_check(raw, feat.values or ())
        outside = np.isnan(codes) & ~absent
        if feat.unknown == "other":  # kept, but it must still be a value of the vocabulary's type
            outside &= pd.isna(category_values(raw, feat.values or (), feat.value_type)).to_numpy()
        bad = outside | (absent & (not feat.nullable))
        return {f"{name}_not_allowed": (pd.Series(bad, index=index),
                                        f"{name} {'' if feat.nullable else 'missing or '}not in "
                                        "its allowed values")}
    absent = missing(raw)
    valid = (parse_bool(raw).notna().to_numpy() if feat.kind == "boolean"
             else parse_timestamp(raw).notna().to_numpy())
    what = "a boolean (true/false, 1/0, yes/no)" if feat.kind == "boolean" else \
        "an ISO 8601 timestamp"
    rules = {f"{name}_invalid": (pd.Series(~valid & ~absent, index=index),
                                 f"{name} is not {what}")}
    if not feat.nullable:
        rules[f"{name}_missing"] = (pd.Series(absent, index=index), f"{name} is missing")
    return rules


def row_violations(df: pd.DataFrame, spec: ProblemSpec, now: datetime, offset: int = 0,
                   duplicates: np.ndarray | None = None, when: pd.Series | None = None,
                   coder: TargetCoder | None = None,
                   published: np.ndarray | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Bad-row mask and violations of one chunk; ``offset`` is the chunk's first row number.

    ``duplicates`` is the chunk's slice of a whole-file duplicate mask (None: this chunk only);
    ``when`` its parsed event times when the caller already has them; ``coder`` the problem's
    target coder (None: the spec's declared classes, or those of this chunk); ``published``
    per row the ID of another published batch holding its (key, event time), or None (the
    argument None: no cross-batch check).
    """
    frames, bad = [], np.zeros(len(df), dtype=bool)
    rules = _row_rules(df, spec, now, duplicates, when, coder, published)
    for rule, (mask, reason) in rules.items():
        values = np.asarray(mask)
        failing = values if values.dtype == bool else np.asarray(mask.fillna(True), dtype=bool)
        if failing.any():
            rows = np.flatnonzero(failing) + offset
            why = reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[failing]
            frames.append(pd.DataFrame({"row_number": rows, "rule": rule, "reason": why}))
            bad |= failing
    violations = (pd.concat(frames, ignore_index=True) if frames
                  else pd.DataFrame({c: [] for c in VIOLATION_COLUMNS}))
    return bad, violations


def rejection_reasons(spec: ProblemSpec, total_rows: int, bad_rows: int,
                      rule_counts: Counter[str]) -> list[str]:
    """Why the batch as a whole must be rejected (empty: publish its valid rows)."""
    reasons = []
    if total_rows == 0:
        reasons.append("no rows")
    elif bad_rows == total_rows:
        reasons.append(f"every one of {total_rows} rows failed validation")
    elif bad_rows / total_rows > spec.validation.max_bad_row_share:
        reasons.append(f"{bad_rows} of {total_rows} rows ({bad_rows / total_rows:.1%}) failed "
                       f"validation, over the tolerance {spec.validation.max_bad_row_share:.1%}")
    critical = sorted(r for r in spec.validation.critical_rules if rule_counts.get(r))
    if critical:
        reasons.append(f"critical rules fired: {', '.join(critical)}")
    if reasons and rule_counts:
        reasons.append("rows by rule: " + ", ".join(f"{r}={n}" for r, n in
                                                    sorted(rule_counts.items())))
    return reasons


def validate_rows(df: pd.DataFrame, spec: ProblemSpec, batch_id: str,
                  now: datetime | None = None) -> ValidationResult:
    """Validate an in-memory batch: schema, row rules and the accept/reject decision.

    Raises:
        BatchRejected: the schema is wrong, or the decision is to reject (reasons in message).
    """
    check_schema(df, spec, batch_id)
    bad, violations = row_violations(df, spec, now or datetime.now(tz=pd.Timestamp.utcnow().tz))
    reasons = rejection_reasons(spec, len(df), int(bad.sum()),
                                Counter(violations["rule"].tolist()))
    if reasons:
        raise BatchRejected(f"batch {batch_id!r}: rejected: {'; '.join(reasons)}")
    return ValidationResult(valid=df.loc[~bad], violations=violations)
