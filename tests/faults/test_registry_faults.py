"""Registry faults on SQLite and PostgreSQL: the ``champion`` alias under real concurrency and
crashes, artifacts an attacker has touched, and history the database refuses to rewrite.

What each test proves, and how it could fail:

* Racing promotions (50 OS processes): the alias is a compare-and-set, so at every instant
  (sampled by one SQL statement, a consistent snapshot) exactly one champion row exists and it
  equals the newest history entry; afterwards the history is one unbroken chain where every
  version lands exactly once. A last-writer-wins UPDATE would fork the chain.
* SIGKILL between registering a version and committing the alias move: readers keep the old
  champion, the history is unchanged, the new version stays registered, and the next move is
  not blocked by a lock the dead writer held.
* Tampered or malicious artifacts are refused *before* unpickling. Every malicious case uses a
  payload that provably executes code when ``joblib.load`` runs on it (checked in a subprocess),
  so a load that slipped through would leave a marker file behind.
* ``model_versions`` and ``alias_history`` are write-once: raw UPDATE/DELETE fail in the DB.
* Rollback after a race returns to the holder the last promotion replaced, logged as such.

They found three holes, fixed with them: ``load_model`` hashed the file and then opened it again
to unpickle (a swap in between loaded unverified bytes); SQLite's REPLACE and PostgreSQL's
TRUNCATE bypassed the write-once row triggers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from registry_stub import register_artifact, register_stub, stub_dataset
from sklearn.dummy import DummyClassifier
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from mlcore.model import registry
from mlcore.model.registry import (
    AliasConflict,
    ArtifactTampered,
    alias_holder,
    alias_log,
    get_version,
    load_model,
    move_alias,
)
from mlcore.promotion import rollback
from mlcore.store.session import get_engine, session_scope

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "census_employment"

DATASET = stub_dataset(("2015", "2016"), (4, 4), holdout=("2017",), method="newest_batch")


# --- helpers ------------------------------------------------------------------------------------

def register(spec, settings, uri: str = "/nowhere/model.joblib", sha: str = "0" * 64) -> int:
    """Register a version (no artifact needed unless the test loads it)."""
    return register_stub(spec, settings, algorithm="dummy", artifact_uri=uri,
                         artifact_sha256=sha, dataset=DATASET)


def register_model(spec, settings, constant: int = 0) -> int:
    """Save a tiny fitted model that always predicts ``constant`` and register it."""
    model = DummyClassifier(strategy="constant", constant=constant)
    model.fit(np.zeros((4, 1)), [0, 1, 0, 1])
    return register_artifact(spec, settings, model, algorithm="dummy", dataset=DATASET)


def predicts(settings, version: int) -> int:
    """What the registered model ``version`` predicts (loaded through the verified path)."""
    model = load_model(get_version(PROBLEM, version, settings.db_url), settings)
    return int(model.predict(np.zeros((1, 1)))[0])


def chain_breaks(log: list[dict]) -> list[tuple[int, dict, dict]]:
    """Entries whose ``from`` is not the previous entry's ``to`` (empty for a sound history)."""
    return [(i, prev, cur) for i, (prev, cur) in enumerate(zip(log, log[1:], strict=False), 1)
            if cur["from"] != prev["to"]]


def rows(settings, table: str) -> list[dict]:
    """Every row of ``table`` as plain dicts, by id."""
    with session_scope(settings.db_url) as s:
        return [dict(r) for r in s.execute(text(f"SELECT * FROM {table} ORDER BY id")).mappings()]


def child_env(settings, failpoint: str | None = None) -> dict[str, str]:
    """The environment a child process needs to build the same Settings from ``MLCORE_*``."""
    env = {**os.environ, "MLCORE_HOME": str(settings.home),
           "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"),
           "MLCORE_FEATURE_REPO": str(ROOT / "feature_repo")}
    env.pop("MLCORE_DATABASE_URL", None)
    if settings.database_url:
        env["MLCORE_DATABASE_URL"] = settings.database_url
    env.pop("MLCORE_FAILPOINT", None)
    if failpoint:
        env["MLCORE_FAILPOINT"] = failpoint
    return env


# --- racing promotions --------------------------------------------------------------------------

# One statement, so one snapshot on both databases (SQLite WAL read transaction; PostgreSQL
# statement snapshot). max() instead of a bare subquery so that two champion rows would be
# recorded as a violation rather than crash the monitor.
SNAPSHOT = text("""
    SELECT (SELECT count(*) FROM aliases WHERE problem = :p AND alias = 'champion'),
           (SELECT max(version) FROM aliases WHERE problem = :p AND alias = 'champion'),
           (SELECT to_version FROM alias_history WHERE problem = :p AND alias = 'champion'
            ORDER BY id DESC LIMIT 1)
""")


class Monitor(threading.Thread):
    """Samples the champion continuously; records every inconsistent snapshot."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(daemon=True)
        self.url, self.problem = url, problem
        self.stop = threading.Event()
        self.samples = 0
        self.holders: set[int] = set()
        self.violations: list[tuple[int, int | None, int | None]] = []
        self.error: BaseException | None = None

    def check(self, count: int, holder: int | None, newest: int | None) -> None:
        self.samples += 1
        self.holders.add(holder)
        expected = (0, None) if newest is None else (1, newest)
        if (count, holder) != expected:
            self.violations.append((count, holder, newest))

    def run(self) -> None:
        args = {"connect_args": {"timeout": 30}} if self.url.startswith("sqlite") else {}
        engine = create_engine(self.url, **args)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                while True:
                    last = self.stop.is_set()  # one more sample after the workers are done
                    self.check(*conn.execute(SNAPSHOT, {"p": self.problem}).one())
                    if last:
                        return
                    time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test's assertion
            self.error = exc
        finally:
            engine.dispose()


def _promote_until_landed(url: str, problem: str, mine: int, start, results, attempts: int):
    """Worker process: compare-and-set the champion to ``mine`` until it lands once."""
    get_engine.cache_clear()  # the parent's engine (its pool emptied before the fork) is not ours
    start.wait(60)
    rng = random.Random(mine)
    try:
        for attempt in range(1, attempts + 1):
            holder = alias_holder(problem, url)
            try:
                move_alias(problem, expected=holder, new=mine, reason=f"race {mine}", url=url,
                           actor=f"worker-{mine}")
            except AliasConflict:
                time.sleep(rng.uniform(0, 0.004 * min(attempt, 10)))
                continue
            results.put((mine, attempt, None))
            return
        results.put((mine, None, f"gave up after {attempts} attempts"))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put((mine, None, repr(exc)))


def race(settings, versions: list[int], attempts: int = 200, timeout: float = 120):
    """Promote every version from its own process at once, watched by a Monitor.

    Returns ({version: attempts or error}, exit codes, monitor).
    """
    ctx = mp.get_context("fork")
    get_engine(settings.db_url).dispose()  # no pooled connection may cross the fork
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_promote_until_landed, daemon=True,
                         args=(settings.db_url, PROBLEM, v, start, results, attempts))
             for v in versions]
    for p in procs:
        p.start()
    monitor = Monitor(settings.db_url, PROBLEM)  # started after the forks: no thread is copied
    monitor.start()
    outcomes: dict[int, int | str] = {}
    try:
        start.set()
        deadline = time.monotonic() + timeout
        while len(outcomes) < len(versions) and time.monotonic() < deadline:
            try:
                version, landed_after, error = results.get(timeout=1)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            outcomes[version] = landed_after if error is None else error
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        monitor.stop.set()
        monitor.join(30)
    return outcomes, [p.exitcode for p in procs], monitor


def assert_race_was_clean(outcomes, exitcodes, monitor, versions: list[int],
                          min_samples: int = 20) -> None:
    errors = sorted((v, o) for v, o in outcomes.items() if not isinstance(o, int))
    assert errors == [], f"{len(errors)} workers failed, e.g. {errors[:3]}"
    assert sorted(outcomes) == versions, "a worker never reported"
    assert exitcodes == [0] * len(versions)
    assert monitor.error is None, f"monitor crashed: {monitor.error!r}"
    assert monitor.violations == [], "inconsistent (count, holder, newest history to) snapshots"
    assert monitor.samples >= min_samples, f"only {monitor.samples} samples: the race went unseen"


def assert_sound_history(log: list[dict], settings) -> None:
    assert chain_breaks(log) == []
    assert log[0]["from"] is None
    assert alias_holder(PROBLEM, settings.db_url) == log[-1]["to"]


def test_fifty_concurrent_promotions_keep_one_champion_and_one_chain(spec, settings):
    seed = register(spec, settings)
    move_alias(PROBLEM, expected=None, new=seed, reason="seed", url=settings.db_url,
               actor="seed")
    versions = [register(spec, settings) for _ in range(50)]

    outcomes, exitcodes, monitor = race(settings, versions)

    assert_race_was_clean(outcomes, exitcodes, monitor, versions)
    assert len(monitor.holders) >= 5, f"the monitor saw only {monitor.holders}"
    assert max(outcomes.values()) > 1, "no worker ever conflicted: nothing raced"
    log = alias_log(PROBLEM, settings.db_url)
    assert len(log) == 51
    assert_sound_history(log, settings)
    assert Counter(e["to"] for e in log) == Counter([seed, *versions])  # each lands exactly once
    assert all((e["action"], e["actor"]) == ("promote", f"worker-{e['to']}") for e in log[1:])


def test_rollback_after_a_race_restores_the_replaced_holder(spec, settings):
    seed = register(spec, settings)
    move_alias(PROBLEM, expected=None, new=seed, reason="seed", url=settings.db_url)
    versions = [register(spec, settings) for _ in range(8)]
    assert_race_was_clean(*race(settings, versions), versions, min_samples=1)
    before = alias_log(PROBLEM, settings.db_url)

    assert rollback(PROBLEM, "bad model", settings.db_url, actor="oncall") == (
        before[-1]["to"], before[-1]["from"])

    log = alias_log(PROBLEM, settings.db_url)
    assert log[:-1] == before
    assert alias_holder(PROBLEM, settings.db_url) == before[-1]["from"]
    last = log[-1]
    assert (last["from"], last["to"], last["action"], last["actor"], last["reason"]) == (
        before[-1]["to"], before[-1]["from"], "rollback", "oncall", "bad model")
    assert_sound_history(log, settings)

    # A second rollback goes one promotion further back; it does not undo the first rollback.
    rollback(PROBLEM, "still bad", settings.db_url)
    assert alias_holder(PROBLEM, settings.db_url) == before[-2]["from"]
    assert_sound_history(alias_log(PROBLEM, settings.db_url), settings)


# --- a crash between registering and switching ---------------------------------------------------

# Registers a model that predicts 1, then moves the champion to it. Under the failpoint the
# process is SIGKILLed after the alias UPDATE and history INSERT are flushed, before COMMIT.
REGISTER_AND_PROMOTE = """
import json, sys
import numpy as np
from sklearn.dummy import DummyClassifier
from mlcore.config import Settings
from mlcore.model.splits import DatasetRef
from mlcore.problems import get_problem
from mlcore.model.registry import move_alias, register_version
from mlcore.training import save_artifact

settings = Settings()
spec = get_problem("census_employment", settings.problems_dir)
old, dataset = int(sys.argv[1]), DatasetRef.from_dict(json.loads(sys.argv[2]))
model = DummyClassifier(strategy="constant", constant=1).fit(np.zeros((4, 1)), [0, 1, 0, 1])
uri, sha = save_artifact(model, settings, spec.name)
new = register_version(spec, settings, algorithm="dummy", artifact_uri=uri, artifact_sha256=sha,
                       hyperparameters={}, dataset=dataset, train_rows=4, validation={},
                       timings={})
print(new, flush=True)
move_alias(spec.name, expected=old, new=new, reason="crash test", url=settings.db_url)
print("committed", flush=True)
"""

PROMOTE = """
import sys
from mlcore.config import Settings
from mlcore.model.registry import move_alias

settings = Settings()
move_alias("census_employment", expected=int(sys.argv[1]), new=int(sys.argv[2]),
           reason="after the crash", url=settings.db_url)
"""


def run_child(code: str, args: list, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=ROOT,
                          timeout=120, capture_output=True, text=True)


def test_sigkill_before_the_alias_commit_keeps_the_old_champion(spec, settings):
    old = register_model(spec, settings, constant=0)
    move_alias(PROBLEM, expected=None, new=old, reason="first", url=settings.db_url)
    history = alias_log(PROBLEM, settings.db_url)

    crashed = run_child(REGISTER_AND_PROMOTE, [old, json.dumps(DATASET.to_dict())],
                        child_env(settings, failpoint="registry.before_alias_commit"))

    assert crashed.returncode == -9, crashed.stderr  # died by SIGKILL at the failpoint
    assert "committed" not in crashed.stdout
    new = int(crashed.stdout.split()[0])
    assert new == old + 1
    assert get_version(PROBLEM, new, settings.db_url).version == new  # registered, not promoted
    assert alias_holder(PROBLEM, settings.db_url) == old
    assert alias_log(PROBLEM, settings.db_url) == history
    assert predicts(settings, alias_holder(PROBLEM, settings.db_url)) == 0  # readers: the old one

    # The dead writer's lock is gone: the next move (a fresh process, bounded in time) lands.
    after = run_child(PROMOTE, [old, new], child_env(settings))
    assert after.returncode == 0, after.stderr
    assert alias_holder(PROBLEM, settings.db_url) == new
    assert predicts(settings, new) == 1
    log = alias_log(PROBLEM, settings.db_url)
    assert log[:-1] == history and (log[-1]["from"], log[-1]["to"]) == (old, new)


# --- tampered and malicious artifacts ------------------------------------------------------------

class Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path: Path, marker: Path) -> str:
    """A joblib file that creates ``marker`` when loaded. Returns its SHA-256."""
    import joblib

    from mlcore.batches import sha256_file

    joblib.dump(Payload(marker), path)
    return sha256_file(path)


def test_a_flipped_byte_is_refused_naming_the_version(spec, settings):
    version = register_model(spec, settings)
    assert predicts(settings, version) == 0  # intact, it loads
    path = Path(get_version(PROBLEM, version, settings.db_url).artifact_uri)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(ArtifactTampered, match=rf"'{PROBLEM}' v{version}: .*does not match"):
        predicts(settings, version)


def test_malicious_artifacts_are_refused_before_unpickling(spec, settings, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.joblib"
    evil_sha = write_payload(evil, marker)
    artifacts = settings.home / "artifacts" / f"problem={PROBLEM}"

    # The payload is real: plain joblib.load (in a throwaway process) runs it.
    proof = tmp_path / "proof-pwned"
    write_payload(tmp_path / "proof.joblib", proof)
    loaded = run_child("import joblib, sys; joblib.load(sys.argv[1])", [tmp_path / "proof.joblib"],
                       dict(os.environ))
    assert loaded.returncode == 0, loaded.stderr
    assert proof.exists(), "the payload does not execute on load: this test would prove nothing"

    replaced = register_model(spec, settings)  # (a) a registered file overwritten: hash differs
    shutil.copyfile(evil, get_version(PROBLEM, replaced, settings.db_url).artifact_uri)
    outside = register(spec, settings, str(evil), evil_sha)  # (b) right hash, outside the root
    link = artifacts / "sha256=evil" / "model.joblib"  # (c) inside the root, links outside
    link.parent.mkdir(parents=True)
    link.symlink_to(evil)
    linked = register(spec, settings, str(link), evil_sha)
    sneaky = settings.home / "evil.joblib"  # (d) under artifacts by text only: artifacts/../
    shutil.copyfile(evil, sneaky)
    dotdot = register(spec, settings, str(settings.home / "artifacts" / ".." / "evil.joblib"),
                      evil_sha)

    for version, why in [(replaced, "does not match"), (outside, "outside"),
                         (linked, "outside"), (dotdot, "outside")]:
        with pytest.raises(ArtifactTampered, match=rf"'{PROBLEM}' v{version}: .*{why}"):
            load_model(get_version(PROBLEM, version, settings.db_url), settings)
        assert not marker.exists(), f"v{version}: the payload ran"


def test_an_artifact_swapped_after_the_hash_check_is_never_unpickled(spec, settings, tmp_path,
                                                                      monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.joblib"
    write_payload(evil, marker)
    version = register_model(spec, settings)
    mv = get_version(PROBLEM, version, settings.db_url)
    real_sha256 = registry.hashlib.sha256

    def hash_then_swap(data: bytes = b""):  # the attacker wins the race right after hashing
        digest = real_sha256(data)
        shutil.copyfile(evil, mv.artifact_uri)
        return digest

    monkeypatch.setattr(registry.hashlib, "sha256", hash_then_swap)
    try:
        model = load_model(mv, settings)
    except ArtifactTampered:
        model = None  # refusing is fine; executing the payload is not
    monkeypatch.undo()
    assert not marker.exists(), "the swapped-in payload was unpickled"
    assert model is not None and hasattr(model, "predict_proba")  # the checked bytes loaded


# --- write-once tables ---------------------------------------------------------------------------

WRITES = [
    ("model_versions", "UPDATE model_versions SET artifact_sha256 = 'f' WHERE version = 1"),
    ("model_versions", "DELETE FROM model_versions WHERE version = 2"),
    ("alias_history", "UPDATE alias_history SET to_version = 1, reason = 'rewritten'"),
    ("alias_history", "DELETE FROM alias_history"),
]


def seeded_history(spec, settings) -> None:
    for _ in range(2):
        register(spec, settings)
    move_alias(PROBLEM, expected=None, new=1, reason="first", url=settings.db_url)
    move_alias(PROBLEM, expected=1, new=2, reason="second", url=settings.db_url)


def assert_refused_and_unchanged(settings, table: str, sql: str) -> None:
    before = rows(settings, table)
    assert len(before) == 2
    with pytest.raises(DBAPIError, match=f"{table} rows are write-once"):
        with session_scope(settings.db_url) as s:
            s.execute(text(sql))
    assert rows(settings, table) == before


@pytest.mark.parametrize("table, sql", WRITES, ids=[w[1].split()[0] + "-" + w[0] for w in WRITES])
def test_raw_updates_and_deletes_of_write_once_rows_fail(spec, settings, table, sql):
    seeded_history(spec, settings)
    assert_refused_and_unchanged(settings, table, sql)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_upsert_onto_a_version_fails_on_postgresql(spec, settings):
    seeded_history(spec, settings)
    assert_refused_and_unchanged(
        settings, "model_versions",
        "INSERT INTO model_versions SELECT * FROM model_versions WHERE version = 1 "
        "ON CONFLICT (problem, version) DO UPDATE SET artifact_sha256 = 'f'")


# SQLite's REPLACE conflict resolution deletes the clashing row without firing DELETE triggers
# (unless PRAGMA recursive_triggers is on); PostgreSQL row triggers do not fire on TRUNCATE.
MV_COLUMNS = ("id, problem, version, algorithm, hyperparameters, artifact_uri, {sha}, "
              "training_batch_ids, data_hash, train_rows, metrics, code_version, timings, "
              "spec_hash, reproducibility, created_at")
BYPASSES = [
    pytest.param("sqlite", "model_versions",
                 f"REPLACE INTO model_versions ({MV_COLUMNS.format(sha='artifact_sha256')}) "
                 f"SELECT {MV_COLUMNS.format(sha=repr('f'))} FROM model_versions WHERE version = 1",
                 id="sqlite-replace-model_versions"),
    pytest.param("sqlite", "alias_history",
                 "REPLACE INTO alias_history (id, problem, alias, from_version, to_version, "
                 "action, actor, reason, created_at) SELECT id, problem, alias, from_version, 1, "
                 "action, 'mallory', 'rewritten', created_at FROM alias_history",
                 id="sqlite-replace-alias_history"),
    pytest.param("postgresql", "alias_history", "TRUNCATE alias_history",
                 id="postgresql-truncate-alias_history"),
]


@pytest.mark.parametrize("db_url, table, sql", BYPASSES, indirect=["db_url"])
def test_write_once_rows_cannot_be_replaced_or_truncated(spec, settings, table, sql):
    seeded_history(spec, settings)
    assert_refused_and_unchanged(settings, table, sql)
