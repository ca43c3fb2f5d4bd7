"""Curation: a raw file validated and typed chunk by chunk into curated parquet.

``curate_table`` turns valid rows into the curated columns (key, event time, inputs in their
stored types with timestamp parts, the target in ``mlcore.data.target_coding``' encoding);
``stream`` validates and curates a whole raw file into a staging dir with memory ~ one chunk,
counting bad rows per rule (with a few offending values each) for the accept/reject decision.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlcore.columns import category_array, factorize, parse_timestamp, time_part
from mlcore.data.duplicates import published_owners
from mlcore.data.io import BackgroundWriter, RawFile, curated_sink
from mlcore.data.parsing import entity_keys, event_time, numeric
from mlcore.data.target_coding import TargetCoder, local_coder
from mlcore.data.validation import PUBLISHED_RULE, describe_feature, duplicate_mask, row_violations
from mlcore.objstore import Attempt
from mlcore.problems import ProblemSpec
from mlcore.provenance import failpoint
from mlcore.spec_columns import Feature
from mlcore.store.models import Batch

ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "str": pa.string(), "bool": pa.bool_()}


def _feature_arrays(raw: pd.Series, feat: Feature) -> dict[str, pa.Array]:
    """A valid input column as its curated column(s): numeric float64 (NaN where a nullable
    value is missing); categorical in its vocabulary's own type and boolean as bool (null where
    missing); a timestamp as UTC timestamp plus one float64 column per declared part."""
    if feat.kind == "numeric":
        return {feat.name: pa.array(numeric(raw).to_numpy(dtype="float64"))}
    if feat.kind == "timestamp":
        stamps = parse_timestamp(raw)
        out = {feat.name: pa.array(stamps, pa.timestamp("ns", tz="UTC"))}
        for part, column in zip(feat.parts or (), feat.model_columns, strict=True):
            out[column] = pa.array(time_part(stamps, part))
        return out
    if feat.kind == "categorical" and feat.value_type == "int":
        return {feat.name: _int_array(raw)}
    vocabulary = feat.values or () if feat.kind == "categorical" else (False, True)
    return {feat.name: category_array(raw, vocabulary, feat.value_type,
                                      ARROW_TYPES[feat.value_type])}


def _int_array(raw: pd.Series) -> pa.Array:
    """A (valid) integer category column as int64, null where missing. Categorical input is
    converted per category, then gathered by its codes (no float64 pass per row)."""
    if isinstance(raw.dtype, pd.CategoricalDtype):
        codes, uniques = factorize(raw)
        num = numeric(pd.Series(uniques)).to_numpy() if len(uniques) else np.empty(0)
        nan = np.append(np.isnan(num), True)[codes]  # code -1 (missing) -> the last entry
        ints = np.append(np.where(np.isnan(num), 0, num).astype("int64"), 0)[codes]
    else:
        num = numeric(raw).to_numpy()
        nan = np.isnan(num)
        ints = np.where(nan, 0, num).astype("int64")
    return pa.array(ints, mask=nan if nan.any() else None)


def curate_table(valid: pd.DataFrame, spec: ProblemSpec, when: pd.Series | None = None,
                 coder: TargetCoder | None = None) -> pa.Table:
    """Typed curated rows as Arrow: key, event_timestamp, inputs in their stored types (with
    timestamp parts), the target encoded by ``coder`` (``mlcore.data.target_coding``).

    Built column by column from numpy (no pandas frame to consolidate and re-index).
    """
    keys = entity_keys(valid[spec.entity.key], spec)
    key = (pa.array(keys.to_numpy(dtype="int64"), pa.int64()) if spec.entity.dtype == "int64"
           else pa.array(keys.to_numpy(dtype=object).astype(str), pa.string()))
    when = event_time(valid[spec.event_time.column], spec) if when is None else when
    cols: dict[str, pa.Array] = {
        spec.entity.key: key,
        "event_timestamp": pa.array(pd.DatetimeIndex(when).asi8, pa.timestamp("ns", tz="UTC")),
    }
    for feat in spec.features:
        cols.update(_feature_arrays(valid[feat.name], feat))
    if spec.target.name in valid.columns:
        target = valid[spec.target.name]
        codes = (coder or local_coder(spec, target)).encode(target)
        cols[spec.target.name] = pa.array(codes if spec.target.kind == "regression"
                                          else codes.astype("int64"))
    return pa.table(cols)


def curate(valid: pd.DataFrame, spec: ProblemSpec) -> pd.DataFrame:
    """``curate_table`` as a pandas frame (text as plain strings, as the curated file reads)."""
    table = curate_table(valid, spec)
    plain = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                       for f in table.schema])
    return table.cast(plain).to_pandas()


@dataclass
class Outcome:
    """What streaming the file produced (in the staging dir) and the counts for the decision."""

    rows: int = 0
    published: int = 0
    bad_rows: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    violations: list[pd.DataFrame] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    ts_min: pd.Timestamp | None = None
    ts_max: pd.Timestamp | None = None
    found: dict[str, list[str]] = field(default_factory=dict)  # rule -> a few offending values


EXAMPLES = 3


def _examples(out: Outcome, chunk: pd.DataFrame, violations: pd.DataFrame, offset: int,
              spec: ProblemSpec) -> None:
    """Keep a few offending values per column rule (what was found, for the rejection)."""
    columns = {*spec.inputs, spec.target.name}
    for rule, rows in violations.groupby("rule")["row_number"]:
        column = next((c for c in columns if str(rule).startswith(f"{c}_")), None)
        if str(rule) == "target_invalid":
            column = spec.target.name
        seen = out.found.setdefault(str(rule), [])
        if column is None or column not in chunk.columns or len(seen) >= EXAMPLES:
            continue
        values = chunk[column].iloc[rows.to_numpy()[:50] - offset]
        for v in dict.fromkeys(repr(x) for x in values.tolist()):
            if len(seen) < EXAMPLES and v not in seen:
                seen.append(v)


def declared_and_found(spec: ProblemSpec, rules: Counter[str], found: dict[str, list[str]],
                       coder: TargetCoder | None) -> list[str]:
    """For each column rule that fired, what the spec declares and a few values found."""
    out = []
    for rule, n in sorted(rules.items()):
        if rule not in found or not found[rule]:
            continue
        column = next((f for f in spec.features if rule.startswith(f"{f.name}_")), None)
        if column is not None:
            declared = describe_feature(column)
        elif rule == PUBLISHED_RULE:
            out.append(f"{rule} ({n} rows): (key, event time) already published in batch "
                       + ", ".join(repr(b) for b in found[rule]))
            continue
        elif rule == "target_invalid":
            declared = f"target {spec.target.kind}: " + (coder.describe() if coder else "")
        else:
            continue
        out.append(f"{rule} ({n} rows): declared {declared}; found e.g. "
                   + ", ".join(found[rule]))
    return out


def stream(src: RawFile, spec: ProblemSpec, staging: Path | Attempt, now: datetime,
           coder: TargetCoder | None = None, others: list[Batch] | None = None) -> Outcome:
    """Validate and curate chunk by chunk into ``staging/part-0.parquet`` (a staging dir or an
    object-storage attempt); memory ~ one chunk (plus the file's key and event-time columns,
    for the duplicate checks). ``others``: the published batches a row's (key, event time)
    must not be in (None: no cross-batch check)."""
    key_col, time_col = spec.entity.key, spec.event_time.column
    ids = src.read_columns([key_col, time_col])
    keys, times = entity_keys(ids[key_col], spec), event_time(ids[time_col], spec)
    del ids
    dups = duplicate_mask(keys, times)
    owners = published_owners(spec, keys, times, others) if others else None
    del keys, times
    out = Outcome()
    with curated_sink(staging, "part-0.parquet") as sink, BackgroundWriter(sink) as writer:
        for chunk in src.chunks():
            if not out.schema:
                out.schema = {str(c): str(t) for c, t in chunk.dtypes.items()}
            n = len(chunk)
            dup, when = dups[out.rows:out.rows + n], event_time(chunk[time_col], spec)
            seen = None if owners is None else _owner_ids(owners[out.rows:out.rows + n],
                                                          others or [], out)
            bad, violations = row_violations(chunk, spec, now, out.rows, dup, when, coder, seen)
            table = curate_table(chunk.loc[~bad], spec, when[~bad], coder)
            _examples(out, chunk, violations, out.rows, spec)
            writer.write(table)
            _tally(out, n, bad, violations, table.column("event_timestamp"))
            failpoint("ingest.mid_write")
    return out


def _owner_ids(owners: np.ndarray, others: list[Batch], out: Outcome) -> np.ndarray:
    """The batch ID per row (None where no other batch holds its key and event time); the IDs
    found are kept as the rule's examples."""
    ids = np.array([None, *(b.batch_id for b in others)], dtype=object)[owners + 1]
    found = out.found.setdefault(PUBLISHED_RULE, [])
    for i in np.unique(owners[owners >= 0]):
        if others[i].batch_id not in found:
            found.append(others[i].batch_id)
    return ids


def _tally(out: Outcome, n: int, bad: np.ndarray, violations: pd.DataFrame,
           ts: pa.ChunkedArray) -> None:
    out.rows += n
    out.bad_rows += int(bad.sum())
    out.published += n - int(bad.sum())
    out.rules.update(violations["rule"].tolist())
    if len(violations):
        out.violations.append(violations)
    if len(ts):
        lo, hi = (pd.Timestamp(v.as_py()) for v in pc.min_max(ts).values())
        out.ts_min = min(x for x in (out.ts_min, lo) if x is not None)
        out.ts_max = max(x for x in (out.ts_max, hi) if x is not None)
