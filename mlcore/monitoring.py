"""Monitoring: drift of a batch against the champion's own reference profile (a sample of its
training features and scores, written when it was trained), judged per column by Evidently with
the spec's effect-size thresholds, overall and within segments; reports in JSON and HTML (built
and rendered by ``mlcore.reports.drift_report``) and a row in the metadata store. Whether drift
asks for
a retrain is the policy's business."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import delete, update

from mlcore.config import Settings
from mlcore.data.integrity import curated_files
from mlcore.ingestion import get_batch, parquet_rows, read_curated
from mlcore.model.registry import ModelNotFound, alias_holder, get_version, load_model
from mlcore.problems import ProblemSpec
from mlcore.reports.drift_report import build_report, plot_data, render_report
from mlcore.store.models import Batch, DriftReport, ModelVersion, RetrainRequest
from mlcore.store.session import session_scope

PREDICTION = "prediction"
MIN_SEGMENT_ROWS = 200  # smaller segment values (either side) are reported as skipped


class DriftCheckFailed(ValueError):
    """No drift verdict could be reached (mismatched columns, Evidently failed, over budget)."""


class DriftBudgetExceeded(DriftCheckFailed):
    """The check took longer than ``spec.drift.budget_seconds``."""


class Stattest(NamedTuple):
    """How one column is judged: drift when ``score >= threshold`` (both are distances)."""

    kind: str  # numeric | categorical
    method: str  # Evidently stattest name
    threshold: float


@dataclass(frozen=True)
class DriftResult:
    """Dataset-level drift verdict, prediction drift, per-column details and the report paths."""

    problem: str
    batch_id: str
    model_version: int
    drift_share: float
    drifted_columns: list[str]
    dataset_drift: bool
    prediction_drift: bool
    json_uri: str
    html_uri: str
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def prediction_columns(outputs: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """A model's outputs as drift columns: ``prediction`` (binary P(positive), regression the
    value), or one ``prediction:<class>`` probability per class (multiclass)."""
    if outputs.ndim == 1:
        return {PREDICTION: outputs}
    return {f"{PREDICTION}:{c}": outputs[:, i] for i, c in enumerate(classes)}


def is_prediction(column: str) -> bool:
    """A model-output column (see ``prediction_columns``), not a feature."""
    return column == PREDICTION or column.startswith(f"{PREDICTION}:")


def stattests(spec: ProblemSpec, classes: list[str] | None = None) -> dict[str, Stattest]:
    """Per-column tests from the spec: normed Wasserstein for numeric features (timestamp parts
    included), Jensen-Shannon for categorical and boolean ones, and the model's outputs
    (probabilities, or predicted values: numeric) with their own threshold."""
    d = spec.drift
    tests = {c: Stattest("numeric", "wasserstein", d.numeric_threshold) if k == "numeric"
             else Stattest("categorical", "jensenshannon", d.categorical_threshold)
             for c, k in spec.column_kinds.items()}
    outputs = [PREDICTION] if spec.target.kind != "multiclass" or not classes else [
        f"{PREDICTION}:{c}" for c in classes]
    return {**tests, **{c: Stattest("numeric", "wasserstein", d.prediction_threshold)
                        for c in outputs}}


def comparable(frame: pd.DataFrame, spec: ProblemSpec) -> pd.DataFrame:
    """Text and boolean categories as text (``label_key``; None where missing), so a column
    compares alike whether it was read from Feast or a curated file, with or without missing
    values. Integer categories stay integers (the same dtype from either source; converting
    them made a census drift check ~3x slower, benchmarks/BENCHMARKS.md)."""
    from mlcore.columns import label_key

    out = frame.copy()
    for c in spec.categorical:
        if c in out.columns and spec.feature(c).value_type != "int":
            codes, uniques = pd.factorize(out[c], use_na_sentinel=True)
            table = np.array([label_key(u) for u in uniques] + [None], dtype=object)
            out[c] = table[codes]
    return out


def _sample(frame: pd.DataFrame, rows: int, seed: int = 0) -> pd.DataFrame:
    out = frame.sample(rows, random_state=seed) if len(frame) > rows else frame
    return out.reset_index(drop=True)


def sample_curated(batch: Batch, rows: int, seed: int = 0) -> pd.DataFrame:
    """``_sample(read_curated(batch), rows, seed)``, the same rows in the same order, read one
    row group at a time: memory grows with ``rows``, not with the batch (10M rows read whole
    were 3.5 GiB to keep 50k; benchmarks/BENCHMARKS.md, scale curve)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = curated_files(batch)
    total = parquet_rows(files)
    if total <= rows:
        return _sample(read_curated(batch), rows, seed)
    # DataFrame.sample's own draw: RandomState(seed).choice(total, rows, replace=False).
    wanted = np.random.RandomState(seed).choice(total, size=rows, replace=False)
    order = np.argsort(wanted, kind="stable")
    ascending, pieces, offset = wanted[order], [], 0
    for f in files:
        pf = pq.ParquetFile(f)
        for group in range(pf.num_row_groups):
            n = pf.metadata.row_group(group).num_rows
            lo, hi = np.searchsorted(ascending, [offset, offset + n])
            if hi > lo:
                pieces.append(pf.read_row_group(group).take(pa.array(ascending[lo:hi] - offset)))
            offset += n
    table = pa.concat_tables(pieces).take(pa.array(np.argsort(order, kind="stable")))
    return table.to_pandas()


def write_reference_profile(spec: ProblemSpec, train: pd.DataFrame, pipeline: Any, out_dir: Path,
                            seed: int) -> dict[str, Any]:
    """Write a model's reference profile next to its artifact: a seeded sample (at most
    ``spec.drift.sample_rows``) of its training features and segment columns, plus its score
    on those rows, as ``out_dir/reference.parquet`` (written atomically).

    Returns:
        ``{"uri", "sha256", "rows", "columns"}`` for the version's reproducibility record.
    """
    from mlcore.batches import sha256_file
    from mlcore.model.targets import model_target, predict

    columns = list(dict.fromkeys([*spec.feature_names, *spec.drift.segments]))
    sample = _sample(train[columns], spec.drift.sample_rows, seed)
    outputs = predict(pipeline, sample[spec.feature_names])
    sample = comparable(sample, spec).assign(
        **prediction_columns(outputs, model_target(pipeline)["classes"]))
    dest = out_dir / "reference.parquet"
    tmp = out_dir / f".reference-{time.time_ns()}.parquet"
    sample.to_parquet(tmp, index=False)
    sha = sha256_file(tmp)
    tmp.replace(dest)
    # the name only: resolved next to the artifact (``profile_path``), so a moved home works
    return {"uri": dest.name, "sha256": sha, "rows": len(sample), "columns": list(sample.columns)}


def profile_path(mv: ModelVersion, profile: dict[str, Any]) -> Path:
    """Where a version's reference profile is: a name next to its artifact (absolute paths
    were recorded before homes could move)."""
    path = Path(profile["uri"])
    return path if path.is_absolute() else Path(mv.artifact_uri).parent / path


def check_columns(reference: pd.DataFrame, current: pd.DataFrame, tests: dict[str, Stattest],
                  batch_id: str) -> None:
    """Both sides must have every tested column, with the same kind of dtype (any numeric dtype
    for numeric columns), so a mismatch can never read as "no drift".

    Raises:
        DriftCheckFailed: naming the batch and the columns.
    """
    def kind(frame: pd.DataFrame, col: str) -> str:
        k = frame[col].dtype.kind
        return "number" if tests[col].kind == "numeric" and k in "iuf" else k

    problems = [f"{c} missing from the {side}" for c in tests
                for side, frame in (("reference", reference), ("current batch", current))
                if c not in frame.columns]
    both = [c for c in tests if c in reference.columns and c in current.columns]
    problems += [f"{c} is {reference[c].dtype} in the reference but {current[c].dtype} now"
                 for c in both if kind(reference, c) != kind(current, c)]
    problems += [f"{c} must be numeric, is {reference[c].dtype}" for c in both
                 if tests[c].kind == "numeric" and kind(reference, c) == kind(current, c)
                 != "number"]
    if problems:
        raise DriftCheckFailed(f"batch {batch_id!r}: reference and current columns do not match "
                               f"({'; '.join(problems)}); no drift verdict")


def _finite(values: pd.Series, column: str) -> pd.Series:
    out = values.replace([-math.inf, math.inf], float("nan")).dropna()
    if out.empty:
        raise ValueError(f"column {column!r} has no values on a side")
    return out


@functools.cache
def drift_metric() -> Any:
    """The Evidently metric each column is judged with (built on first use: Evidently loads
    lazily). Its score is Evidently's registered stattest, the function ``ValueDrift`` calls, on
    the column with NaN/inf dropped as ``ValueDrift`` drops them; its test fails (drift) unless
    ``score < threshold``. Unlike ``ValueDrift`` it builds no plotly widgets: those were ~75% of
    the run time (benchmarks/BENCHMARKS.md) and the compact HTML report does not use them.
    """
    from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.tests import lt

    class StattestDrift(SingleValueMetric):
        column: str
        method: str
        threshold: float

        def _default_tests_with_reference(self, context: Any) -> list[Any]:
            return [lt(self.threshold).bind_single(self.get_fingerprint())]

    class StattestDriftCalculation(SingleValueCalculation[StattestDrift]):
        def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
            m = self.metric
            kind = reference_data.column(m.column).type
            ref, cur = (_finite(d.column(m.column).data, m.column)
                        for d in (reference_data, current_data))
            test = get_stattest(ref, cur, kind, m.method)
            return self.result(test(ref, cur, kind, m.threshold).drift_score)

        def display_name(self) -> str:
            return f"{self.metric.method} drift of {self.metric.column}"

    return StattestDrift


def run_drift(reference: pd.DataFrame, current: pd.DataFrame,
              tests: dict[str, Stattest]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One Evidently run: a ``drift_metric()`` per column with its stattest and threshold.

    Returns:
        (the snapshot as JSON-able dict, ``{column: {method, score, threshold, drift}}``) with
        each verdict read from Evidently's own per-column test.

    Raises:
        ValueError: Evidently gave no finite score for a column.
    """
    from evidently import DataDefinition, Dataset, Report

    definition = DataDefinition(
        numerical_columns=[c for c, t in tests.items() if t.kind == "numeric"],
        categorical_columns=[c for c, t in tests.items() if t.kind == "categorical"])
    cols, metric = list(tests), drift_metric()
    report = Report([metric(column=c, method=t.method, threshold=t.threshold)
                     for c, t in tests.items()], include_tests=True)
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[cols], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[cols], data_definition=definition))
    raw = json.loads(snapshot.json())
    scores = {m["config"]["column"]: m["value"] for m in raw["metrics"]}
    failed = {t["metric_config"]["params"]["column"] for t in raw["tests"]
              if t["status"] == "FAIL"}
    if bad := [c for c in cols if not isinstance(scores.get(c), float | int)
               or not math.isfinite(scores[c])]:
        raise ValueError(f"no finite drift score for {bad}")
    return raw, {c: {"method": t.method, "score": float(scores[c]), "threshold": t.threshold,
                     "drift": c in failed} for c, t in tests.items()}


def _describe(ref: pd.Series, cur: pd.Series, kind: str) -> dict[str, Any]:
    """What moved, for people: means for numbers, the value whose share moved most otherwise."""
    if kind == "numeric":
        return {"reference_mean": float(ref.mean()), "current_mean": float(cur.mean())}
    shares = pd.concat([ref.value_counts(normalize=True), cur.value_counts(normalize=True)],
                       axis=1, keys=["ref", "cur"]).fillna(0.0)
    top = (shares["cur"] - shares["ref"]).abs().idxmax()
    return {"value": str(top), "reference_share": float(shares.at[top, "ref"]),
            "current_share": float(shares.at[top, "cur"])}


def _verdict(columns: dict[str, dict[str, Any]], spec: ProblemSpec) -> dict[str, Any]:
    features = [c for c in columns if not is_prediction(c)]
    drifted = [c for c in features if columns[c]["drift"]]
    share = len(drifted) / len(features)
    return {"drift_share": share, "drifted_columns": drifted,
            "dataset_drift": share >= spec.drift.drift_share,
            "prediction_drift": any(v.get("drift", False) for c, v in columns.items()
                                    if is_prediction(c))}


def _prediction_entry(columns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Take the output columns out of ``columns``: the one entry, or for one per class the
    class that moved most, with every class under ``per_class``."""
    outputs = {c: columns.pop(c) for c in [c for c in columns if is_prediction(c)]}
    if list(outputs) == [PREDICTION]:
        return outputs[PREDICTION]
    top = max(outputs, key=lambda c: outputs[c]["score"])
    return {**outputs[top], "column": top, "drift": any(v["drift"] for v in outputs.values()),
            "per_class": {c.split(":", 1)[1]: v for c, v in outputs.items()}}


def measure_drift(reference: pd.DataFrame, current: pd.DataFrame, spec: ProblemSpec,
                  check: Callable[[str], None] = lambda stage: None,
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The drift step on in-memory frames: every column, then within each value of each segment
    column (values with fewer than ``MIN_SEGMENT_ROWS`` rows on either side are skipped).
    ``check(stage)`` runs after each Evidently run (the budget).

    Returns:
        (details for the store: ``columns`` (features) and ``prediction``, each with method,
        score, threshold, drift; the verdict; ``segments`` keyed "<column>=<value>"; row
        counts), and the Evidently snapshots keyed "all" / "<column>=<value>".
    """
    classes = [c.split(":", 1)[1] for c in reference.columns if c.startswith(f"{PREDICTION}:")]
    tests = stattests(spec, classes)
    snapshot, columns = run_drift(reference, current, tests)
    check("all columns")
    for c, t in tests.items():
        columns[c].update(kind=t.kind, **_describe(reference[c], current[c], t.kind))
    snapshots, segments = {"all": snapshot}, {}
    for col in spec.drift.segments:
        sub = {c: t for c, t in tests.items() if c != col}
        for value in sorted(set(reference[col].unique()) | set(current[col].unique())):
            key = f"{col}={value}"
            ref, cur = reference[reference[col] == value], current[current[col] == value]
            entry: dict[str, Any] = {"column": col, "value": str(value),
                                     "rows": [len(ref), len(cur)]}
            if min(len(ref), len(cur)) < MIN_SEGMENT_ROWS:
                entry["skipped"] = f"fewer than {MIN_SEGMENT_ROWS} rows on a side"
            else:
                snapshots[key], cols = run_drift(ref, cur, sub)
                entry.update(_verdict(cols, spec), scores={c: v["score"] for c, v in cols.items()})
                check(f"segment {key}")
            segments[key] = entry
    prediction = _prediction_entry(columns)
    details = {"columns": columns, "prediction": prediction, **_verdict(columns, spec),
               "prediction_drift": prediction["drift"], "segments": segments,
               "rows": {"reference": len(reference), "current": len(current)}}
    return details, snapshots


class _Budget:
    """Cooperative deadline, checked between steps (see ``detect_drift``)."""

    def __init__(self, batch_id: str, seconds: float) -> None:
        self.batch_id, self.seconds, self.start = batch_id, seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def check(self, stage: str) -> None:
        if (spent := self.elapsed()) > self.seconds:
            raise DriftBudgetExceeded(f"batch {self.batch_id!r}: drift check over its budget "
                                      f"({spent:.1f} s > {self.seconds:g} s, after {stage}); "
                                      "no drift verdict")


def _reference(spec: ProblemSpec, mv: ModelVersion, model: Any, settings: Settings,
               batch_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The champion's reference profile (SHA-256 checked), or for versions trained before
    profiles existed, its training batches' curated rows scored now."""
    from mlcore.model.targets import model_target, predict

    profile = (mv.reproducibility or {}).get("reference_profile")
    if profile is None:
        frames = [read_curated(get_batch(spec.name, b, settings.db_url))
                  for b in mv.training_batch_ids]
        frame = _sample(pd.concat(frames, ignore_index=True), spec.drift.sample_rows)
        frame = comparable(frame, spec).assign(**prediction_columns(
            predict(model, frame[spec.feature_names]), model_target(model)["classes"]))
        return frame, {"source": "training_batches", "batches": list(mv.training_batch_ids)}
    path = profile_path(mv, profile)
    data = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(data).hexdigest() != profile["sha256"]:
        raise DriftCheckFailed(f"batch {batch_id!r}: {spec.name!r} v{mv.version}'s reference "
                               f"profile {path} is missing or does not match its recorded "
                               "SHA-256; no drift verdict")
    # profiles written before categories were kept as text hold codes: made comparable too
    frame = comparable(_sample(pd.read_parquet(io.BytesIO(data)), spec.drift.sample_rows), spec)
    return frame, {"source": "profile", "uri": profile["uri"], "sha256": profile["sha256"]}


def detect_drift(spec: ProblemSpec, batch_id: str, settings: Settings) -> DriftResult:
    """Measure a batch's drift against the champion's reference profile; store the verdict.

    The budget (``spec.drift.budget_seconds``) is checked between steps, not by interrupting
    one: stopping numpy/Evidently mid-run needs a subprocess (re-importing Evidently, ~7 s, and
    copying the frames) or SIGALRM (main thread only); sampling bounds each run instead, and
    the hard stop is the orchestrator's task timeout.

    Raises:
        ModelNotFound: there is no champion (nothing to compare against).
        DriftCheckFailed: mismatched columns, a bad reference profile, Evidently failing, or the
            budget exceeded (nothing is recorded then).
    """
    from mlcore.model.targets import model_target, predict

    budget = _Budget(batch_id, spec.drift.budget_seconds)
    batch = get_batch(spec.name, batch_id, settings.db_url)
    version = alias_holder(spec.name, settings.db_url)
    if version is None:
        raise ModelNotFound(f"batch {batch_id!r}: {spec.name!r} has no champion to monitor")
    champion = get_version(spec.name, version, settings.db_url)
    model = load_model(champion, settings)
    reference, source = _reference(spec, champion, model, settings, batch_id)
    current = sample_curated(batch, spec.drift.sample_rows)
    classes = model_target(model)["classes"]
    tests = stattests(spec, classes)
    judged = comparable(current, spec)  # the model still scores the curated values
    check_columns(reference, judged, {c: tests[c] for c in spec.feature_names}, batch_id)
    if reference.empty or current.empty:
        raise DriftCheckFailed(f"batch {batch_id!r}: no rows to compare "
                               f"(reference {len(reference)}, current {len(current)})")
    outputs = predict(model, current[spec.feature_names])
    current = judged.assign(**prediction_columns(outputs, classes))
    check_columns(reference, current, tests, batch_id)
    budget.check("loading and scoring")
    try:
        details, snapshots = measure_drift(reference, current, spec, budget.check)
    except DriftBudgetExceeded:
        raise
    except Exception as exc:  # Evidently raising, or giving no score
        raise DriftCheckFailed(f"batch {batch_id!r}: Evidently failed ({type(exc).__name__}: "
                               f"{exc}); no drift verdict") from exc
    details.update(reference=source, seconds=round(budget.elapsed(), 3),
                   budget_seconds=spec.drift.budget_seconds)
    result = DriftResult(spec.name, batch_id, version, details["drift_share"],
                         details["drifted_columns"], details["dataset_drift"],
                         details["prediction_drift"], "", "", details)
    plots = plot_data(reference, current, {c: t.kind for c, t in tests.items()}, spec)
    report = build_report(result.to_dict(), snapshots, spec, plots, settings.db_url)
    paths = _write_reports(result, report, settings)
    result = replace(result, json_uri=paths[0], html_uri=paths[1])
    _record(result, settings.db_url)
    return result


def _write_reports(result: DriftResult, report: dict[str, Any],
                   settings: Settings) -> tuple[str, str]:
    """The JSON report (``drift_report.build_report``) and its HTML page, written atomically."""
    out = settings.partition("reports", result.problem, result.batch_id)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in (("json", json.dumps(report)), ("html", render_report(report))):
        path = out / f"drift_v{result.model_version}.{suffix}"
        tmp = out / f".{path.name}-{time.time_ns()}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths.append(str(path))
    return paths[0], paths[1]


def _record(result: DriftResult, url: str) -> None:
    with session_scope(url) as s:
        s.execute(delete(DriftReport).where(DriftReport.problem == result.problem,
                                            DriftReport.batch_id == result.batch_id,
                                            DriftReport.model_version == result.model_version))
        s.add(DriftReport(problem=result.problem, batch_id=result.batch_id,
                          model_version=result.model_version, drift_share=result.drift_share,
                          drifted_columns=result.drifted_columns,
                          dataset_drift=result.dataset_drift, json_uri=result.json_uri,
                          html_uri=result.html_uri, details=result.details))


def close_retrain_requests(problem: str, version: int, url: str) -> int:
    """Mark every pending retrain request of ``problem`` as answered by ``version``."""
    with session_scope(url) as s:
        return int(s.execute(update(RetrainRequest).where(
            RetrainRequest.problem == problem, RetrainRequest.state == "pending",
        ).values(state="trained", resolved_by_version=version)).rowcount)  # type: ignore[attr-defined]
