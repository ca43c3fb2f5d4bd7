"""Values as mlcore's SQLite online store (``mlcore.feast.sqlite_online``) keeps them: Feast's
serialized entity keys (vectorized for integer keys), feature values as plain SQLite values
(what Feast's ``ValueProto`` would hold), timestamps as microseconds since the epoch."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Feast value type -> (SQLite column type, ValueProto field). Anything else: serialized ValueProto.
# Floats get no declared type: REAL affinity would store integral floats as integers and turn
# -0.0 into 0.0; without affinity SQLite keeps the exact double.
NATIVE = {ValueType.FLOAT: ("", "float_val"), ValueType.DOUBLE: ("", "double_val"),
          ValueType.INT32: ("INTEGER", "int32_val"), ValueType.INT64: ("INTEGER", "int64_val"),
          ValueType.BOOL: ("INTEGER", "bool_val"), ValueType.STRING: ("TEXT", "string_val"),
          ValueType.BYTES: ("BLOB", "bytes_val")}
PROTO = ("PROTO", "")
KEY_FORMATS = {ValueType.INT64: "<q", ValueType.INT32: "<i"}


def _key_prefix(join_key: str, value_type: ValueType, size: int) -> bytes:
    name = join_key.encode()
    return struct.pack("<III", 1, ValueType.STRING.value, len(name)) + name + struct.pack(
        "<II", value_type.value, size)


def entity_key_bytes(keys: Sequence[Any] | np.ndarray, join_key: str, value_type: ValueType,
                     version: int) -> list[bytes]:
    """Feast's ``serialize_entity_key`` of single-join-key entities, vectorized for int keys."""
    if version == 3 and value_type in KEY_FORMATS:
        fmt = KEY_FORMATS[value_type]
        prefix = _key_prefix(join_key, value_type, struct.calcsize(fmt))
        if len(keys) < 64:
            return [prefix + struct.pack(fmt, k) for k in keys]
        arr = np.asarray(keys).astype(fmt, casting="same_kind")
        buf = np.empty((len(arr), len(prefix) + arr.itemsize), dtype=np.uint8)
        buf[:, :len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        buf[:, len(prefix):] = arr.view(np.uint8).reshape(len(arr), arr.itemsize)
        return buf.view(f"V{buf.shape[1]}").ravel().tolist()
    if version == 3 and value_type == ValueType.STRING:
        head = struct.pack("<III", 1, ValueType.STRING.value, len(join_key.encode()))
        head += join_key.encode()
        return [head + struct.pack("<II", value_type.value, len(b)) + b
                for b in (str(k).encode() for k in keys)]
    protos = python_values_to_proto_values(list(keys), value_type)
    return [serialize_entity_key(EntityKeyProto(join_keys=[join_key], entity_values=[v]),
                                 entity_key_serialization_version=version) for v in protos]


def column_values(values: pd.Series, value_type: ValueType) -> list[Any]:
    """A frame column as its table column stores it: what Feast's ``ValueProto`` would hold
    (floats rounded to the feature's width; None where missing). Float and int64 columns are
    converted vectorized, anything else through Feast's own conversion."""
    if value_type in (ValueType.FLOAT, ValueType.DOUBLE) and values.dtype.kind in "fiu":
        width = np.float32 if value_type == ValueType.FLOAT else np.float64
        arr = values.to_numpy(dtype=width, na_value=np.nan)
        out: list[Any] = arr.tolist()
        missing = np.isnan(arr)
        return [None if m else v for v, m in zip(out, missing.tolist(), strict=True)] \
            if missing.any() else out
    if value_type == ValueType.INT64 and values.dtype.kind in "iu":
        return values.tolist()
    if value_type in (ValueType.STRING, ValueType.BOOL):  # text or 0/1, None where missing
        arr = values.to_numpy(dtype=object) if values.dtype.kind in "OSUb" \
            else values.astype(str).to_numpy(dtype=object)
        out = arr.tolist()
        missing = pd.isna(arr)
        if missing.any():
            out = [None if m else v for v, m in zip(out, missing.tolist(), strict=True)]
        return out
    kind = NATIVE.get(value_type, PROTO)
    protos = python_values_to_proto_values(values.tolist(), value_type)
    return [native_value(kind, v) for v in protos]


def micros(ts: pd.Series) -> np.ndarray:
    """Timestamps (naive ones are taken as UTC) as integer microseconds since the epoch."""
    index = pd.DatetimeIndex(ts)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    return index.as_unit("us").asi8


def micros_of(ts: datetime) -> int:
    """One timestamp (naive is taken as UTC) as integer microseconds since the epoch."""
    aware = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return (aware - EPOCH) // timedelta(microseconds=1)


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def value_proto(kind: tuple[str, str], value: Any) -> ValueProto:
    if value is None:
        return ValueProto()
    if kind is PROTO:
        return ValueProto.FromString(value)
    out = ValueProto()
    setattr(out, kind[1], bool(value) if kind[1] == "bool_val" else value)
    return out


def native_value(kind: tuple[str, str], value: ValueProto) -> Any:
    field = value.WhichOneof("val")
    if field is None:
        return None
    return value.SerializeToString() if kind is PROTO else getattr(value, field)


def arrow_values(col: pa.ChunkedArray, value_type: ValueType) -> list[Any]:
    """An Arrow column as its table column stores it (see ``column_values``): text and booleans
    as Python values (None where null) straight from Arrow; the rest through ``column_values``."""
    if value_type == ValueType.STRING and (pa.types.is_string(col.type)
                                           or pa.types.is_large_string(col.type)
                                           or pa.types.is_dictionary(col.type)):
        # one Python str per distinct value, shared by its rows: ~2x faster than to_pylist
        coded = col.combine_chunks()
        if not pa.types.is_dictionary(coded.type):
            coded = coded.dictionary_encode()
        words = np.asarray([*coded.dictionary.to_pylist(), None], dtype=object)
        return words[coded.indices.fill_null(len(words) - 1).to_numpy()].tolist()
    if value_type == ValueType.BOOL and pa.types.is_boolean(col.type):
        return col.to_numpy(zero_copy_only=False).tolist() if not col.null_count \
            else col.to_pylist()
    if value_type == ValueType.INT64 and pa.types.is_integer(col.type) and not col.null_count:
        return col.to_numpy().tolist()
    return column_values(col.to_pandas(), value_type)

