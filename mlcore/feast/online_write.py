"""Online writes newest-by-event-time: a late, older event never overwrites a newer stored value.

For the stream ingestion service, which writes small engineered frames (the spec's entity key,
``event_timestamp`` and its model feature columns, as ``mlcore.features.engineer_table`` and
``mlcore.data.curation.curate_table`` give them) many times per second. ``OnlineWriter`` keeps
its connection and the view's layout between calls; ``write_newest`` is a one-off convenience.

Per online store, each into the layout Feast itself reads (``get_online_features`` sees it):

- mlcore's SQLite store (``mlcore.feast.sqlite_online``): its bulk ``write_frame``, whose upsert
  keeps the row with the newer (event time, created time).
- Redis: one hash per entity as Feast's ``RedisOnlineStore`` writes it (``_ts:<view>`` holds the
  event time as a protobuf Timestamp, each feature under ``mmh3("<view>:<feature>")``), through
  a Lua script per entity that compares event times on the server, so two concurrent writers
  cannot regress a value (Feast's own write reads first, then writes, and skips equal times).
- PostgreSQL: Feast's table (a row per entity and feature): the frame is ``COPY``'d as one wide
  row per entity into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT ... DO
  UPDATE ... WHERE`` the stored (event_ts, created_ts) is not newer, in one transaction; Feast's
  own upsert has no event-time check.

A row whose event time equals the stored one is written again: rewriting a row is idempotent,
and of two different rows at one time the later write wins. When the frame has
``batch_published_at`` (``mlcore.feast.store.CREATED``, ``corrections: supersede``), SQLite and
PostgreSQL compare (event time, created time) instead, a missing created time being the oldest;
Feast's Redis layout stores no created time. Event times are kept to the microsecond (Redis:
from 1970 on). Within one frame the newest row per key is written (of two with one time, the
later row). Other online store types are refused: they have no newer-wins write here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlcore.feast.redis_lua import NEWER_WINS_LUA, NEWER_WINS_MANY_LUA
from mlcore.feast.sqlite_encoding import entity_key_bytes, micros
from mlcore.feast.store import CREATED, fast_store
from mlcore.problems import ProblemSpec

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.repo_config import RepoConfig
    from feast.value_type import ValueType

TS = "event_timestamp"
# A feature column as stored: serialized ValueProtos, and Feast's value_text / value_num.
Encoded = tuple[list[bytes], list[Any], list[Any]]

REDIS_KEYS_PER_CALL = 500


class OnlineWriter:
    """Newest-by-event-time writes of one spec's engineered frames into ``store``'s online store.

    Keeps the connection and the feature view read at creation: create a new writer after the
    view's definition changes (``feast apply``). Not thread-safe: one writer per thread.

    Raises:
        NotImplementedError: an online store other than mlcore's SQLite, Redis or PostgreSQL.
    """

    def __init__(self, store: FeatureStore, spec: ProblemSpec) -> None:
        self.spec = spec
        self.view = store.get_feature_view(spec.feature_view)
        self._sink = _sink(store, self.view)

    def write(self, frame: pa.Table) -> int:
        """Write the newest row per key of ``frame`` where it is not older than what the store
        holds. Returns the number of rows offered (the frame's rows; 0 for an empty frame)."""
        if frame.num_rows:
            self._sink.write(frame, self.view)
        return int(frame.num_rows)

    def close(self) -> None:
        """Release the connection (a later ``write`` reopens it)."""
        self._sink.close()

    def __enter__(self) -> OnlineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_newest(store: FeatureStore, spec: ProblemSpec, frame: pa.Table) -> int:
    """``OnlineWriter(store, spec).write(frame)``, then close: for one-off writes (a stream
    service keeps one ``OnlineWriter``). Returns the rows offered."""
    with OnlineWriter(store, spec) as writer:
        return writer.write(frame)


def has_writer(store: FeatureStore) -> bool:
    """Whether ``store``'s online store has a newest-by-event-time writer here."""
    return fast_store(store) or getattr(store.config.online_store, "type", "?") in SERVER_STORES


SERVER_STORES = ("redis", "postgres")


def _sink(store: FeatureStore, view: FeatureView) -> Any:
    """The writer of the store's online store type (``online_store: type:``)."""
    if fast_store(store):
        return _SqliteSink(store.config)
    kind = getattr(store.config.online_store, "type", "?")
    if kind == "redis":
        return _RedisSink(store.config, view)
    if kind == "postgres":
        return _PostgresSink(store.config, view)
    raise NotImplementedError(f"no newest-by-event-time writer for online store type {kind!r} "
                              "(mlcore's SQLite store, redis and postgres have one)")


class _SqliteSink:
    """mlcore's SQLite store: ``write_frame`` already upserts newer-wins (and dedupes keys)."""

    def __init__(self, config: RepoConfig) -> None:
        from mlcore.feast.sqlite_online import FastSqliteOnlineStore

        self._store = FastSqliteOnlineStore()
        self.config = config

    def write(self, frame: pa.Table, view: FeatureView) -> None:
        created = CREATED if CREATED in frame.column_names else None
        self._store.write_frame(self.config, view, frame, created_col=created)

    def close(self) -> None:
        self._store.disconnect()


def newest_rows(frame: pa.Table, key: str) -> pa.Table:
    """The frame's newest row per key (the later row of two with one event time)."""
    keys = frame.column(key).to_numpy(zero_copy_only=False)
    if pd.Index(keys).is_unique:
        return frame
    order = np.argsort(micros(frame.column(TS).to_pandas()), kind="stable")
    order = order[~pd.Series(keys[order]).duplicated(keep="last").to_numpy()]
    return frame.take(pa.array(order))


def encode_column(col: pa.ChunkedArray, value_type: ValueType, extras: bool = False) -> Encoded:
    """A feature column as Feast stores it: serialized ``ValueProto`` per row (``b""`` where
    null or NaN, as Feast's empty value), plus, when ``extras``, Feast's ``value_text`` and
    ``value_num`` (``extract_text_and_num``; empty lists otherwise). Floats are encoded
    vectorized; other types once per distinct value, through Feast's own conversion."""
    from feast.value_type import ValueType

    width = {ValueType.DOUBLE: ("<f8", 0x29), ValueType.FLOAT: ("<f4", 0x35)}.get(value_type)
    if width and (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        arr = col.to_numpy().astype(width[0]) if not col.null_count \
            else col.to_numpy(zero_copy_only=False).astype(width[0])
        buf = np.empty((len(arr), arr.itemsize + 1), dtype=np.uint8)
        buf[:, 0] = width[1]  # the field's tag: double_val (5, 64-bit), float_val (6, 32-bit)
        buf[:, 1:] = arr.view(np.uint8).reshape(len(arr), arr.itemsize)
        out: list[bytes] = buf.view(f"V{buf.shape[1]}").ravel().tolist()
        nums = arr.tolist()
        missing = np.isnan(arr)
        if missing.any():
            out = [b"" if m else v for v, m in zip(out, missing.tolist(), strict=True)]
            nums = [None if m else v for v, m in zip(nums, missing.tolist(), strict=True)]
        texts = [None if v is None else str(v) for v in nums] if extras else []
        return out, texts, nums if extras else []
    return _encode_distinct(col, value_type, extras)


def _encode_distinct(col: pa.ChunkedArray, value_type: ValueType, extras: bool) -> Encoded:
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    coded = col.combine_chunks()
    if not pa.types.is_dictionary(coded.type):
        coded = pc.dictionary_encode(coded)
    protos = python_values_to_proto_values(coded.dictionary.to_pylist(), value_type)
    index = coded.indices.fill_null(len(protos)).to_numpy()
    blobs = np.asarray([*(p.SerializeToString() for p in protos), b""], dtype=object)
    if not extras:
        return blobs[index].tolist(), [], []
    pairs = [extract_text_and_num(p, True) for p in protos] + [(None, None)]
    texts = np.asarray([t for t, _ in pairs], dtype=object)
    nums = np.asarray([n for _, n in pairs], dtype=object)
    return blobs[index].tolist(), texts[index].tolist(), nums[index].tolist()


def _prepare(frame: pa.Table, view: FeatureView, config: RepoConfig, extras: bool = False,
             ) -> tuple[pa.Table, list[bytes], np.ndarray, list[Encoded]]:
    """The newest row per key, in entity-key byte order (concurrent writers then lock rows in
    one order): (those rows, their serialized entity keys, event times in µs, encoded
    feature columns)."""
    [key] = view.entity_columns
    frame = newest_rows(frame, key.name)
    keys = entity_key_bytes(frame.column(key.name).to_numpy(zero_copy_only=False), key.name,
                            key.dtype.to_value_type(), config.entity_key_serialization_version)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if order != list(range(len(keys))):
        frame, keys = frame.take(pa.array(order)), [keys[i] for i in order]
    columns = [encode_column(frame.column(f.name), f.dtype.to_value_type(), extras)
               for f in view.features]
    return frame, keys, micros(frame.column(TS).to_pandas()), columns


class _RedisSink:
    """Feast's Redis hash layout, written newer-wins by ``NEWER_WINS_LUA`` in one pipeline."""

    def __init__(self, config: RepoConfig, view: FeatureView) -> None:
        from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
        from feast.infra.online_stores.redis import RedisOnlineStore

        self.config = config
        self._client = RedisOnlineStore()._get_client(config.online_store)
        self._script = self._client.register_script(NEWER_WINS_LUA)
        cluster = str(getattr(config.online_store, "redis_type", "redis")).endswith("cluster")
        self._many = None if cluster else self._client.register_script(NEWER_WINS_MANY_LUA)
        name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
        self._ts_field = f"_ts:{name}".encode()
        self._fields = [_mmh3(f"{name}:{f.name}") for f in view.features]
        self._project = config.project.encode()
        self._ttl = int(config.online_store.key_ttl_seconds or 0)

    def write(self, frame: pa.Table, view: FeatureView) -> None:
        from google.protobuf.timestamp_pb2 import Timestamp

        _, keys, us, columns = _prepare(frame, view, self.config)
        rows = list(zip(*(c[0] for c in columns), strict=True))
        entries = []
        for key, t, values in zip(keys, us.tolist(), rows, strict=True):
            seconds, nanos = divmod(t, 1_000_000)
            stamp = Timestamp(seconds=seconds, nanos=nanos * 1000).SerializeToString()
            entries.append((key + self._project, [seconds, nanos * 1000, stamp, *values]))
        with self._client.pipeline(transaction=False) as pipe:
            if self._many is None:  # a cluster: one call per entity (each key its own slot)
                for hkey, (sec, nano, ts, *vals) in entries:
                    args: list[Any] = [sec, nano, self._ttl, self._ts_field, ts]
                    for field, value in zip(self._fields, vals, strict=True):
                        args += (field, value)
                    self._script(keys=[hkey], args=args, client=pipe)
            else:
                head = [self._ttl, self._ts_field, len(self._fields), *self._fields]
                for i in range(0, len(entries), REDIS_KEYS_PER_CALL):
                    part = entries[i:i + REDIS_KEYS_PER_CALL]
                    self._many(keys=[k for k, _ in part],
                               args=head + [a for _, each in part for a in each], client=pipe)
            pipe.execute()

    def close(self) -> None:
        self._client.close()


class _PostgresSink:
    """Feast's PostgreSQL table, upserted where the stored (event_ts, created_ts) is not newer:
    in one transaction, the frame is ``COPY``'d (text format, one wide row per entity) into a
    temporary staging table (created if the session lacks it, emptied at commit), then one
    ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE`` spreads it into a row per entity
    and feature."""

    def __init__(self, config: RepoConfig, view: FeatureView) -> None:
        from feast.infra.online_stores.helpers import compute_table_id

        self.config = config
        self._table = compute_table_id(config.project, view,
                                       config.registry.enable_online_feature_view_versioning)
        self._names = [f.name for f in view.features]
        self._conn: Any = None
        self._sql: StageSql | None = None
        self._with_num = False

    def _connect(self) -> Any:
        """The connection (reopened after a failure closed it) and the statements."""
        if self._conn is None or self._conn.closed:
            from feast.infra.utils.postgres.connection_utils import _get_conn

            self._conn = _get_conn(self.config.online_store)
            self._conn.autocommit = True  # transactions are explicit: conn.transaction()
            self._with_num = self._has_value_num()
            self._sql = stage_sql(self._table, self._names, self._with_num)
        return self._conn

    def _has_value_num(self) -> bool:
        store = self.config.online_store
        found = self._conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND "
            "table_name = %s AND column_name = 'value_num'",
            (store.db_schema or store.user, self._table)).fetchone()
        return found is not None

    def write(self, frame: pa.Table, view: FeatureView) -> None:
        conn = self._connect()
        assert self._sql is not None
        kept, keys, us, columns = _prepare(frame, view, self.config, extras=True)
        created = micros(kept.column(CREATED).to_pandas()) if CREATED in kept.column_names \
            else None
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(self._sql.create)  # here, not once per connection: a pooler (PgBouncer
            # in transaction mode) may run each transaction on another server session
            with cur.copy(self._sql.copy) as copy:
                for chunk in copy_text(keys, us, created, columns, self._with_num):
                    copy.write(chunk)
            cur.execute(self._sql.upsert)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


STAGE = "mlcore_stage_"  # + a digest of the table's layout: one staging table per layout
COPY_ENTITIES = 20_000  # entities per COPY chunk (bounds the text held at once)


class StageSql(NamedTuple):
    create: Any
    copy: Any
    upsert: Any


def copy_text(keys: list[bytes], us: np.ndarray, created: np.ndarray | None,
              columns: list[Encoded], with_num: bool) -> Iterator[str]:
    """The staging table's rows in COPY text format, ``COPY_ENTITIES`` lines per chunk: the
    entity key, event and created time (µs), then per feature its value (bytea hex), value_text
    and, ``with_num``, value_num; ``\\N`` for null. Each distinct value is formatted once."""
    cells = [_cells(col, with_num) for col in columns]
    stamps = us.tolist()
    made = [r"\N"] * len(keys) if created is None else [str(c) for c in created.tolist()]
    for lo in range(0, len(keys), COPY_ENTITIES):
        hi = min(lo + COPY_ENTITIES, len(keys))
        rows = zip([f"\\\\x{k.hex()}" for k in keys[lo:hi]], map(str, stamps[lo:hi]),
                   made[lo:hi], *(c[lo:hi] for c in cells), strict=True)
        yield "".join("\t".join(row) + "\n" for row in rows)


def _cells(col: Encoded, with_num: bool) -> list[str]:
    """One feature's value, value_text [, value_num] per row, tab-joined, as COPY text."""
    values, texts, nums = col
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    _, first = np.unique(codes, return_index=True)
    made = []
    for v, i in zip(uniques.tolist(), first.tolist(), strict=True):
        cell = f"\\\\x{v.hex()}\t{_text(texts[i])}"
        made.append(cell + f"\t{_text(None if nums[i] is None else repr(float(nums[i])))}"
                    if with_num else cell)
    return np.asarray(made, dtype=object)[codes].tolist() if made else []


def _text(value: str | None) -> str:
    """A text field in COPY text format (backslash, tab, newline, carriage return escaped)."""
    if value is None:
        return r"\N"
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace(
        "\r", "\\r")


def stage_sql(table: str, names: Sequence[str], with_num: bool) -> StageSql:
    """The staging table (temporary, emptied at commit), its COPY, and the newer-wins upsert
    from it into Feast's table ``table``: a stored row is replaced unless its (event_ts,
    created_ts) is newer (null created: oldest) or it is equal to the new one."""
    from hashlib import sha256

    from psycopg import sql

    layout = f"{table}|{'|'.join(names)}|{with_num}"
    stage = sql.Identifier(STAGE + sha256(layout.encode()).hexdigest()[:20])
    per = [f"v{i} bytea, x{i} text" + (f", n{i} float8" if with_num else "")
           for i in range(len(names))]
    create = sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {s} (k bytea, e int8, c int8, " +
                     ", ".join(per) + ") ON COMMIT DELETE ROWS").format(s=stage)
    copy = sql.SQL("COPY {s} FROM STDIN").format(s=stage)
    num = ", value_num" if with_num else ""
    spread = sql.SQL(", ").join(
        sql.SQL("({}, s.v{i}, s.x{i}" + (", s.n{i}" if with_num else "") + ")").format(
            sql.Literal(n), i=sql.SQL(str(i))) for i, n in enumerate(names))
    low = "'-infinity'::timestamptz"
    # a row equal to the stored one is left alone (an idempotent re-run writes no new versions)
    num_t, num_x = (", {t}.value_num", ", EXCLUDED.value_num") if with_num else ("", "")
    upsert = sql.SQL(
        "INSERT INTO {t} (entity_key, feature_name, value, value_text" + num +
        ", event_ts, created_ts) SELECT s.k, f.n, f.v, f.x" + (", f.m" if with_num else "") +
        ", 'epoch'::timestamptz + s.e * interval '1 microsecond', 'epoch'::timestamptz + "
        "s.c * interval '1 microsecond' FROM {s} AS s CROSS JOIN LATERAL (VALUES {spread}) AS "
        "f(n, v, x" + (", m" if with_num else "") + ") "
        "ON CONFLICT (entity_key, feature_name) DO UPDATE SET value = EXCLUDED.value, "
        "value_text = EXCLUDED.value_text" + (", value_num = EXCLUDED.value_num" if with_num
                                              else "") +
        ", event_ts = EXCLUDED.event_ts, created_ts = EXCLUDED.created_ts "
        "WHERE ({t}.event_ts, coalesce({t}.created_ts, " + low + ")) <= "
        "(EXCLUDED.event_ts, coalesce(EXCLUDED.created_ts, " + low + ")) AND ({t}.value, "
        "{t}.value_text" + num_t + ", {t}.event_ts, {t}.created_ts) IS DISTINCT FROM "
        "(EXCLUDED.value, EXCLUDED.value_text" + num_x + ", EXCLUDED.event_ts, "
        "EXCLUDED.created_ts)"
    ).format(t=sql.Identifier(table), s=stage, spread=spread)
    return StageSql(create, copy, upsert)
