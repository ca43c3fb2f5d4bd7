"""Scale curve: every batch stage at 100k, 1M and 10M rows; wall time, peak RSS, cost per row.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_scale.py [--sizes 100000 1000000 10000000] [--stages ...]
                                     [--tolerance 1.5] [--threads 1] [--json OUT] [--quick]
    python benchmarks/bench_scale.py --render A.json B.json   # one table from several runs
    python benchmarks/bench_scale.py --executor celery --workers 2 --sizes 100000 1000000
        # the chain's stages as DAG runs on Celery workers, PostgreSQL stores (_scale_celery.py)

Per size N: input synthesized by ``bench_ingest.write_input`` (real 2015-2018 rows resampled
with replacement, unique ids, the row's survey year as event time: ``<year>-12-31``), a fresh
MLCORE home (SQLite store, the embedded Feast repo) in a temp dir outside the repo, then the
stages in order, each timed around the one mlcore call:
ingest ``ingest_batch`` -> features ``materialize_batch`` -> retrieval ``build_dataset`` (what
``retrain_model`` builds its training frame with: Feast ``get_historical_features``, split, write)
-> drift ``detect_drift`` -> scoring ``score_batch``. The champion is trained once
(``train_contender``, the spec's ``--champion`` candidate) on the smallest size's dataset and
installed (artifact + reference profile copied, version registered) in every other home.

Each stage runs in its own process, forked from a server that imported mlcore, Feast,
Evidently and scikit-learn once (a fresh interpreter per stage costs ~5-8 s of imports; a fork
makes ``--quick`` fit in a minute). Its peak RSS is ``ru_maxrss`` from ``wait4`` on that child:
the pages it inherits and touches count, so its RSS when the stage starts (``base``, ~270 MiB)
is a little below a fresh interpreter's with the same imports (~390 MiB). A watchdog kills a
stage past ``--kill-rss-gib`` or ``--stage-timeout``; that is recorded as a defect.
Linear means: seconds per row at the largest size <= ``--tolerance`` x at each smaller size,
and peak RSS above base per row likewise; over 8 GiB peak is a defect whatever the curve.
``--verify`` (on with ``--quick``; at the largest size <= 2M) checks the bounded retrieval and
the streamed drift sample against the one-piece versions; ``--profile STAGE``: cProfile top 35.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # Feast imports feature_repo/*.py: write nothing into the repo
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    census_spec,
    code,
    init_home,
    load,
    log,
    machine,
    new_settings,
    utc_now,
    work_parent,
)
from bench_ingest import load_real, write_input  # noqa: E402

STAGES = ("ingest", "features", "retrieval", "drift", "scoring")
SIZES = (100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (2_000, 8_000)
RSS_LIMIT_MIB = 8 * 1024
VERIFY_MAX_ROWS = 2_000_000
# Sub-steps timed (and their highest RSS sampled) inside a stage's child by wrapping names.
SUBSTEPS: dict[str, list[tuple[str, str, str]]] = {
    "features": [("mlcore.features", "write_offline", "write offline partition"),
                 ("mlcore.feast.store", "write_online",
                  "online write (mlcore.feast.sqlite_online)"),
                 ("feast", "FeatureStore.materialize", "Feast materialize (online store)")],
    "retrieval": [("mlcore.feast.bounded", "historical_features", "Feast join in one piece"),
                  ("mlcore.feast.bounded", "_to_buckets", "split into key-hash buckets"),
                  ("mlcore.feast.bounded", "_join_bucket", "Feast join per bucket"),
                  ("mlcore.datasets", "frame_hash", "frame hashes")],
    "drift": [("mlcore.monitoring", "read_curated", "read curated batch"),
              ("mlcore.monitoring", "measure_drift", "Evidently drift step")],
    "scoring": [("mlcore.feast.own_partition", "own_partition_features", "features: own partition"),
                ("mlcore.feast.bounded", "historical_features", "Feast join in one piece"),
                ("mlcore.feast.bounded", "_to_buckets", "split into key-hash buckets"),
                ("mlcore.feast.bounded", "_join_bucket", "Feast join per bucket"),
                ("mlcore.scoring", "predict_proba", "predict_proba"),
                ("mlcore.scoring", "_store", "store predictions")],
}


# ---------------------------------------------------------------------------- stage child

def _settings(home: str) -> Any:
    return new_settings(Path(home))


def _setup(cmd: dict[str, Any], settings: Any, spec: Any) -> Any:
    return init_home(settings)


def _offline_only(cmd: dict[str, Any], settings: Any, spec: Any) -> Any:
    """The offline partition and its Materialization row without the online write: what the
    later stages need when the features stage was not run or did not finish."""
    from mlcore.data.io import read_curated
    from mlcore.features import engineer, write_offline
    from mlcore.store.catalog import get_batch
    from mlcore.store.models import Materialization
    from mlcore.store.session import session_scope

    frame = engineer(read_curated(get_batch(spec.name, cmd["batch"], settings.db_url)), spec)
    dest = settings.partition("features", spec.name, cmd["batch"])
    write_offline(frame, dest)
    lo, hi = frame["event_timestamp"].min(), frame["event_timestamp"].max()
    with session_scope(settings.db_url) as s:
        s.add(Materialization(problem=spec.name, batch_id=cmd["batch"], offline_uri=str(dest),
                              feature_view=spec.feature_view, rows=len(frame),
                              window_start=lo.to_pydatetime(), window_end=hi.to_pydatetime()))
    return len(frame)


def _train(cmd: dict[str, Any], settings: Any, spec: Any) -> Any:
    from mlcore.config import TrainConfig
    from mlcore.model.registry import move_alias
    from mlcore.model.splits import DatasetRef
    from mlcore.training import train_contender

    ref = train_contender(spec, DatasetRef.from_dict(cmd["dataset"]),
                          TrainConfig(algorithm=cmd["algorithm"]), settings)
    move_alias(spec.name, expected=None, new=ref.version, reason="bench_scale champion",
               url=settings.db_url)
    return ref.to_dict()


def _install(cmd: dict[str, Any], settings: Any, spec: Any) -> Any:
    """Register the champion trained in another home here: same bytes, paths rewritten."""
    from mlcore.model.registry import alias_holder, get_version, move_alias, register_version
    from mlcore.model.splits import DatasetRef

    src = _settings(cmd["from_home"])
    mv = get_version(spec.name, alias_holder(spec.name, src.db_url) or 0, src.db_url)
    old_dir = Path(mv.artifact_uri).parent
    new_dir = settings.home / old_dir.relative_to(src.home)
    shutil.copytree(old_dir, new_dir)
    record = json.loads(json.dumps(mv.reproducibility))
    profile = record["reference_profile"]
    profile["uri"] = str(new_dir / Path(profile["uri"]).name)
    version = register_version(
        spec, settings, algorithm=mv.algorithm, artifact_uri=str(new_dir / "model.joblib"),
        artifact_sha256=mv.artifact_sha256, hyperparameters=mv.hyperparameters,
        dataset=DatasetRef.from_dict(record["dataset"]), train_rows=mv.train_rows,
        validation=mv.metrics["validation"], timings=mv.timings, reproducibility=record)
    move_alias(spec.name, expected=None, new=version, reason="bench_scale champion (copied)",
               url=settings.db_url)
    return version


def _verify(cmd: dict[str, Any], settings: Any, spec: Any) -> Any:
    """The bucketed retrieval (forced to 4 buckets) against Feast's join in one piece, and
    drift's streamed sample against ``DataFrame.sample`` of the whole batch."""
    import pandas as pd

    import mlcore.feast.bounded as ds
    from mlcore.feast.retrieval import historical_features
    from mlcore.store.catalog import published_batches

    found = {}
    batches = published_batches(spec.name, settings.db_url)
    for with_target in (True, False):
        want = historical_features(spec, batches, settings, with_target)
        ds.PIT_BUCKET_ROWS = -(-len(want) // 4)
        got = ds.point_in_time_features(spec, batches, settings, with_target)
        try:
            pd.testing.assert_frame_equal(got, want, check_exact=True)
            found[f"with_target={with_target}"] = f"identical ({len(got)} rows)"
        except AssertionError as exc:
            found[f"with_target={with_target}"] = f"DIFFERENT: {exc}"
    from mlcore.model.reference import sample_rows as _sample
    from mlcore.monitoring import read_curated, sample_curated

    batch, rows = batches[-1], -(-len(want) // 3)
    try:  # drift's streamed sample against DataFrame.sample of the whole batch
        pd.testing.assert_frame_equal(sample_curated(batch, rows),
                                      _sample(read_curated(batch), rows), check_exact=True)
        found["drift sample"] = f"identical ({rows} rows)"
    except AssertionError as exc:
        found["drift sample"] = f"DIFFERENT: {exc}"
    return found


def _measured(cmd: dict[str, Any], settings: Any, spec: Any) -> Any:
    from mlcore.datasets import build_dataset
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.monitoring import detect_drift
    from mlcore.scoring import score_batch

    stage, batch = cmd["stage"], cmd.get("batch", "")
    if stage == "ingest":
        m = ingest_batch(spec, cmd["src"], batch, settings)
        return {"rows": m.row_count, "quarantined": m.quarantine_count}
    if stage == "features":
        return {"rows": materialize_batch(spec, batch, settings).rows}
    if stage == "retrieval":
        ref = build_dataset(spec, settings)
        return {"rows": ref.train_rows + ref.holdout_rows, "dataset": ref.to_dict()}
    if stage == "drift":
        r = detect_drift(spec, batch, settings)
        return {"drift_share": r.drift_share, "rows_compared": r.details["rows"]}
    if stage == "scoring":
        s = score_batch(spec, batch, settings)
        return {"rows": s.rows, "predict_rows_per_s": s.rows_per_second}
    raise ValueError(f"unknown stage {stage!r}")


ACTIONS = {"setup": _setup, "offline_only": _offline_only, "train": _train,
           "install": _install, "verify": _verify, **dict.fromkeys(STAGES, _measured)}


class Steps:
    """Exclusive seconds and highest sampled RSS (every 50 ms) per wrapped sub-step."""

    def __init__(self, stage: str) -> None:
        import importlib
        import threading

        self.stack: list[str] = []
        self._inner: list[float] = []  # time of wrapped calls inside each open call
        self.seconds: dict[str, float] = {}
        self.rss: dict[str, float] = {}
        for module, attr, label in SUBSTEPS.get(stage, []):
            owner: Any = importlib.import_module(module)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            if hasattr(owner, name):  # a renamed function is simply not split out
                setattr(owner, name, self._wrap(label, getattr(owner, name)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _wrap(self, label: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.stack.append(label)
            self._inner.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                self.stack.pop()
                inner = self._inner.pop()
                self.seconds[label] = self.seconds.get(label, 0.0) + spent - inner
                if self._inner:
                    self._inner[-1] += spent
        return wrapped

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            tag = self.stack[-1] if self.stack else "(rest)"
            self.rss[tag] = max(self.rss.get(tag, 0.0), rss_mib(os.getpid()))

    def stop(self, total: float) -> dict[str, Any]:
        """Per sub-step: seconds and highest RSS; "(rest)" is the stage minus the sub-steps."""
        self._stop.set()
        self._thread.join()
        self.seconds["(rest)"] = total - sum(self.seconds.values())
        return {k: {"seconds": round(self.seconds[k], 2), "max_rss_mib": round(self.rss.get(k, 0))}
                for k in sorted(self.seconds, key=lambda k: -self.seconds[k])}


def rss_mib(pid: int) -> float:
    """Current resident set size of ``pid`` in MiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def run_in_child(cmd: dict[str, Any]) -> None:
    """Body of a forked stage child: run ``cmd``, write its JSON result to ``cmd['out']``."""
    result: dict[str, Any] = {"ok": False}
    try:
        settings, spec = _settings(cmd["home"]), census_spec()
        steps = Steps(cmd["stage"]) if cmd["stage"] in STAGES else None
        result["base_rss_mib"] = round(rss_mib(os.getpid()))
        profiler = None
        if cmd.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        result["value"] = ACTIONS[cmd["stage"]](cmd, settings, spec)
        result["seconds"] = time.perf_counter() - t0
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(35)
        result["steps"] = steps.stop(result["seconds"]) if steps else {}
        result["ok"] = True
    except BaseException as exc:  # reported to the parent, which decides what to do
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    Path(cmd["out"]).write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------------------- fork server

def serve() -> None:
    """Import everything once, then fork one child per JSON command read from stdin."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Feast prints progress to stdout: keep the protocol channel clean
    import evidently  # noqa: F401
    import feast  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    import mlcore.datasets  # noqa: F401
    import mlcore.monitoring  # noqa: F401
    import mlcore.scoring  # noqa: F401
    import mlcore.training  # noqa: F401

    proto.write(json.dumps({"ready": round(rss_mib(os.getpid()))}) + "\n")
    proto.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        proto.write(json.dumps(fork_and_watch(cmd)) + "\n")
        proto.flush()


def fork_and_watch(cmd: dict[str, Any]) -> dict[str, Any]:
    """Fork, run the command in the child, kill it past the RSS cap or the timeout."""
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            run_in_child(cmd)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    killed = None
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if (rss := rss_mib(pid)) > cmd["kill_rss_mib"]:
            killed = f"killed: RSS {rss:,.0f} MiB > {cmd['kill_rss_mib']:,.0f} MiB"
        elif time.perf_counter() - t0 > cmd["timeout"]:
            killed = f"killed: still running after {cmd['timeout']:,.0f} s"
        if killed:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.05)
    out = Path(cmd["out"])
    child = json.loads(out.read_text()) if out.is_file() else {"ok": False}
    out.unlink(missing_ok=True)
    if killed or not child.get("ok"):
        child["ok"] = False
        child["error"] = killed or child.get("error") or f"child exit status {status}"
    return {**child, "peak_rss_mib": round(usage.ru_maxrss / 1024), "process_s":
            round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------- parent

class Server:
    """The fork server as a subprocess; ``run`` sends it one command and waits for the result."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], cwd=work, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.work, self.args, self.calls = work, args, 0
        self.base_rss = json.loads(self._read())["ready"]

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"the fork server died (exit {self.proc.wait()})")
        return line

    def run(self, stage: str, home: Path, **extra: Any) -> dict[str, Any]:
        """Run one stage (or set-up action) in a fresh child; its result and peak RSS."""
        assert self.proc.stdin is not None
        self.calls += 1
        # The caps are for measured stages; set-up steps only get the timeout.
        cap = self.args.kill_rss_gib * 1024 if stage in STAGES else float("inf")
        cmd = {"stage": stage, "home": str(home), "out": str(self.work / f"r{self.calls}.json"),
               "kill_rss_mib": cap, "timeout": self.args.stage_timeout,
               "profile": stage in self.args.profile, **extra}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self._read())
        what = f"{result['seconds']:.2f} s" if result["ok"] else result["error"]
        log(f"  {stage:<12} {what} (child {result['process_s']:.2f} s); peak RSS "
            f"{result['peak_rss_mib']:,} MiB")
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def need(result: dict[str, Any], what: str) -> dict[str, Any]:
    """A set-up step's result, or stop: nothing after it can run."""
    if not result["ok"]:
        raise RuntimeError(f"{what} failed: {result['error']}")
    return result


def run_size(server: Server, n: int, base: Any, work: Path, args: argparse.Namespace,
             champion: Path | None, out: dict[str, Any], rnd: int = 1) -> Path:
    """Every stage at ``n`` rows in a fresh home, results into ``out``; the champion's home.

    Raises:
        RuntimeError: a step the rest depends on failed (its result is in ``out`` if measured).
    """
    home, batch = work / f"home-{n}-round{rnd}", f"scale-{n}"
    log(f"{n:,} rows: synthesizing input ...")
    src = write_input(work / f"input-{n}.parquet", n, base, seed=n)
    need(server.run("setup", home), "setup")
    measured = set(args.stages)
    out["ingest"] = server.run("ingest", home, batch=batch, src=str(src))
    need(out["ingest"], "ingest")
    src.unlink()
    if "features" in measured:
        out["features"] = server.run("features", home, batch=batch)
    if not out.get("features", {}).get("ok"):  # later stages need the offline partition
        need(server.run("offline_only", home, batch=batch), "offline features")
    if "retrieval" in measured or champion is None:
        out["retrieval"] = server.run("retrieval", home)
    if n == args.verify_at:
        out["verify"] = need(server.run("verify", home), "bucketed retrieval check")
        log(f"  bucketed retrieval vs one Feast join: {out['verify']['value']}")
    if champion is None:
        dataset = need(out["retrieval"], "retrieval")["value"]["dataset"]
        out["train"] = need(server.run("train", home, dataset=dataset,
                                       algorithm=args.champion), "champion training")
        champion = home
    else:
        need(server.run("install", home, from_home=str(champion)), "champion install")
    for stage in ("drift", "scoring"):
        if stage in measured:
            out[stage] = server.run(stage, home, batch=batch)
    for stage in [k for k in out if k not in measured and k not in ("train", "verify")]:
        del out[stage]
    if champion != home:
        shutil.rmtree(home)  # the champion's home stays: later sizes copy its artifact
    return champion


# ---------------------------------------------------------------------------- report

def _per_row(r: dict[str, Any], n: int) -> float:
    return float(r["seconds"]) / n


def _extra_per_row(r: dict[str, Any], n: int) -> float:
    return max(float(r["peak_rss_mib"]) - float(r["base_rss_mib"]), 0.0) / n


def verdict(stage: str, runs: dict[int, dict[str, Any]], tol: float) -> tuple[bool, str]:
    """Linear (time and memory) and under 8 GiB at every size, with the figures that decided."""
    ok_runs = {n: r for n, r in runs.items() if r.get("ok")}
    failed = [f"{n:,}: {r.get('error')}" for n, r in runs.items() if not r.get("ok")]
    if failed:
        return False, "DEFECT: " + "; ".join(failed)
    over = [n for n, r in ok_runs.items() if r["peak_rss_mib"] > RSS_LIMIT_MIB]
    sizes = sorted(ok_runs)
    if len(sizes) < 2:
        return not over, "one size only"
    big = sizes[-1]
    t = max(_per_row(ok_runs[big], big) / _per_row(ok_runs[m], m) for m in sizes[:-1])
    # Memory: only sizes whose peak rose >= 64 MiB above base (below that it is noise).
    grew = [m for m in sizes[:-1] if _extra_per_row(ok_runs[m], m) * m >= 64]
    mem = max((_extra_per_row(ok_runs[big], big) / _extra_per_row(ok_runs[m], m)
               for m in grew), default=0.0)
    ok = t <= tol and mem <= tol and not over
    why = (f"time/row at {big:,} = {t:.2f}x the smaller sizes' (max); extra RSS/row "
           + (f"{mem:.2f}x" if grew else "n/a (grew < 64 MiB)")
           + (f"; over 8 GiB at {', '.join(f'{n:,}' for n in over)}" if over else ""))
    return ok, ("linear: " if ok else "DEFECT: ") + why


def median_of(rounds: list[dict[int, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Per size and stage: the round with the median seconds (its sub-steps), with the median
    seconds and median peak RSS over the rounds and every round's seconds. A failed round wins
    (a defect in any round is reported, not hidden by the median)."""
    import statistics

    out: dict[int, dict[str, Any]] = {}
    for n in rounds[0]:
        out[n] = {}
        for stage in {st for r in rounds for st in r.get(n, {})}:
            runs = [r[n][stage] for r in rounds if stage in r.get(n, {})]
            if any(not x.get("ok") for x in runs):
                out[n][stage] = next(x for x in runs if not x.get("ok"))
                continue
            mid = sorted(runs, key=lambda x: x["seconds"])[(len(runs) - 1) // 2]
            out[n][stage] = {**mid, "seconds": statistics.median(x["seconds"] for x in runs),
                             "peak_rss_mib": int(statistics.median(x["peak_rss_mib"]
                                                                   for x in runs)),
                             "rounds_s": [round(x["seconds"], 2) for x in runs]}
    return out


def render(results: dict[int, dict[str, Any]], tol: float,
           meta: dict[str, Any]) -> tuple[str, bool]:
    """Markdown: the curve (stage x size), sub-steps, and the linearity verdict per stage."""
    sizes = sorted(results)
    ref = sizes[0]
    lines = [f"Run: {meta.get('started')} to {meta.get('ended')}; code {meta.get('code')}.",
             f"Machine: {meta.get('machine')}; load before {meta.get('load_before')}, after "
             f"{meta.get('load_after')}; OMP_NUM_THREADS={meta.get('threads')}; champion: "
             f"{meta.get('champion')}.", "",
             f"| stage | rows | seconds (median) | rounds s | rows/s | peak RSS MiB (median) | "
             f"base MiB | s/row vs {ref:,} | s/row vs previous size |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    all_ok = True
    for stage in (*STAGES, "train"):
        prev = None
        for n in sizes:
            r = results[n].get(stage)
            if r is None:
                continue
            if not r.get("ok"):
                lines.append(f"| {stage} | {n:,} | **{r.get('error')}** | | | "
                             f"{r['peak_rss_mib']:,} | | | |")
                continue
            first = results[ref].get(stage)
            vs_ref = (f"{_per_row(r, n) / _per_row(first, ref):.2f}x"
                      if first and first.get("ok") else "-")
            vs_prev = f"{_per_row(r, n) / _per_row(*prev):.2f}x" if prev else "-"
            each = " / ".join(f"{x:.2f}" for x in r.get("rounds_s", [r["seconds"]]))
            lines.append(f"| {stage} | {n:,} | {r['seconds']:.2f} | {each} | "
                         f"{n / r['seconds']:,.0f} | {r['peak_rss_mib']:,} | "
                         f"{r['base_rss_mib']:,} | {vs_ref} | {vs_prev} |")
            prev = (r, n)
    for why in meta.get("stopped", []):
        all_ok = False
        lines.append(f"\n**DEFECT: stopped** ({why})")
    lines += ["", "| stage | verdict |", "|---|---|"]
    for stage in STAGES:
        runs = {n: results[n][stage] for n in sizes if stage in results[n]}
        if runs:
            ok, why = verdict(stage, runs, tol)
            all_ok &= ok
            lines.append(f"| {stage} | {why} |")
    lines += ["", "Sub-steps (seconds / highest sampled RSS MiB):", "",
              "| stage | rows | sub-step | seconds | RSS MiB |", "|---|---:|---|---:|---:|"]
    for stage in STAGES:
        for n in sizes:
            for label, st in results[n].get(stage, {}).get("steps", {}).items():
                lines.append(f"| {stage} | {n:,} | {label} | {st['seconds']:.2f} | "
                             f"{st['max_rss_mib']:,} |")
    return "\n".join(lines), all_ok


# ---------------------------------------------------------------------------- main

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--tolerance", type=float, default=1.5, help="max per-row cost growth")
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of every size (fresh homes each); medians reported")
    p.add_argument("--champion", default="hist_gradient_boosting",
                   help="the spec's candidate trained once as champion (smallest size)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (default 1)")
    p.add_argument("--kill-rss-gib", type=float, default=9.0, help="kill a stage above this")
    p.add_argument("--stage-timeout", type=float, default=3600.0, help="seconds per stage")
    p.add_argument("--profile", nargs="*", default=[], choices=STAGES,
                   help="cProfile these stages (top 35 to stderr; timings inflate)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--render", type=Path, nargs="+", help="print one table from JSON results")
    p.add_argument("--workdir", type=Path, help="temp dir parent (never the repo)")
    p.add_argument("--verify", action="store_true",
                   help="check the bucketed retrieval equals one Feast join (one size)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_SIZES} rows, with --verify")
    p.add_argument("--check", action="store_true", help="exit 1 when a stage is not linear")
    p.add_argument("--executor", choices=("local", "celery"), default="local",
                   help="celery: the stages as DAG runs on Celery workers (_scale_celery.py)")
    p.add_argument("--workers", type=int, default=2, help="Celery workers (--executor celery)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.serve:
        serve()
        return 0
    if args.render:
        results: dict[int, dict[str, Any]] = {}
        for path in args.render:
            data = json.loads(path.read_text())
            for n, stages in data["results"].items():
                results.setdefault(int(n), {}).update(stages)
        table, ok = render(results, args.tolerance, data["meta"])
        print(table)
        return 1 if args.check and not ok else 0
    if args.quick:
        args.sizes, args.champion, args.rounds = list(QUICK_SIZES), "logistic_regression", 1
        args.verify = True
    if args.executor == "celery":
        return run_celery(args)
    # At the largest size the one-piece join still fits (it is what is too big above that).
    args.verify_at = max((n for n in args.sizes if n <= VERIFY_MAX_ROWS and args.verify),
                         default=None)
    parent = work_parent(args.workdir)
    meta: dict[str, Any] = {"started": utc_now(), "code": code(), "threads": args.threads,
                            "rounds": args.rounds,
                            "champion": f"{args.champion}, trained on {min(args.sizes):,} rows",
                            "load_before": load()}
    rounds: list[dict[int, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=parent) as tmp:
        work = Path(tmp)
        base = load_real()
        server = Server(work, args)
        log(f"fork server ready in {work}: {server.base_rss:,} MiB after imports")
        champion = None
        try:
            for rnd in range(args.rounds):
                rounds.append({})
                for n in sorted(args.sizes):
                    rounds[-1][n] = {}
                    log(f"round {rnd + 1} of {args.rounds}, {n:,} rows")
                    try:
                        champion = run_size(server, n, base, work, args, champion,
                                            rounds[-1][n], rnd + 1)
                    except RuntimeError as exc:
                        log(f"{n:,} rows: stopped: {exc}")
                        meta.setdefault("stopped", []).append(
                            f"round {rnd + 1}, {n:,} rows: {exc}")
        finally:
            server.close()
        results = median_of(rounds)
    meta.update(ended=utc_now(), machine=machine("pyarrow"), load_after=load())
    table, ok = render(results, args.tolerance, meta)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 1 if args.check and not ok else 0


def run_celery(args: argparse.Namespace) -> int:
    """``--executor celery``: each size through the DAGs on Celery workers (one round)."""
    import _scale_celery

    # SIGTERM (a timeout, kill) unwinds like Ctrl-C: each stack's processes and databases are
    # removed on the way out, not left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    meta: dict[str, Any] = {"started": utc_now(), "code": code(), "executor": "celery",
                            "workers": args.workers, "load_before": load()}
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-celery-",
                                     dir=work_parent(args.workdir)) as tmp:
        work, base = Path(tmp), load_real()
        for n in sorted(args.sizes):
            log(f"{n:,} rows on {args.workers} Celery workers: synthesizing input ...")
            src = write_input(work / f"input-{n}.parquet", n, base, seed=n)
            results[n] = _scale_celery.run_size(n, src, work, args.workers, args.stage_timeout)
    meta.update(ended=utc_now(), machine=machine("pyarrow"), load_after=load())
    print(f"Run: {meta['started']} to {meta['ended']}; code {meta['code']}.\n"
          f"Machine: {meta['machine']}; load before {meta['load_before']}, after "
          f"{meta['load_after']}.\n")
    print(_scale_celery.render(results, args.workers))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0 if all(r.get("ok") for rs in results.values() for r in rs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
