"""Stream ingestion (issue 18): event -> readable online (p50, p99) at set rates, event ->
sealed batch, and the sustained rate before the consumer group's lag grows, on the SQLite and
the Redis online store.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_stream.py [--rates 100 1000 10000] [--seconds 60]
                                      [--stores sqlite redis] [--ladder 2000 4000 ...]
                                      [--step-seconds 20] [--seal-seconds 10] [--profile]
                                      [--quick] [--check] [--json OUT] [--workdir DIR]

Issue 18's targets: online p99 <= 1 s at 1,000 events/s; >= 5,000 events/s sustained with the
Redis online store (2 cores).

Setup (not timed), per store, under a temp dir: a redis-server of the benchmark's own (free port,
``--appendonly yes --appendfsync everysec``, as production runs the stream), a problems dir with
a copy of ``problems/census_employment.yaml`` whose ``stream:`` seals every ``--seal-seconds``,
an initialized MLCORE home, and the real service as a subprocess: ``.venv/bin/mlcore stream
serve --problem census_employment`` (``--profile``: under cProfile, stopped by SIGTERM).

- sqlite: the default home (metadata store and mlcore's SQLite online store in the home);
- redis: as deploy/docker-compose.yaml runs it: metadata store in a fresh PostgreSQL database,
  ``MLCORE_FEAST_CONFIG=deploy/feature_store.redis.yaml`` (SQL registry in another fresh
  database, online store on db 1 of the benchmark's redis-server; the stream on db 2).

Per (store, rate): a producer process (spawned) sends real 2018 census rows, each under a new
entity id and its own ``event_id``, paced in chunks every 50 ms (``XADD`` pipelined into the
problem's stream, fields encoded as ``EventBus.add`` encodes them). One event in
``--sample-every`` is sampled: its send time (just before its chunk's pipeline is sent) goes to
this process, which polls the product's read path, ``mlcore.feast.online.online_feature_rows``
(direct SQLite read; on Redis through Feast's ``get_online_features``), for every sampled key
not yet seen (the oldest 200 per read, 10 ms apart); event -> readable = the end of the read
that first returns the key with the AGEP it was sent with, minus its send time (the reader's own
read times are reported: with the pause they bound the resolution; the reader shares the 2 cores
with the service).
Then the backlog is drained and the sampled events' segments are waited for: event -> sealed =
``stream_segments.sealed_at`` (state published) of the event's segment minus its send time
(waited for up to 3 seal periods + 120 s after the drain; later ones are counted, not timed). The
lag (``EventBus.state().lag``) is sampled every 0.5 s.

Sustained rate: the ``--ladder`` rates, ``--step-seconds`` each, drained in between, stopping at
the first that fails; a step holds when the producer reached 95 % of its rate and the lag stayed
under one second's worth of events over the step's last quarter (a 5 % deficit crosses that in
20 s). Reported: the highest rate held, the lag's slope over the second half (noted, not judged:
reads of up to ``read_count`` make the lag a sawtooth) and the drain time after the producer
stopped. ``--quick``: 100 and 1,000 events/s for 3 s, ladder
2,000 for 3 s, seal every 2 s, 1 event in 10 timed (a smoke run, about a minute on a quiet machine:
the figures mean little). An option given explicitly overrides the mode's value.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Byte code goes to a cache outside the repo (Feast imports feature_repo/*.py): with none (this
# sandbox sets PYTHONDONTWRITEBYTECODE) every process compiles mlcore + Feast again, ~20 s.
PYCACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "batchloop-bench-pycache"
sys.pycache_prefix, sys.dont_write_bytecode = str(PYCACHE), False
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PROBLEM,
    ROOT,
    arg_parser,
    code,
    init_home,
    load,
    log,
    machine,
    temp_work,
    utc_now,
)

P99_TARGET_S, P99_TARGET_RATE, SUSTAINED_TARGET = 1.0, 1000, 5000
ID_BASE = 2_000_000_000  # entity ids past every real one; each run takes its own range
CHUNK_S = 0.05
POLL_S = 0.01  # the reader's pause between reads


# ---------------------------------------------------------------------------- infrastructure

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[int]:
    """A redis-server of our own, append-only (fsync every second); its port."""
    port, data = free_port(), work / "redis"
    data.mkdir()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                             "--dir", str(data)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def pg_databases(n: int) -> Iterator[list[str]]:
    """``n`` fresh PostgreSQL databases (tests/support/pg_database.py), dropped on exit."""
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from pg_database import PG_ADMIN_URL, fresh_database

    with contextlib.ExitStack() as stack:
        yield [f"{PG_ADMIN_URL}/{stack.enter_context(fresh_database('bench_stream'))}"
               for _ in range(n)]


def problems_dir(work: Path, seal_seconds: float) -> Path:
    """A problems dir holding the census spec with ``stream:`` sealing every ``seal_seconds``."""
    out = work / "problems"
    out.mkdir(parents=True)
    text = (ROOT / "problems" / f"{PROBLEM}.yaml").read_text()
    (out / f"{PROBLEM}.yaml").write_text(
        text + f"\nstream:\n  seal_every_seconds: {seal_seconds}\n")
    return out


@contextlib.contextmanager
def store_env(kind: str, work: Path, port: int, seal_seconds: float) -> Iterator[dict[str, str]]:
    """The service's environment for ``kind`` (see the module docstring), the home initialized;
    also set in this process (the reader opens the same stores)."""
    from urllib.parse import urlsplit

    home = work / kind / "home"
    env = {"MLCORE_HOME": str(home), "MLCORE_PROBLEMS_DIR": str(problems_dir(work / kind,
                                                                             seal_seconds)),
           "MLCORE_FEATURE_REPO": str(ROOT / "feature_repo"), "MLCORE_AIRFLOW_URL": "",
           "MLCORE_DATABASE_URL": "", "MLCORE_FEAST_CONFIG": "",
           "MLCORE_STREAM_URL": f"redis://127.0.0.1:{port}/{0 if kind == 'sqlite' else 2}"}
    with pg_databases(2 if kind == "redis" else 0) as (dbs):
        if kind == "redis":
            reg = urlsplit(dbs[1])
            env.update(MLCORE_DATABASE_URL=dbs[0], MLCORE_FEAST_CONFIG=str(
                ROOT / "deploy" / "feature_store.redis.yaml"),
                FEAST_PG_HOST=reg.hostname or "127.0.0.1", FEAST_PG_PORT=str(reg.port or 5432),
                FEAST_PG_USER=reg.username or "postgres",
                FEAST_PG_PASSWORD=reg.password or "unused-trust-auth",
                FEAST_PG_DATABASE=reg.path.lstrip("/"),
                FEAST_REDIS_CONNECTION=f"127.0.0.1:{port},db=1")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: v for k, v in env.items()})
        try:
            with contextlib.redirect_stdout(sys.stderr):
                init_home(settings())
            yield env
        finally:
            from mlcore.store.session import get_engine

            get_engine(settings().db_url).dispose()
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def settings() -> Any:
    from mlcore.config import Settings

    return Settings()


@contextlib.contextmanager
def service(env: dict[str, str], log_path: Path, profile: Path | None) -> Iterator[Any]:
    """``mlcore stream serve`` as a subprocess (under cProfile with ``profile``), up once its
    consumer group exists; SIGTERM on exit (it finishes the read in hand)."""
    from mlcore.stream.bus import EventBus

    cmd = [str(ROOT / ".venv" / "bin" / "mlcore"), "stream", "serve", "--problem", PROBLEM]
    if profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), *cmd]
    with log_path.open("w") as out:
        child = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        proc = subprocess.Popen(cmd, env={**child, **env, "PYTHONPYCACHEPREFIX": str(PYCACHE)},
                                stdout=out, stderr=out, cwd=ROOT)
    bus = EventBus(env["MLCORE_STREAM_URL"], PROBLEM)
    try:
        started = time.monotonic()
        while not bus.redis.exists(bus.key) and proc.poll() is None:
            time.sleep(0.1)
        if proc.poll() is not None:
            sys.exit(f"the service ended at its start:\n{log_path.read_text()[-3000:]}")
        log(f"service up in {time.monotonic() - started:.1f} s")
        yield bus
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        bus.close()


# ---------------------------------------------------------------------------- producer

def templates(n: int) -> list[dict[str, str]]:
    """``n`` real 2018 rows (cycled when fewer), their fields encoded as ``EventBus.add`` does."""
    import pyarrow.parquet as pq

    from mlcore.stream.bus import encode

    rows = pq.read_table(ROOT / "data" / "census_ma_employment" / "employment_2018.parquet"
                         ).slice(0, n).to_pylist()
    return [encode({k: v for k, v in r.items() if k != "id"}) for r in rows]


def produce(url: str, rate: float, seconds: float, first_id: int, sample_every: int,
            out: Any) -> None:
    """Send ``rate`` events/s for ``seconds`` (ids from ``first_id``); sampled (key, AGEP,
    send time) to ``out``, then ("done", sent, elapsed)."""
    import redis

    from mlcore.stream.bus import events_key

    rows = templates(min(int(rate * seconds), 20_000))
    client, key = redis.Redis.from_url(url), events_key(PROBLEM)
    per = max(1, round(rate * CHUNK_S))
    sent, start = 0, time.time()
    while sent < rate * seconds:
        pipe, samples = client.pipeline(transaction=False), []
        for n in range(sent, sent + per):
            fields, ident = rows[n % len(rows)], first_id + n
            pipe.xadd(key, {**fields, "id": str(ident), "event_id": f'"bench-{ident}"'})
            if n % sample_every == 0:
                samples.append((ident, float(fields["AGEP"])))
        now = time.time()
        pipe.execute()
        for ident, agep in samples:
            out.put((ident, agep, now))
        sent += per
        if (ahead := start + sent / rate - time.time()) > 0:
            time.sleep(ahead)
    out.put(("done", sent, time.time() - start))
    client.close()


# ---------------------------------------------------------------------------- one run

def run(bus: Any, rate: float, seconds: float, first_id: int, sample_every: int,
        read: bool) -> dict[str, Any]:
    """One paced run: latencies (s) of the sampled events to readable online (when ``read``),
    their send times, the lag samples, the producer's achieved rate and the drain."""
    from mlcore.feast.online import online_feature_rows
    from mlcore.problems import get_problem

    cfg = settings()
    spec = get_problem(PROBLEM, cfg.problems_dir)
    agep = spec.feature_names.index("AGEP")
    ctx = mp.get_context("spawn")
    samples: Any = ctx.Queue()
    proc = ctx.Process(target=produce, args=(os.environ["MLCORE_STREAM_URL"], rate, seconds,
                                             first_id, sample_every, samples))
    t0 = time.time()
    proc.start()
    pending: dict[int, tuple[float, float]] = {}
    sent_at: dict[int, float] = {}
    latency: list[float] = []
    polls: list[float] = []  # the reader's own read times: the resolution of ``latency``
    lags: list[tuple[float, int]] = []
    done, next_lag = None, 0.0
    try:
        while done is None or (read and pending and time.time() < done[3] + 120):
            with contextlib.suppress(queue.Empty):
                while True:
                    item = samples.get_nowait()
                    if item[0] == "done":
                        done = (*item, time.time())
                        break
                    pending[item[0]] = (item[1], item[2])
                    sent_at[item[0]] = item[2]
            if time.time() >= next_lag:
                lags.append((time.time() - t0, bus.state().lag))
                next_lag = time.time() + 0.5
            if read and pending:
                keys, asked = sorted(pending)[:200], time.time()
                rows = online_feature_rows(spec, keys, cfg)
                seen = time.time()
                polls.append(seen - asked)
                for k, row in zip(keys, rows, strict=True):
                    if row is not None and row[agep] is not None and float(row[agep]) == \
                            pending[k][0]:
                        latency.append(seen - pending.pop(k)[1])
            time.sleep(POLL_S)  # never a busy loop: the reader would take a core from the service
        proc.join(30)
    finally:
        if proc.is_alive():  # the run was cut short: no producer outlives it
            proc.terminate()
    end_sent = done[3] if done else time.time()
    drained = drain(bus)
    return {"rate": rate, "seconds": seconds, "sent": done[1] if done else 0,
            "achieved": (done[1] / done[2]) if done else 0.0, "latency": latency,
            "unseen": len(pending), "polls": polls, "sent_at": sent_at, "lags": lags,
            "drain_s": drained - end_sent, "first_id": first_id}


def drain(bus: Any, timeout: float = 600) -> float:
    """Wait for lag and pending 0; the time it was seen."""
    end = time.time() + timeout
    while time.time() < end:
        state = bus.state()
        if state.lag == 0 and state.pending == 0:
            return time.time()
        time.sleep(0.1)
    sys.exit(f"the service did not drain in {timeout:.0f} s: {bus.state()}")


def sealed_latency(sent_at: dict[int, float], timeout: float) -> list[float]:
    """Sent -> published segment (s) of the sampled events, waiting up to ``timeout`` for all."""
    from sqlalchemy import bindparam, text

    from mlcore.store.session import get_engine

    ids = {f"bench-{k}": t for k, t in sent_at.items()}
    end, got = time.time() + timeout, {}
    sql = text("SELECT e.event_id, s.sealed_at FROM stream_events e JOIN stream_segments s ON "
               "s.problem = e.problem AND s.segment = e.segment WHERE e.problem = :p AND "
               "s.state = 'published' AND e.event_id IN :ids").bindparams(
        bindparam("ids", expanding=True))
    while len(got) < len(ids) and time.time() < end:
        missing = [e for e in ids if e not in got]
        with get_engine(settings().db_url).connect() as conn:
            for i in range(0, len(missing), 500):
                for eid, at in conn.execute(sql, {"p": PROBLEM, "ids": missing[i:i + 500]}):
                    at = datetime.fromisoformat(at) if isinstance(at, str) else at
                    got[eid] = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
        time.sleep(0.5)
    return [got[e] - t for e, t in ids.items() if e in got]


def holds(r: dict[str, Any]) -> bool:
    """The ladder's test: the producer reached 95 % of the rate, and over the step's last quarter
    the lag stayed under one second's worth of events (a deficit of 5 % crosses that in 20 s).
    The slope of the lag over the second half is noted, not judged (reads of up to
    ``read_count`` make it a sawtooth)."""
    lags = [(t, lag) for t, lag in r["lags"] if t <= r["seconds"]]
    half = [p for p in lags if p[0] >= r["seconds"] / 2]
    slope = 0.0
    if len(half) >= 3:
        mt, ml = statistics.fmean(t for t, _ in half), statistics.fmean(x for _, x in half)
        var = sum((t - mt) ** 2 for t, _ in half)
        slope = sum((t - mt) * (x - ml) for t, x in half) / var if var else 0.0
    last = [x for t, x in lags if t >= r["seconds"] * 0.75] or [0]
    r["slope"], r["end_lag"] = slope, max(last)
    return bool(r["achieved"] >= 0.95 * r["rate"] and r["end_lag"] <= r["rate"])


# ---------------------------------------------------------------------------- per store

def bench_store(kind: str, args: argparse.Namespace, work: Path, port: int) -> dict[str, Any]:
    out: dict[str, Any] = {"store": kind, "runs": [], "ladder": [], "code": code()}
    prof = work / f"{kind}.prof" if args.profile else None
    with store_env(kind, work, port, args.seal_seconds) as env, \
            service(env, work / f"{kind}-service.log", prof) as bus:
        from mlcore.feast.online import online_feature_rows
        from mlcore.problems import get_problem

        online_feature_rows(get_problem(PROBLEM, settings().problems_dir), [1], settings())
        next_id = ID_BASE  # the reader warmed (its first read opens Feast's store): not timed
        for rate in args.rates:
            log(f"{kind}: {rate:g} events/s for {args.seconds:g} s ...")
            r = run(bus, rate, args.seconds, next_id, args.sample_every, read=True)
            next_id += int(rate * args.seconds) + 1000
            r["sealed"] = sealed_latency(r.pop("sent_at"), args.seal_seconds * 3 + 120)
            out["runs"].append(r)
            log(f"  readable p50 {pct(r['latency'], .5):.3f} s p99 {pct(r['latency'], .99):.3f}"
                f" s, sealed p50 {pct(r['sealed'], .5):.1f} s, producer {r['achieved']:.0f}/s, "
                f"max lag {max(x for _, x in r['lags'])}, drain {r['drain_s']:.1f} s")
        for rate in args.ladder:
            log(f"{kind}: ladder {rate:g} events/s for {args.step_seconds:g} s ...")
            r = run(bus, rate, args.step_seconds, next_id, 10**9, read=False)
            next_id += int(rate * args.step_seconds) + 1000
            r.pop("sent_at")
            r["holds"] = holds(r)
            out["ladder"].append(r)
            log(f"  producer {r['achieved']:.0f}/s, end lag {r['end_lag']}, slope "
                f"{r['slope']:.0f}/s, drain {r['drain_s']:.1f} s: "
                f"{'holds' if r['holds'] else 'lag grows'}")
            if not r["holds"]:
                break
    out["service_log"] = (work / f"{kind}-service.log").read_text()[-2000:]
    if prof:
        out["profile"] = profile_text(prof)
    return out


def profile_text(path: Path) -> str:
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text).sort_stats("cumulative")
    stats.print_stats(r"mlcore/(streaming|stream/|feast/online_write|data/|ingestion)", 45)
    return text.getvalue()


# ---------------------------------------------------------------------------- report

def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def render(res: dict[str, Any]) -> tuple[str, bool]:
    lines = [f"Command: `.venv/bin/python {res['command']}`; {res['started']} to "
             f"{res['ended']}, load {res['load_before']} before, {res['load_after']} after; "
             "code " + "; ".join(f"{st['store']} service {st['code']}" for st in res["stores"])
             + ".", f"Machine: {res['machine']}.", "",
             "| store | rate (events/s) | producer (events/s) | timed | readable p50 (s) | "
             "readable p99 (s) | max (s) | unseen | reader poll p50 / p99 (s) | max lag (events) | "
             "drain (s) | sealed p50 (s) | sealed p99 (s) | not sealed in time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts: list[str] = []
    for st in res["stores"]:
        for r in st["runs"]:
            lat = r["latency"]
            lines.append(
                f"| {st['store']} | {r['rate']:,.0f} | {r['achieved']:,.0f} | {len(lat)} | "
                f"{pct(lat, .5):.3f} | {pct(lat, .99):.3f} | {max(lat, default=float('nan')):.3f}"
                f" | {r['unseen']} | {pct(r['polls'], .5):.3f} / {pct(r['polls'], .99):.3f} | "
                f"{max(x for _, x in r['lags']):,} | {r['drain_s']:.1f} | "
                f"{pct(r['sealed'], .5):.1f} | {pct(r['sealed'], .99):.1f} | "
                f"{len(lat) + r['unseen'] - len(r['sealed'])} |")
            if r["rate"] == P99_TARGET_RATE:
                ok = pct(lat, .99) <= P99_TARGET_S and not r["unseen"]
                verdicts.append(f"{st['store']}: readable p99 {pct(lat, .99):.2f} s at "
                                f"{P99_TARGET_RATE:,} events/s (target <= {P99_TARGET_S:g} s): "
                                f"**{'met' if ok else 'NOT met'}**")
    lines += ["", "| store | ladder rate (events/s) | producer (events/s) | "
              "max lag, last quarter | lag slope, 2nd half (events/s) | drain after (s) | "
              "verdict |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for st in res["stores"]:
        for r in st["ladder"]:
            lines.append(f"| {st['store']} | {r['rate']:,.0f} | {r['achieved']:,.0f} | "
                         f"{r['end_lag']:,} | {r['slope']:,.0f} | {r['drain_s']:.1f} | "
                         f"{'holds' if r['holds'] else 'lag grows'} |")
        held = [r["rate"] for r in st["ladder"] if r["holds"]]
        failed = any(not r["holds"] for r in st["ladder"])
        st["sustained"] = max(held, default=0)
        if st["ladder"]:
            told = f"{'' if failed else '>= '}{st['sustained']:,.0f}" if held else \
                f"< {st['ladder'][0]['rate']:,.0f}"
            target = "met" if st["sustained"] >= SUSTAINED_TARGET else \
                "NOT met" if failed else "not reached by the ladder"
            verdicts.append(f"{st['store']}: sustained {told} events/s" + (
                f" (target >= {SUSTAINED_TARGET:,}: **{target}**)" if st["store"] == "redis"
                else ""))
    met = not any("NOT met" in v for v in verdicts)
    lines += ["", *(f"- {v}" for v in verdicts)]
    return "\n".join(lines), met


FULL = {"rates": [100, 1000, 10000], "seconds": 60, "ladder": [2000, 3000, 4000, 5000, 6000,
                                                               8000, 10000, 12000],
        "step_seconds": 20, "seal_seconds": 10, "sample_every": 50}
QUICK = {"rates": [100, 1000], "seconds": 3, "ladder": [2000], "step_seconds": 3,
         "seal_seconds": 2, "sample_every": 10}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "a target is missed", json_out=True)
    p.add_argument("--rates", type=float, nargs="+", help=f"events/s (default {FULL['rates']})")
    p.add_argument("--seconds", type=float, help="per rate (default 60)")
    p.add_argument("--stores", nargs="+", default=["sqlite", "redis"],
                   choices=["sqlite", "redis"])
    p.add_argument("--ladder", type=float, nargs="*", help=f"default {FULL['ladder']}")
    p.add_argument("--step-seconds", type=float, help="per ladder rate (default 20)")
    p.add_argument("--seal-seconds", type=float, help="the spec's seal period (default 10)")
    p.add_argument("--sample-every", type=int, help="1 event in N is timed (default 50)")
    p.add_argument("--profile", action="store_true", help="the service under cProfile")
    p.add_argument("--quick", action="store_true", help=f"smoke run (about a minute): {QUICK}")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM (and SIGINT, which a shell's background job ignores) end the run with clean-up:
    # the service, the redis-server, the temp dir and the databases go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not on PATH")
    res: dict[str, Any] = {"started": utc_now(), "load_before": load(), "code": code(),
                           "machine": machine("redis", "feast"), "stores": [],
                           "command": " ".join(["benchmarks/bench_stream.py", *sys.argv[1:]])}
    with temp_work("bench-stream-", args.workdir) as work, redis_server(work) as port:
        for kind in args.stores:
            res["stores"].append(bench_store(kind, args, work, port))
    res.update(ended=utc_now(), load_after=load())
    text, met = render(res)
    print(text)
    if args.quick:
        print("\nQuick mode (smoke run): the figures mean little.")
    for st in res["stores"]:
        if "profile" in st:
            print(f"\ncProfile of the service's main thread ({st['store']}):\n{st['profile']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
