"""String categories against integer codes (issue 13): ``ingest_batch`` and ``materialize_batch``
of the same rows under the census spec as is (integer vocabularies) and under the same spec with
every categorical vocabulary written as strings.

Not a test (no timed assertions in the test suite). Results go to BENCHMARKS.md.

    python benchmarks/bench_categories.py [--rows 1000000] [--rounds 3] [--quick] [--check]
                                          [--profile auto|always|never] [--top 25]
                                          [--workdir DIR]

Input: the real 2015-2018 census rows resampled with replacement, every row a unique ``id``
(``bench_ingest.write_input``), ``--rows`` rows. The 15 categorical features are integer codes
(``problems/census_employment.yaml``); in the parquet file they are ``dictionary<string>`` of
the codes' digits, as in ``data/census_ma_employment``.

  * A (int): that file and that spec, copied verbatim into a temp problems dir.
  * B (str): the same rows in the same order and the same spec, except that each categorical
    code ``k`` is the string ``"c<k>"``: in the file (the dictionary's values relabelled, same
    encoding) and in the spec (each vocabulary becomes ``["c0", "c1", ...]`` in the same
    order), written to a second temp problems dir. B's curated and online columns are strings.

Each round, the two variants run interleaved in this one process (order flipped every round),
each in a fresh MLCORE home set up like ``mlcore init`` (metadata store migrated, Feast
definitions applied from the variant's problems dir; not timed). Timed: (1) ``ingest_batch`` of
the file, (2) ``materialize_batch`` of that batch. An untimed warm-up of both variants on a
small file comes first (imports, caches). Medians over ``--rounds``; target per stage: B / A
<= 1.2. When a stage misses it (``--profile auto``; ``always`` profiles anyway), one more run of
each variant under cProfile prints the top functions by cumulative time of that stage, B's and
then A's for contrast, so the cause is on record.

Exit 0; with ``--check``, exit 1 when a target is missed. ``--quick``: 50,000 rows, 1 round
(a smoke run whose ratios mean little). Everything is written to a temp dir, never the repo.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import pstats
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from _common import arg_parser, code, load, log, machine, temp_work, utc_now  # noqa: E402
from bench_ingest import PROBLEM, ROOT, load_real, write_input  # noqa: E402

TARGET = 1.2
VARIANTS = ("A", "B")
LABELS = {"A": "A: integer codes", "B": "B: string categories"}
STAGES = ("ingest_batch", "materialize_batch")
WARMUP_ROWS = 20_000
PREFIX = "c"


# ---------------------------------------------------------------------------- the two variants

def categorical_names() -> list[str]:
    """The census spec's categorical features, in spec order."""
    from mlcore.problems import get_problem

    spec = get_problem(PROBLEM, ROOT / "problems")
    return [f.name for f in spec.features if f.kind == "categorical"]


def write_problems(work: Path) -> dict[str, Path]:
    """A's problems dir (the spec verbatim) and B's (every categorical vocabulary as strings)."""
    src = ROOT / "problems" / f"{PROBLEM}.yaml"
    dirs = {v: work / f"problems-{v}" for v in VARIANTS}
    for d in dirs.values():
        d.mkdir()
    shutil.copy2(src, dirs["A"] / src.name)
    doc = yaml.safe_load(src.read_text())
    for feat in doc["features"]:
        if feat["kind"] == "categorical":
            feat["values"] = [f"{PREFIX}{v}" for v in feat["values"]]
    (dirs["B"] / src.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    check_specs(dirs)
    return dirs


def check_specs(dirs: dict[str, Path]) -> None:
    """Both specs validate; they differ only in B's categorical vocabularies being strings."""
    from mlcore.problems import get_problem

    a, b = (get_problem(PROBLEM, dirs[v]) for v in VARIANTS)
    assert [f.name for f in a.features] == [f.name for f in b.features]
    for fa, fb in zip(a.features, b.features, strict=True):
        if fa.kind != "categorical":
            assert fa == fb, fa.name
            continue
        assert fa.value_type == "int" and fb.value_type == "str", fa.name
        assert list(fb.values or ()) == [f"{PREFIX}{v}" for v in fa.values or ()], fa.name


def as_strings(base: pa.Table, names: list[str]) -> pa.Table:
    """``base`` with each categorical code ``k`` relabelled ``"c<k>"`` (dictionary values only:
    same indices, same encoding, same rows)."""
    for name in names:
        col = base[name]
        assert col.num_chunks == 1 and pa.types.is_dictionary(col.type), name
        arr = col.chunk(0)
        labels = pa.array([None if v is None else f"{PREFIX}{int(v)}"
                           for v in arr.dictionary.to_pylist()], arr.dictionary.type)
        relabelled = pa.DictionaryArray.from_arrays(arr.indices, labels)
        base = base.set_column(base.schema.get_field_index(name), name, relabelled)
    return base


def write_inputs(work: Path, rows: int, seed: int, tag: str,
                 bases: dict[str, pa.Table]) -> dict[str, Path]:
    """One file per variant: the same resampled rows (same seed), A's and B's labels."""
    return {v: write_input(work / f"{tag}-{v}.parquet", rows, bases[v], seed=seed)
            for v in VARIANTS}


# ---------------------------------------------------------------------------- one run

def fresh_home(home: Path, problems_dir: Path) -> Any:
    """Settings for an empty home, set up as ``mlcore init`` does (not timed)."""
    from mlcore.config import Settings
    from mlcore.feast.store import apply_definitions
    from mlcore.store.session import upgrade

    home.mkdir(parents=True)
    settings = Settings(home=home, problems_dir=problems_dir, feature_repo=ROOT / "feature_repo")
    upgrade(settings.db_url)
    apply_definitions(settings)
    return settings


def run_once(src: Path, home: Path, problems_dir: Path, batch_id: str,
             profilers: dict[str, cProfile.Profile] | None = None) -> dict[str, Any]:
    """Ingest ``src`` and materialize it in a fresh home: seconds per stage and what came out."""
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch as ingest
    from mlcore.problems import get_problem
    from mlcore.store.catalog import get_batch

    settings = fresh_home(home, problems_dir)
    spec = get_problem(PROBLEM, problems_dir)
    calls: dict[str, Callable[[], Any]] = {
        "ingest_batch": lambda: ingest(spec, str(src), batch_id, settings),
        "materialize_batch": lambda: materialize_batch(spec, batch_id, settings)}
    out: dict[str, Any] = {}
    for stage, call in calls.items():
        gc.collect()
        prof = (profilers or {}).get(stage)
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        try:
            out[stage] = call()
        finally:
            if prof is not None:
                prof.disable()
        out[f"{stage} s"] = time.perf_counter() - t0
    curated = get_batch(spec.name, batch_id, settings.db_url).curated_uri or ""
    out["curated types"] = {str(pq.read_schema(p).field(n).type)
                            for p in _parquets(Path(curated)) for n in categorical_names()}
    shutil.rmtree(home, ignore_errors=True)
    return out


def _parquets(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(root.rglob("*.parquet"))


def check_run(variant: str, rows: int, out: dict[str, Any]) -> None:
    """Every row published and materialized, categoricals curated in the variant's type."""
    manifest, mat = out["ingest_batch"], out["materialize_batch"]
    want = {"A": {"int64"}, "B": {"string"}}[variant]
    problems = []
    if manifest.quarantine_count or manifest.published_rows != rows:
        problems.append(f"published {manifest.published_rows} of {rows}, "
                        f"{manifest.quarantine_count} quarantined")
    if mat.rows != rows:
        problems.append(f"materialized {mat.rows} of {rows}")
    if out["curated types"] != want:
        problems.append(f"curated categorical types {out['curated types']}, want {want}")
    if problems:
        sys.exit(f"variant {variant}: " + "; ".join(problems))


# ---------------------------------------------------------------------------- measurement

def race(files: dict[str, Path], dirs: dict[str, Path], work: Path, rows: int,
         rounds: int) -> dict[str, dict[str, list[float]]]:
    """``rounds`` interleaved rounds, order flipped every round: seconds per variant and stage."""
    times: dict[str, dict[str, list[float]]] = {v: {s: [] for s in STAGES} for v in VARIANTS}
    for i in range(rounds):
        for v in VARIANTS[:: 1 if i % 2 == 0 else -1]:
            out = run_once(files[v], work / f"home-{v}-{i}", dirs[v], f"bench-{v}-{i}")
            check_run(v, rows, out)
            for s in STAGES:
                times[v][s].append(out[f"{s} s"])
            log(f"  round {i + 1} {LABELS[v]}: " + ", ".join(
                f"{s} {out[f'{s} s']:.2f} s" for s in STAGES))
    return times


def ratios(times: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    return {s: statistics.median(times["B"][s]) / statistics.median(times["A"][s])
            for s in STAGES}


def profile(files: dict[str, Path], dirs: dict[str, Path], work: Path, stages: list[str],
            top: int) -> list[str]:
    """One cProfiled run per variant; the top functions by cumtime of each stage in ``stages``."""
    lines = ["", f"#### cProfile of the stages over target (top {top} by cumulative time; "
                 "one run per variant, B first)", ""]
    for v in ("B", "A"):
        profs = {s: cProfile.Profile() for s in stages}
        out = run_once(files[v], work / f"home-profile-{v}", dirs[v], f"profile-{v}", profs)
        for s in stages:
            buf = io.StringIO()
            stats = pstats.Stats(profs[s], stream=buf)
            stats.strip_dirs().sort_stats("cumulative").print_stats(top)
            body = buf.getvalue().strip().splitlines()
            start = next((i for i, x in enumerate(body) if "ncalls" in x), 0)
            lines += [f"{LABELS[v]}, `{s}`: {out[f'{s} s']:.2f} s under the profiler, "
                      f"{stats.total_tt:.2f} s profiled", "", "```",
                      *body[start:], "```", ""]
    return lines


# ---------------------------------------------------------------------------- report

def render(times: dict[str, dict[str, list[float]]], rows: int) -> tuple[list[str], bool]:
    """The Markdown table, and whether every stage met the target."""
    r = ratios(times)
    each = lambda v, s: " / ".join(f"{x:.2f}" for x in times[v][s])  # noqa: E731
    lines = ["| stage | rows | A: int s (median) | B: str s (median) | B / A | A rounds s | "
             "B rounds s | rows/s A / B | target | met |",
             "|---|---:|---:|---:|---:|---|---|---:|---|---|"]
    for s in STAGES:
        a, b = statistics.median(times["A"][s]), statistics.median(times["B"][s])
        lines.append(f"| `{s}` | {rows:,} | {a:.2f} | {b:.2f} | {r[s]:.2f}x | {each('A', s)} | "
                     f"{each('B', s)} | {rows / a:,.0f} / {rows / b:,.0f} | <= {TARGET:g}x | "
                     f"{'yes' if r[s] <= TARGET else 'NO'} |")
    ok = all(x <= TARGET for x in r.values())
    lines += ["", "String categories / integer codes: " + ", ".join(
        f"{s} **{r[s]:.2f}x**" for s in STAGES)
        + f" (target <= {TARGET:g}x: **{'met' if ok else 'NOT met'}**)."]
    return lines, ok


# ---------------------------------------------------------------------------- main

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, "a target is missed")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic batch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="cProfile the stages over target (auto), every stage, or none")
    p.add_argument("--top", type=int, default=25, help="functions listed per profile")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 50,000 rows, 1 round (the ratios mean little)")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 50_000, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started, load_before, commit = utc_now(), load(), code()
    t_start = time.perf_counter()
    with temp_work("bench-categories-", args.workdir) as work, \
            contextlib.redirect_stdout(sys.stderr):  # Feast prints progress to stdout
        names = categorical_names()
        dirs = write_problems(work)
        real = load_real()
        bases = {"A": real, "B": as_strings(real, names)}
        log(f"generating inputs in {work} ...")
        warm = write_inputs(work, min(WARMUP_ROWS, args.rows), 7, "warmup", bases)
        files = write_inputs(work, args.rows, 1, "batch", bases)
        del real, bases
        log("warm-up (untimed) ...")
        for v in VARIANTS:
            check_run(v, min(WARMUP_ROWS, args.rows),
                      run_once(warm[v], work / f"home-warmup-{v}", dirs[v], f"warmup-{v}"))
        times = race(files, dirs, work, args.rows, args.rounds)
        table, ok = render(times, args.rows)
        over = [s for s, x in ratios(times).items()
                if args.profile == "always" or (args.profile == "auto" and x > TARGET)]
        prof = profile(files, dirs, work, over, args.top) if over else []
    wall = time.perf_counter() - t_start
    cmd = " ".join(["benchmarks/bench_categories.py", *sys.argv[1:]])
    print("\n".join([
        "### String categories (`bench_categories.py`): issue 13", "",
        f"Command: `.venv/bin/python {cmd}` ({wall / 60:.1f} min wall); {started}, code "
        f"{commit}; load {load_before} before, {load()} after; {args.rounds} round(s), "
        "variants interleaved, order flipped each round, fresh MLCORE home per run, medians.",
        f"Machine: {machine()}.", "",
        f"Rows: {args.rows:,} (real census rows resampled, unique ids); {len(names)} "
        f"categorical features: A integer codes (spec as is), B strings "
        f"`\"{PREFIX}<code>\"` (same rows, same vocabulary order).", "", *table, *prof]))
    if args.quick:
        print("\nQuick mode (smoke run): the ratios mean little.")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
