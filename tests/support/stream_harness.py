"""Real processes for the stream fault tests: a private ``redis-server`` with append-only
persistence (``--appendfsync always``), a temporary MLCORE_HOME with a problems dir holding the
census spec with a fast-sealing ``stream:`` section, the stream service as a real
``mlcore stream serve`` subprocess (started, killed with SIGKILL, restarted), and a producer
thread that re-sends whatever failed to send.

Also the census event plan the kill test sends: real rows with explicit ``event_id``s, several
events per entity (survey years), late older events, re-sent duplicates and invalid events.
Imported by basename (pytest's ``pythonpath`` has ``tests/support``).
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import redis
import yaml

from mlcore.config import Settings
from mlcore.feast.store import apply_definitions
from mlcore.problems import get_problem
from mlcore.store.session import upgrade
from mlcore.stream.bus import EventBus

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROBLEM = "census_employment"
CENSUS = ROOT / "data" / "census_ma_employment"
UP_LINE = "stream service for"  # what `mlcore stream serve` prints once it is constructed


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on one port and data dir; ``kill`` is SIGKILL (no shutdown save:
    only the append-only file, fsynced per write, survives)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.dir, self.port = data_dir, port or free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start it (same dir and port as before) and wait until it answers PING."""
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
             "--save", "", "--protected-mode", "no"], stdout=log, stderr=log)
        log.close()
        end = time.monotonic() + timeout
        while True:
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=2)
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"redis-server on {self.port} did not come up "
                                       f"(see {self.dir / 'redis.log'})") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def stream_spec_text(stream: dict[str, Any]) -> str:
    """The census spec's YAML with its ``stream:`` section replaced by ``stream``."""
    data = yaml.safe_load((ROOT / "problems" / f"{PROBLEM}.yaml").read_text())
    data["stream"] = stream
    return yaml.safe_dump(data, sort_keys=False)


def make_home(base: Path, stream_url: str, stream: dict[str, Any]) -> Settings:
    """A fresh MLCORE_HOME under ``base`` (migrated SQLite metadata store, Feast definitions
    applied) and a problems dir with the census spec and this ``stream:`` section."""
    problems = base / "problems"
    problems.mkdir(parents=True)
    (problems / f"{PROBLEM}.yaml").write_text(stream_spec_text(stream))
    home = base / "home"
    home.mkdir()
    settings = Settings(home=home, problems_dir=problems, stream_url=stream_url,
                        database_url=None, airflow_url=None)
    upgrade(settings.db_url)
    apply_definitions(settings)
    return settings


def service_env(settings: Settings, failpoint: str | None = None) -> dict[str, str]:
    """The environment of a `mlcore stream serve` on ``settings`` (and one failpoint)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLCORE_DATABASE_URL", "MLCORE_FAILPOINT", "MLCORE_STALL",
                        "MLCORE_AIRFLOW_URL", "MLCORE_FEAST_CONFIG")}
    env.update(MLCORE_HOME=str(settings.home), MLCORE_PROBLEMS_DIR=str(settings.problems_dir),
               MLCORE_STREAM_URL=settings.stream_url, OMP_NUM_THREADS="1")
    if failpoint:
        env["MLCORE_FAILPOINT"] = failpoint
    return env


# everything a service start would import (Feast loads its offline and online store classes
# and its SQL registry lazily, when the store is opened)
_PRELOAD = ["mlcore.cli", "mlcore.backfill", "mlcore.cli_stream", "mlcore.streaming",
            "mlcore.feast.online",
            "mlcore.feast.sqlite_online", "feast.infra.offline_stores.dask",
            "feast.infra.registry.sql", "stream_harness"]


def _cli_main(env: dict[str, str], log: str, argv: list[str]) -> None:
    """In the forked child: stdout and stderr to ``log``, the environment ``env``, then the
    ``mlcore`` console script's own ``main(argv)``; exits with its code."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks into the log, on demand
    os.environ.clear()
    os.environ.update(env)
    os.chdir(env["MLCORE_HOME"])
    from mlcore.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launcher() -> Any:
    """The multiprocessing context the service processes are forked from: a fork server that
    imported mlcore (its CLI, the stream service, Feast) once. A start then costs a fork, not
    the ~10 CPU-seconds of imports a fresh ``.venv/bin/mlcore`` pays on this box, which is
    what makes 20+ kill-and-restart cycles fit in minutes. Each process is still a separate
    OS process running ``mlcore.cli:main`` (the ``mlcore`` console script's entry point) with
    the argv and environment given; SIGKILL ends it like any other."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def mlcore(settings: Settings, *args: str, log: Path, timeout: float = 120) -> str:
    """Run ``mlcore <args>`` on ``settings`` in a forked process; its output (raises when it
    fails)."""
    proc = launcher().Process(target=_cli_main, args=(service_env(settings), str(log),
                                                      list(args)), daemon=True)
    proc.start()
    proc.join(timeout)
    out = log.read_text(errors="replace")
    if proc.exitcode != 0:
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        raise RuntimeError(f"mlcore {' '.join(args)} failed ({proc.exitcode}):\n{out}")
    return out


@dataclass
class Run:
    """One start of the service: its process, log, failpoint, and how it ended."""

    number: int
    proc: Any  # multiprocessing.Process
    log: Path
    failpoint: str | None
    started: float
    killed_by_test: bool = False

    def up(self) -> bool:
        """It printed its start line (constructed: connected, definitions applied)."""
        return self.log.exists() and UP_LINE in self.log.read_text(errors="replace")

    @property
    def exitcode(self) -> int | None:
        """None while it runs; -9 after a SIGKILL (the test's or a failpoint's)."""
        return self.proc.exitcode


class ServiceRunner:
    """Starts the service (``mlcore stream serve --problem census_employment``) as a separate
    process, again and again (``launcher``); every start logs to its own file under ``logs``."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        logs.mkdir(parents=True, exist_ok=True)
        self.runs: list[Run] = []
        self.ctx = launcher()

    def start(self, failpoint: str | None = None) -> Run:
        """Start one service process."""
        number = len(self.runs) + 1
        log = self.logs / f"serve-{number:03d}.log"
        argv = ["stream", "serve", "--problem", PROBLEM]
        proc = self.ctx.Process(target=_cli_main, name=f"serve-{number}", daemon=True,
                                args=(service_env(self.settings, failpoint), str(log), argv))
        proc.start()
        run = Run(number, proc, log, failpoint, time.monotonic())
        self.runs.append(run)
        return run

    def wait_up(self, run: Run, timeout: float = 60.0) -> bool:
        """True once ``run`` is up; False if it exited first (e.g. Redis was down)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if run.up():
                return True
            if run.exitcode is not None:
                return run.up()
            time.sleep(0.02)
        raise TimeoutError(f"service run {run.number} not up in {timeout} s:\n"
                           f"{run.log.read_text(errors='replace')[-3000:]}")

    def kill(self, run: Run) -> None:
        """SIGKILL the service (if still alive) and reap it."""
        if run.exitcode is None:
            run.killed_by_test = True
            run.proc.kill()
        run.proc.join(30)

    def stop(self, run: Run, timeout: float = 60.0) -> int | None:
        """SIGTERM (the service finishes its read and stops); its exit code."""
        if run.exitcode is None:
            run.proc.terminate()
        run.proc.join(timeout)
        if run.exitcode is None:
            self.kill(run)
        return run.exitcode

    def close(self) -> None:
        """Kill whatever still runs."""
        for run in self.runs:
            if run.exitcode is None:
                run.proc.kill()
                run.proc.join(30)


class Producer(threading.Thread):
    """Sends ``events`` in chunks, paced over ``seconds``; a chunk whose send failed (Redis down,
    connection reset) is sent again, whole, until Redis takes it (at-least-once: the stream may
    then hold an event twice; the service's ledger keeps it once). ``acked``: the event IDs of
    the chunks Redis confirmed."""

    def __init__(self, url: str, events: list[dict[str, Any]], seconds: float,
                 chunk: int = 20) -> None:
        super().__init__(name="producer", daemon=True)
        self.url, self.events, self.seconds, self.chunk = url, events, seconds, chunk
        self.acked: list[str] = []
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._send_all()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _send_all(self) -> None:
        chunks = [self.events[i:i + self.chunk] for i in range(0, len(self.events), self.chunk)]
        pause = self.seconds / max(1, len(chunks))
        bus = EventBus(self.url, PROBLEM)
        start = time.monotonic()
        try:
            for n, chunk in enumerate(chunks):
                while True:
                    try:
                        bus.add(chunk)
                        break
                    except (redis.ConnectionError, redis.TimeoutError, OSError):
                        self.failures += 1
                        time.sleep(0.2)
                        bus.close()
                        bus = EventBus(self.url, PROBLEM)
                self.acked += [e["event_id"] for e in chunk]
                ahead = (n + 1) * pause - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        finally:
            bus.close()


FEATURES = ["AGEP", "SCHL", "MAR", "RELP", "DIS", "ESP", "CIT", "MIG", "MIL", "ANC",
            "NATIVITY", "DEAR", "DEYE", "DREM", "SEX", "RAC1P"]


@dataclass
class EventPlan:
    """What the kill test sends and what must come out.

    ``send``: the events in send order (re-sent duplicates included); ``valid`` / ``invalid``:
    event ID -> event; ``newest``: entity -> its valid event with the latest event time."""

    send: list[dict[str, Any]]
    valid: dict[str, dict[str, Any]]
    invalid: dict[str, dict[str, Any]]
    newest: dict[int, dict[str, Any]]
    duplicates: int
    late_older: int


def _event(row: dict[str, Any], year: int, tag: str) -> dict[str, Any]:
    event = {"event_id": f"{row['id']}-{year}-{tag}", "id": int(row["id"]), "year": year,
             "AGEP": float(row["AGEP"]), "employed": int(row["employed"])}
    event.update({c: int(row[c]) for c in FEATURES[1:]})
    return event


def _changed(event: dict[str, Any], year: int, rng: random.Random) -> dict[str, Any]:
    """The entity's answers of another year: older or younger by the years between, another
    marital status and education (so the online store shows which year won)."""
    out = {**event, "event_id": f"{event['id']}-{year}-v", "year": year,
           "AGEP": float(min(94, max(16, event["AGEP"] + year - event["year"])))}
    out["MAR"] = rng.choice([m for m in (1, 2, 3, 4, 5) if m != event["MAR"]])
    out["SCHL"] = rng.choice([s for s in range(25) if s != event["SCHL"]])
    out["employed"] = 1 - event["employed"]
    return out


def census_plan(rows: int, seed: int = 18) -> EventPlan:
    """Events from ``rows`` real 2015 census rows, in a send order with: a 2016 event for a
    third of the entities (after their 2015 one), for a sixth the 2016 event first and the 2015
    one near the end (late, older), a 2014 event for a tenth at the very end (late, older than
    both), ~10% re-sent duplicates (same ``event_id``, later), and invalid events (AGEP 150,
    outside the spec's 0-120) for new entities and, dated 2017, for known ones."""
    rng = random.Random(seed)
    frame = pd.read_parquet(CENSUS / "employment_2015.parquet").head(rows)
    base = [_event(r, 2015, "a") for r in frame.to_dict("records")]
    timeline: list[tuple[float, dict[str, Any]]] = []
    late = 0
    for event in base:
        pick = rng.random()
        if pick < 1 / 6:  # newer first, the older one late
            newer = _changed(event, 2016, rng)
            at = rng.uniform(0, 0.6)
            timeline += [(at, newer), (rng.uniform(0.85, 1.0), event)]
            late += 1
        elif pick < 1 / 2:
            at = rng.uniform(0, 0.8)
            timeline += [(at, event), (rng.uniform(at, 0.9), _changed(event, 2016, rng))]
        else:
            timeline.append((rng.uniform(0, 0.9), event))
        if rng.random() < 0.1:
            timeline.append((rng.uniform(0.95, 1.0), _changed(event, 2014, rng)))
            late += 1
    valid = {e["event_id"]: e for _, e in timeline}
    invalid: dict[str, dict[str, Any]] = {}
    for n, event in enumerate(rng.sample(base, max(10, rows // 40))):
        bad = {**_changed(event, 2017, rng), "AGEP": 150.0}
        if n % 2:  # an entity that never sent a valid event
            bad["id"] = 10_000_000 + int(event["id"])
        bad["event_id"] = f"bad-{bad['id']}-2017"
        invalid[bad["event_id"]] = bad
        timeline.append((rng.uniform(0, 1), bad))
    sent = list(timeline)
    for at, event in rng.sample(timeline, len(timeline) // 10):
        sent.append((rng.uniform(at, 1.0) + 1e-9, dict(event)))
    sent.sort(key=lambda pair: pair[0])
    newest: dict[int, dict[str, Any]] = {}
    for event in valid.values():
        if event["id"] not in newest or event["year"] > newest[event["id"]]["year"]:
            newest[event["id"]] = event
    return EventPlan([e for _, e in sent], valid, invalid, newest,
                     len(sent) - len(timeline), late)


def spec_of(settings: Settings) -> Any:
    """The census spec of ``settings``' problems dir (with its test ``stream:`` section)."""
    return get_problem(PROBLEM, settings.problems_dir)
