"""What every benchmark script shares: where the repo is, logging to stderr, when, on which
code and on which machine a run happened, the machine's load, the temp-dir parent (never inside
the repo) and its removal, the command-line options they all take, the opening of their reports,
an MLCORE home's setup; for the scheduler benchmarks, a private Airflow as ``make up`` runs it
(the tests' ``tests/support/airflow_stack.py``), a seeded MLCORE home, their options, a run's
timings per task and the report's end."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the live Airflow harness, shared

from airflow_stack import Stack, ts  # noqa: E402

PROBLEM = "census_employment"

# The Makefile's exports for `make up` (AIRFLOW__* and the environment around them).
MAKEFILE_ENV = {
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    "AIRFLOW__API__HOST": "127.0.0.1",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__CORE__EXECUTOR": "batchloop_airflow.executor.PreloadingLocalExecutor",
    "BATCHLOOP_START_PAUSED": "true",  # the benchmark unpauses the DAGs it measures
    "PYTHONPATH": str(ROOT / "plugins"),
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def code() -> str:
    """The commit, and whether the product (mlcore/ dags/ plugins/ Makefile) differs from it
    (read-only git calls)."""
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = sorted({line[3:].split("/")[0] for line in git(
        "status", "--porcelain", "--", "mlcore", "dags", "plugins", "Makefile").splitlines()})
    return f"{commit} ({'uncommitted changes in ' + ', '.join(dirty) if dirty else 'as committed'})"


def work_parent(workdir: Path | str | None) -> Path:
    """The folder temp dirs go in (``workdir`` or the system's); exits when inside the repo."""
    parent = Path(workdir or tempfile.gettempdir()).resolve()
    if parent.is_relative_to(ROOT):
        sys.exit("refusing to write benchmark files inside the repo")
    return parent


@contextlib.contextmanager
def temp_work(prefix: str, workdir: Path | str | None, keep: bool = False) -> Iterator[Path]:
    """A fresh temp dir under ``work_parent(workdir)``, removed on exit unless ``keep``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=work_parent(workdir)))
    try:
        yield tmp
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def arg_parser(doc: str | None, check: str, *, keep: bool = False,
               json_out: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--workdir``, ``--check`` (exit 1 when ``check``),
    and with ``keep`` / ``json_out`` also ``--keep`` / ``--json``; its description is the first
    paragraph of the script's docstring ``doc``."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=None, help="temp dir parent (not the repo)")
    p.add_argument("--check", action="store_true", help=f"exit 1 when {check}")
    if keep:
        p.add_argument("--keep", action="store_true", help="keep the temp dir (path on stderr)")
    if json_out:
        p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


class ReportHead:
    """When and under which load a run started (noted when made); ``lines`` opens its Markdown
    report."""

    def __init__(self, title: str, script: str) -> None:
        self.title, self.script = title, script
        self.started, self.load_before = utc_now(), load()

    def lines(self, runs: str, machine_line: str) -> list[str]:
        """The title, the command (``benchmarks/<script>`` and this process's arguments), when,
        the load before and now, ``runs`` (rounds and what was compared), ``machine_line``."""
        cmd = " ".join([f"benchmarks/{self.script}", *sys.argv[1:]])
        return [f"### {self.title}", "", f"Command: `.venv/bin/python {cmd}`; {self.started}, "
                f"load {self.load_before} before, {load()} after; {runs}", machine_line, ""]


def openmp_threads() -> str:
    """The OpenMP runtimes loaded and their thread counts."""
    from threadpoolctl import threadpool_info

    found = [f"{p['internal_api']} {p['num_threads']} thread(s)" for p in threadpool_info()
             if p["user_api"] == "openmp"]
    return ", ".join(found) or "no OpenMP runtime loaded"


def machine(*packages: str) -> str:
    """CPUs, RAM, kernel, Python and the given packages' versions."""
    from importlib.metadata import version

    cpu = platform.processor() or "?"
    try:
        cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text()
                    .splitlines() if x.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return ", ".join([f"{os.cpu_count()} vCPU {cpu}", f"{mem:.1f} GiB RAM",
                      f"Linux {platform.release()}", f"Python {platform.python_version()}",
                      *(f"{p} {version(p)}" for p in packages)])


# ---------------------------------------------------------------------------- scheduler benches

def scheduler_args(p: argparse.ArgumentParser) -> None:
    """The scheduler benchmarks' options for the standalone they start."""
    p.add_argument("--stock-executor", action="store_true",
                   help="Airflow's LocalExecutor instead of the one the Makefile ships")
    p.add_argument("--airflow-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra settings for the standalone (a setting being tried)")


def stack_env(args: argparse.Namespace) -> dict[str, str]:
    """The standalone's settings beyond the Makefile's, from ``scheduler_args``' options."""
    env = {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"} if args.stock_executor else {}
    env.update(kv.split("=", 1) for kv in args.airflow_env)
    return env


def load_line(res: dict[str, Any]) -> str:
    """The machine and the load averages before and after a scheduler benchmark's run."""
    return (f"Machine: {res['machine']}. Load average before: "
            f"{' / '.join(f'{x:.2f}' for x in res['load_before'])}; after: "
            f"{' / '.join(f'{x:.2f}' for x in res['load_after'])}.")


def finish(res: dict[str, Any], render: Callable[[dict[str, Any]], tuple[str, bool]],
           args: argparse.Namespace) -> int:
    """A scheduler benchmark's end: the end time and load noted, the report printed, the results
    written to ``--json``; the exit code (1 when ``--check`` and a target is missed)."""
    res.update(ended=utc_now(), load_after=os.getloadavg())
    text, met = render(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 1 if args.check and not met else 0

def bench_stack(home: Path, mlcore_home: Path, extra_env: dict[str, str] | None = None,
                dag_ids: tuple[str, ...] = ()) -> Stack:
    """A private standalone as ``make up`` runs it: only what the product ships is set (the
    caller's AIRFLOW*/MLCORE_* settings dropped), plus what a private instance needs (own home,
    ports, mlcore home); ``extra_env`` adds settings being tried (reported by the caller)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCORE_"))}
    return Stack(home, {**MAKEFILE_ENV,
                        "MLCORE_HOME": str(mlcore_home),
                        "MLCORE_PROBLEMS_DIR": str(ROOT / "problems"),
                        "MLCORE_FEATURE_REPO": str(ROOT / "feature_repo"),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                        **(extra_env or {})}, base_env=base, cwd=home, dag_ids=dag_ids)


def census_spec() -> Any:
    """The demo problem's spec, ``problems/census_employment.yaml``."""
    from mlcore.problems import get_problem

    return get_problem(PROBLEM, ROOT / "problems")


def new_settings(home: Path) -> Any:
    """Settings of an MLCORE home under the temp dir (SQLite store, the repo's Feast repo)."""
    from mlcore.config import Settings

    return Settings(home=home, database_url=None, problems_dir=ROOT / "problems",
                    feature_repo=ROOT / "feature_repo")


def slice_files(rows: int, work: Path, years: tuple[int, ...]) -> dict[int, Path]:
    """Year -> the real yearly file, or its first ``rows`` rows (``rows`` > 0) under ``work``."""
    files = {y: ROOT / "data" / "census_ma_employment" / f"employment_{y}.parquet" for y in years}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        sys.exit(f"missing input files: {', '.join(missing)}")
    if not rows:
        return files
    import pyarrow.parquet as pq

    (work / "inputs").mkdir(parents=True, exist_ok=True)
    for y, src in files.items():
        table = pq.read_table(src)
        files[y] = work / "inputs" / src.name
        pq.write_table(table.slice(0, min(rows, len(table))), files[y])
    return files


def init_home(settings: Any) -> list[str]:
    """``mlcore init`` in a new home: the folder, the migrated store, the Feast definitions
    (their names returned)."""
    from mlcore.feast.store import apply_definitions
    from mlcore.store.session import upgrade

    settings.home.mkdir(parents=True)
    upgrade(settings.db_url)
    return apply_definitions(settings)


def close_db(settings: Any) -> None:
    """Close pooled connections so the home's SQLite files can be copied or replaced."""
    from mlcore.store.session import get_engine

    get_engine(settings.db_url).dispose()
    gc.collect()  # Feast stores of earlier calls (their SQLite connections) go too


def seed_home(settings: Any, files: dict[int, Path], train: bool) -> dict[str, Any]:
    """``mlcore init``, the files ingested + materialized (batch id = year); with ``train`` a
    logistic-regression champion on them (newest year = holdout), as tests/conftest.py's loop."""
    from mlcore.config import TrainConfig
    from mlcore.datasets import build_dataset
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.model.registry import move_alias
    from mlcore.problems import get_problem
    from mlcore.training import train_contender

    spec = get_problem(PROBLEM, settings.problems_dir)
    init_home(settings)
    rows = {}
    for year, src in files.items():
        rows[year] = ingest_batch(spec, str(src), str(year), settings).published_rows
        materialize_batch(spec, str(year), settings)
    out: dict[str, Any] = {"rows": rows}
    if train:
        ref = train_contender(spec, build_dataset(spec, settings),
                              TrainConfig(algorithm="logistic_regression"), settings)
        move_alias(spec.name, expected=None, new=ref.version, reason="benchmark seed",
                   url=settings.db_url, actor="bench")
        out["champion"] = ref.version
    close_db(settings)  # the home is copied next
    return out


def _log_events(path: Path) -> list[tuple[float, str]]:
    out = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                out.append((ts(rec["timestamp"].rstrip("Z")) or 0.0, str(rec.get("event", ""))))
            except (ValueError, KeyError):
                continue
    return out


def task_breakdown(stack: Stack, dag_id: str, run_id: str,
                   times: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task that ran: TI start -> callable start ("Pre Execute" done, after the worker's
    DAG parse), callable (-> "Done."), callable end -> TI end; and the wait before it (from the
    end of the latest task that ended before it started, or the run's start)."""
    rows, ended = [], [times["start"]]
    for t in times["tasks"]:
        if not t["try_number"] or t["start"] is None or t["end"] is None:
            continue
        ev = _log_events(stack.task_log(dag_id, run_id, t["task_id"], t["map_index"]))
        pre_end = next((s for s, e in ev if e == "::endgroup::"), None)
        done = next((s for s, e in ev if e.startswith(("Done.", "Condition result"))), None)
        parse_ms = None
        for line in stack.task_log(dag_id, run_id, t["task_id"], t["map_index"]).read_text(
                errors="replace").splitlines() if ev else []:
            if "dag_file_parse_ms" in line:
                parse_ms = json.loads(line).get("dag_file_parse_ms")
                break
        before = max((e for e in ended if e <= t["start"] + 1e-6), default=times["start"])
        rows.append({"task_id": t["task_id"], "map_index": t["map_index"],
                     "wait": t["start"] - before, "duration": t["end"] - t["start"],
                     "startup": (pre_end - t["start"]) if pre_end else None,
                     "callable": (done - pre_end) if pre_end and done else None,
                     "finish": (t["end"] - done) if done else None,
                     "parse_ms": parse_ms})
        ended.append(t["end"])
    return rows


def idle_seconds(times: dict[str, Any]) -> float:
    """Seconds of the run (start -> end) with no task instance running."""
    spans = sorted((t["start"], t["end"]) for t in times["tasks"]
                   if t["try_number"] and t["start"] is not None and t["end"] is not None)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None and cur_s is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None and cur_s is not None:
        busy += cur_e - cur_s
    return (times["end"] - times["start"]) - busy
