"""The server online stores of ``bench_materialize.py`` (issue 19): ours, a raw baseline and
bare Feast on PostgreSQL and Redis (deploy/feature_store.<store>.yaml), the private servers they
run on, and what every store's run shares (``ours_step``, ``verify``, ``clock``). See
``bench_materialize.py``'s docstring for what is measured."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import ROOT

BASELINE = {"sqlite": "executemany", "postgres": "COPY", "redis": "pipelined HSET"}
PG_URL = os.environ.get("BATCHLOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SAMPLE = 200


def clock(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours_step(ds: Any, settings: Any, module: Any, name: str) -> dict[str, float]:
    """``materialize_batch`` twice (fresh store, then over it), timing ``module.name`` (its
    online part) inside each; Feast reads a sample back after each (not timed)."""
    import mlcore.features as features
    from mlcore.feast.store import feature_store

    spent: list[float] = []
    real = getattr(module, name)

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    setattr(module, name, timed)
    try:
        step = clock(lambda: features.materialize_batch(ds.spec, "b", settings))
        verify(ds, feature_store(settings))
        rerun = clock(lambda: features.materialize_batch(ds.spec, "b", settings))
        verify(ds, feature_store(settings))
    finally:
        setattr(module, name, real)
    return {"whole step": step, "online part": spent[0], "re-run whole step": rerun,
            "re-run online part": spent[1]}


def verify(ds: Any, store: Any) -> None:
    """Feast's own reader reads ``SAMPLE`` entities back equal to the engineered frame."""
    import numpy as np
    import pandas as pd

    rows = ds.frame.iloc[np.linspace(0, ds.rows - 1, min(SAMPLE, ds.rows)).astype(int)]
    names = ds.spec.feature_names
    got = store.get_online_features(
        features=[f"{ds.spec.feature_view}:{n}" for n in names],
        entity_rows=[{"id": int(k)} for k in rows["id"]]).to_dict()
    for n in names:
        want = [None if pd.isna(v) else v for v in rows[n].tolist()]
        if got[n] != want:
            bad = next(i for i, (a, b) in enumerate(zip(got[n], want, strict=True)) if a != b)
            raise AssertionError(f"{ds.label}, {store.config.online_store.type}: Feast reads "
                                 f"{n}={got[n][bad]!r} for id {rows['id'].iloc[bad]}, the frame "
                                 f"has {want[bad]!r}")


def bare_materialize(ds: Any, settings: Any) -> float:
    from datetime import datetime

    from mlcore.feast.store import feature_store

    store = feature_store(settings)
    start = datetime.fromisoformat(ds.result.window_start)
    end = datetime.fromisoformat(ds.result.window_end)
    with contextlib.redirect_stdout(sys.stderr):
        return clock(lambda: store.materialize(start_date=start, end_date=end,
                                               feature_views=[ds.spec.feature_view]))


class Server:
    """The PostgreSQL or Redis online store (deploy/feature_store.<kind>.yaml) of ``ds``'s home:
    ours, the raw baseline and bare Feast on it."""

    def __init__(self, ds: Any, kind: str) -> None:
        from mlcore.feast.online_write import _prepare
        from mlcore.feast.store import apply_definitions, feature_store
        from mlcore.features import engineer_table, materialize_batch
        from mlcore.store.catalog import get_batch

        self.ds, self.kind, self.label, self.rows, self.spec = ds, kind, ds.label, ds.rows, ds.spec
        self.settings = ds.ours.model_copy(
            update={"feast_config": ROOT / "deploy" / f"feature_store.{kind}.yaml"})
        apply_definitions(self.settings)
        materialize_batch(ds.spec, "b", self.settings)  # warms the path
        store = feature_store(self.settings)
        self.config, self.view = store.config, store.get_feature_view(ds.spec.feature_view)
        frame = engineer_table(get_batch(ds.spec.name, "b", ds.ours.db_url), ds.spec)
        _, self.keys, self.us, columns = _prepare(frame, self.view, self.config, extras=True)
        self.values, self.texts = [c[0] for c in columns], [c[1] for c in columns]
        if kind == "redis":
            import redis

            self.client = redis.Redis.from_url("redis://" + os.environ["FEAST_REDIS_CONNECTION"]
                                               .replace(",db=", "/"))
        else:
            from feast.infra.online_stores.helpers import compute_table_id

            self.table = compute_table_id(self.config.project, self.view, False)
            self.dsn = f"{PG_URL}/{os.environ['FEAST_PG_DATABASE']}"

    def fresh(self) -> None:
        if self.kind == "redis":
            self.client.flushdb()
            return
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {self.table}")
            conn.execute(f"DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy "
                         f"(LIKE {self.table} INCLUDING ALL)")

    def ours_run(self) -> dict[str, float]:
        import mlcore.features as features

        self.fresh()
        return ours_step(self.ds, self.settings, features, "materialize_online")

    def baseline_run(self) -> dict[str, float]:
        self.fresh()
        return {BASELINE[self.kind]: self.redis_pipe()} if self.kind == "redis" else self.copy()

    def copy(self) -> dict[str, float]:
        """The COPY, and of it the buffer's building (each distinct value formatted once)."""
        import numpy as np
        import psycopg2

        names = self.ds.spec.feature_names
        conn = psycopg2.connect(self.dsn)
        built: list[float] = []

        def run() -> None:
            def esc(t: str | None) -> str:
                return r"\N" if t is None else t.replace("\\", "\\\\").replace(
                    "\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            start = time.perf_counter()
            stamps = np.char.add(np.datetime_as_string(self.us.astype("datetime64[us]"),
                                                       unit="us"), "+00").tolist()
            lines = [f"\\\\x{k.hex()}\t" for k in self.keys]
            cols = []
            for n, vs, ts in zip(names, self.values, self.texts, strict=True):
                cell = {v: f"{n}\t\\\\x{v.hex()}\t{esc(t)}\t" for v, t in
                        dict(zip(vs, ts, strict=True)).items()}
                cols.append([cell[v] for v in vs])
            buf = io.StringIO("".join(
                f"{head}{cell}{s}\t\\N\n" for head, s, *cells in
                zip(lines, stamps, *cols, strict=True) for cell in cells))
            built.append(time.perf_counter() - start)
            with conn, conn.cursor() as cur:
                cur.copy_expert("COPY bench_copy (entity_key, feature_name, value, value_text, "
                                "event_ts, created_ts) FROM STDIN", buf)
        try:
            spent = clock(run)
            with conn.cursor() as cur:  # the same rows as ours (not timed)
                cur.execute("SELECT count(*) FROM bench_copy")
                assert cur.fetchone() == (len(self.keys) * len(names),)
            return {"COPY": spent, "COPY: of it, building the buffer": built[0]}
        finally:
            conn.close()

    def redis_pipe(self) -> float:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = [Timestamp(seconds=t // 1_000_000, nanos=t % 1_000_000 * 1000).SerializeToString()
              for t in self.us.tolist()]
        fields = [f"_ts:{self.view.name}".encode(), *self.ds_fields()]
        hkeys = [k + self.config.project.encode() for k in self.keys]

        def run() -> None:
            with self.client.pipeline(transaction=False) as pipe:
                for key, stamp, *values in zip(hkeys, ts, *self.values, strict=True):
                    pipe.hset(key, mapping=dict(zip(fields, (stamp, *values), strict=True)))
                pipe.execute()
        spent = clock(run)
        assert self.client.dbsize() == len(hkeys)  # one hash per entity (not timed)
        return spent

    def ds_fields(self) -> list[bytes]:
        from feast.infra.online_stores.helpers import _mmh3

        return [_mmh3(f"{self.view.name}:{f.name}") for f in self.view.features]

    def bare_run(self) -> dict[str, float]:
        self.fresh()
        return {"materialize": bare_materialize(self.ds, self.settings)}


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[None]:
    """A private redis-server (no persistence) on a free loopback port, for this run only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        os.environ["FEAST_REDIS_CONNECTION"] = f"127.0.0.1:{port},db=0"
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def pg_database(used: bool) -> Iterator[None]:
    """A fresh database on ``PG_URL`` for Feast's registry and online table (dropped after)."""
    if not used:
        yield
        return
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = f"bench_materialize_{uuid.uuid4().hex[:10]}"
    info = conninfo_to_dict(PG_URL)
    os.environ.update({"FEAST_PG_HOST": str(info.get("host", "127.0.0.1")),
                       "FEAST_PG_PORT": str(info.get("port", 5432)),
                       "FEAST_PG_USER": str(info.get("user", "postgres")),
                       "FEAST_PG_PASSWORD": str(info.get("password", "unused-trust-auth")),
                       "FEAST_PG_DATABASE": name})
    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
