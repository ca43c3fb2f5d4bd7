"""Online reads: the newest materialized features of entity keys, from whichever online store
the Feast config names; mlcore's SQLite store is read directly (no Feast conversions)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcore.config import Settings
from mlcore.feast.store import fast_store, feature_store
from mlcore.problems import ProblemSpec

if TYPE_CHECKING:
    from feast import FeatureStore

def online_features(spec: ProblemSpec, keys: list[Any], settings: Settings, *,
                    via_feast: bool = False) -> pd.DataFrame:
    """The newest materialized features of each entity, read from the online store.

    Works with whichever online store the Feast config names (SQLite, PostgreSQL, Redis), on one
    ``FeatureStore`` per process and config (registry objects kept for the registry's cache
    TTL). With mlcore's SQLite store the rows are read directly from its table
    (``FastSqliteOnlineStore.read_rows``, the query its Feast ``online_read`` runs), skipping
    Feast's per-call conversions; ``via_feast=True`` goes through ``get_online_features``.

    Returns:
        One row per key, in input order: the entity key and the feature service's features
        (missing values for a key that was never materialized; the direct read gives numeric
        features as float64, NaN where missing).
    """
    online = _online(settings)
    plan = None if via_feast else _direct(online, spec)
    if not keys:
        return pd.DataFrame(columns=[spec.entity.key, *spec.feature_names])
    if plan is None:
        service = online.cached(("service", spec.feature_service), lambda: online.store.
                                get_feature_service(spec.feature_service, allow_cache=True))
        got = online.store.get_online_features(
            features=service, entity_rows=[{spec.entity.key: k} for k in keys]).to_dict()
        return pd.DataFrame(got)[[spec.entity.key, *spec.feature_names]]
    rows = online.reader.read_rows(online.store.config, plan[0], keys, spec.feature_names)
    values = [r or (None,) * (len(spec.feature_names) + 1) for r in rows]
    out = None
    if plan[1]:  # all numeric: one float64 block; integers are exact below 2**53
        arr = np.array(values, dtype=np.float64).reshape(len(rows), -1)[:, 1:]
        if np.nanmax(np.abs(arr), initial=0) < 2**53:
            out = pd.DataFrame(arr, columns=spec.feature_names, copy=False)
    if out is None:
        out = pd.DataFrame([v[1:] for v in values], columns=spec.feature_names)
    out.insert(0, spec.entity.key, np.asarray(keys))
    return out


def online_feature_rows(spec: ProblemSpec, keys: list[Any],
                        settings: Settings) -> list[tuple[Any, ...] | None]:
    """The lightest lookup (no DataFrame): per key, in input order, its features as a tuple in
    ``spec.feature_names`` order, or None for a key never materialized. Read directly from
    mlcore's SQLite store; from other stores through ``online_features``."""
    online = _online(settings)
    plan = _direct(online, spec)
    if plan is None:
        got = online_features(spec, keys, settings)[spec.feature_names]
        return [None if row.isna().all() else tuple(row) for _, row in got.iterrows()]
    rows = online.reader.read_rows(online.store.config, plan[0], keys, spec.feature_names)
    return [r[1:] if r else None for r in rows]


@dataclass
class _Online:
    """A process's FeatureStore for reads of one config, and mlcore's direct SQLite reader."""

    store: FeatureStore
    reader: Any  # a FastSqliteOnlineStore, None for other online stores
    path: str  # the SQLite file ("" for other stores) and its (device, inode): a teardown
    ident: tuple[int, int]  # replaces the file, and this entry with it
    kept: dict[tuple[str, ...], tuple[float, Any]] = field(default_factory=dict)

    def cached(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        """``make()``, kept for the registry's cache TTL (Feast re-parses its protos per call)."""
        expires, value = self.kept.get(key, (0.0, None))
        if time.monotonic() >= expires:
            value = make()
            ttl = self.store.config.registry.cache_ttl_seconds or 60
            self.kept[key] = (time.monotonic() + ttl, value)
        return value


def _direct(online: _Online, spec: ProblemSpec) -> tuple[Any, bool] | None:
    """(view, all features numeric) when the direct reader serves the spec's one-view service."""
    def plan() -> tuple[Any, bool] | None:
        from mlcore.feast.sqlite_online import column_kinds

        service = online.store.get_feature_service(spec.feature_service, allow_cache=True)
        [*views] = service.feature_view_projections
        if len(views) != 1 or not {*spec.feature_names} <= {f.name for f in views[0].features}:
            return None
        view = online.store.get_feature_view(views[0].name, allow_registry_cache=True)
        kinds = column_kinds(view)
        numeric = ("float_val", "double_val", "int32_val", "int64_val")
        return view, all(kinds[n][1] in numeric for n in spec.feature_names)

    if online.reader is None:
        return None
    return online.cached(("plan", spec.feature_service, *spec.feature_names), plan)


_ONLINE: dict[tuple[Any, ...], _Online] = {}
_ONLINE_LOCK = threading.Lock()


@functools.cache
def _config_vars(settings: Settings) -> tuple[str, ...]:
    with contextlib.suppress(OSError):
        text = settings.feast_config_file.read_text()
        return tuple(sorted({*re.findall(r"\$\{?(\w+)", text)} - {"MLCORE_HOME"}))
    return ()


def _online(settings: Settings) -> _Online:
    """The ``_Online`` of these settings and of the environment variables their config reads;
    rebuilt when the SQLite online store's file was replaced (``feast teardown``)."""
    key = (settings, *map(os.environ.get, _config_vars(settings)))
    online = _ONLINE.get(key)
    if online is None or (online.path and online.ident != _ident(online.path)):
        with _ONLINE_LOCK:
            for old in [key] + list(_ONLINE)[:-15]:  # this one, and beyond 16 (tests' homes)
                if (dropped := _ONLINE.pop(old, None)) and dropped.reader is not None:
                    dropped.reader.disconnect()
            store = feature_store(settings)
            from mlcore.feast.sqlite_online import FastSqliteOnlineStore, db_path

            path = db_path(store.config) if fast_store(store) else ""
            online = _ONLINE[key] = _Online(store, FastSqliteOnlineStore() if path else None,
                                            path, _ident(path))
    return online


def _ident(path: str) -> tuple[int, int]:
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path) if path else None
        return (st.st_dev, st.st_ino) if st else (0, 0)
    return (0, 0)
