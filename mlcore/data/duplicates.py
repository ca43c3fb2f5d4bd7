"""Rows already published: which published batch holds a row's (entity key, event time).

The cross-batch duplicate check of an ingest (``corrections: reject``): only the published
batches whose event-time range overlaps the new rows' are read, and only their key and
event-time columns, a record batch at a time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlcore.data.io import curated_pairs
from mlcore.problems import ProblemSpec
from mlcore.store.models import Batch


def published_owners(spec: ProblemSpec, keys: pd.Series, times: pd.Series,
                     batches: list[Batch]) -> np.ndarray:
    """Per row, the index in ``batches`` of the first published batch whose curated rows hold
    its (entity key, event time); -1 for none (or an invalid key or time).

    Only batches whose event-time range overlaps the rows' are read, and only their key and
    event-time columns, one record batch at a time: memory ~ these rows' codes plus a chunk,
    never all published keys at once. ``keys`` as ``entity_keys`` gives them, ``times`` as
    ``event_time``.
    """
    owner = np.full(len(keys), -1, dtype=np.int32)
    valid = (keys.notna() & times.notna()).to_numpy()
    stamps = pd.DatetimeIndex(times).asi8
    if not valid.any():
        return owner
    lo, hi = stamps[valid].min(), stamps[valid].max()
    near = [(i, b) for i, b in enumerate(batches) if _overlaps(b, lo, hi)]
    if not near:
        return owner
    key_codes, key_index = _codes(_key_values(keys[valid], spec.entity.dtype))
    time_codes, time_index = _codes(stamps[valid])
    pairs = key_codes * len(time_index) + time_codes  # one int64 per distinct (key, time)
    del key_codes, time_codes
    uniq = np.sort(pairs)  # not np.unique: 2.8 s against 0.04 s at 1M pairs (numpy 2.4, here)
    uniq = uniq[np.append(True, uniq[1:] != uniq[:-1])]
    found = np.full(len(uniq), -1, dtype=np.int32)
    for i, batch in near:
        for k, t in curated_pairs(batch, spec.entity.key):
            kc, tc = key_index.get_indexer(k), time_index.get_indexer(t)
            both = (kc >= 0) & (tc >= 0)
            p = kc[both].astype("int64") * len(time_index) + tc[both]
            pos = np.minimum(np.searchsorted(uniq, p), len(uniq) - 1)
            pos = pos[uniq[pos] == p]
            found[pos[found[pos] < 0]] = i
    owner[valid] = found[np.searchsorted(uniq, pairs)]
    return owner


def _codes(values: np.ndarray) -> tuple[np.ndarray, pd.Index]:
    codes, uniques = pd.factorize(values)
    return codes.astype("int64"), pd.Index(uniques)


def _key_values(keys: pd.Series, dtype: str) -> np.ndarray:
    """Keys as the curated file stores them: int64, or text (``curate_table``)."""
    if dtype == "int64":
        return keys.to_numpy(dtype="int64")
    return keys.to_numpy(dtype=object).astype(str).astype(object)


def _overlaps(batch: Batch, lo: int, hi: int) -> bool:
    """Can ``batch`` hold an event time in [lo, hi] (ns)? Unknown ranges: assume so."""
    if batch.event_time_min is None or batch.event_time_max is None:
        return True
    first, last = (pd.Timestamp(t).tz_localize("UTC") if t.tzinfo is None else pd.Timestamp(t)
                   for t in (batch.event_time_min, batch.event_time_max))
    return bool(first.value <= hi and last.value >= lo)
