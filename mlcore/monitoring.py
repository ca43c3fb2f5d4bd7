"""Monitoring: drift of a batch against the champion's own reference profile (a sample of its
training features and scores, written when it was trained: ``mlcore.model.reference``), judged
per column by the drift tests of ``mlcore.model.drift`` with the spec's effect-size thresholds,
overall and within segments, under a time budget; reports in JSON and HTML (built and rendered
by ``mlcore.reports.drift_report``) and a row in the metadata store. Whether drift asks for a
retrain is the policy's business (``mlcore.policy``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd
from sqlalchemy import delete

from mlcore.config import Settings
from mlcore.data.integrity import curated_files
from mlcore.data.io import parquet_rows, read_curated
from mlcore.model.drift import (
    PREDICTION,
    DriftCheckFailed,
    Stattest,
    check_columns,
    comparable,
    is_prediction,
    prediction_columns,
    run_drift,
    stattests,
)
from mlcore.model.reference import read_reference_profile, sample_rows
from mlcore.model.registry import ModelNotFound, alias_holder, get_version, load_model
from mlcore.model.targets import model_target, predict
from mlcore.problems import ProblemSpec
from mlcore.reports.drift_data import build_report, plot_data
from mlcore.reports.drift_report import render_report
from mlcore.store.catalog import get_batch
from mlcore.store.models import Batch, DriftReport, ModelVersion
from mlcore.store.session import session_scope

MIN_SEGMENT_ROWS = 200  # smaller segment values (either side) are reported as skipped


class DriftBudgetExceeded(DriftCheckFailed):
    """The check took longer than ``spec.drift.budget_seconds``."""


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


def sample_curated(batch: Batch, rows: int, seed: int = 0) -> pd.DataFrame:
    """``sample_rows(read_curated(batch), rows, seed)``, the same rows in the same order, read one
    row group at a time: memory grows with ``rows``, not with the batch (10M rows read whole
    were 3.5 GiB to keep 50k; benchmarks/BENCHMARKS.md, scale curve)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = curated_files(batch)
    total = parquet_rows(files)
    if total <= rows:
        return sample_rows(read_curated(batch), rows, seed)
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

    profile = (mv.reproducibility or {}).get("reference_profile")
    if profile is None:
        frames = [read_curated(get_batch(spec.name, b, settings.db_url))
                  for b in mv.training_batch_ids]
        frame = sample_rows(pd.concat(frames, ignore_index=True), spec.drift.sample_rows)
        frame = comparable(frame, spec).assign(**prediction_columns(
            predict(model, frame[spec.feature_names]), model_target(model)["classes"]))
        return frame, {"source": "training_batches", "batches": list(mv.training_batch_ids)}
    return read_reference_profile(spec, mv, profile, batch_id)


def _scored_current(spec: ProblemSpec, batch: Batch, model: Any, reference: pd.DataFrame
                    ) -> tuple[pd.DataFrame, dict[str, Stattest]]:
    """A sample of the batch with the champion's outputs, and every column's test; its columns
    checked against the reference's (``check_columns``) before and after scoring."""

    current = sample_curated(batch, spec.drift.sample_rows)
    classes = model_target(model)["classes"]
    tests = stattests(spec, classes)
    judged = comparable(current, spec)  # the model still scores the curated values
    check_columns(reference, judged, {c: tests[c] for c in spec.feature_names}, batch.batch_id)
    if reference.empty or current.empty:
        raise DriftCheckFailed(f"batch {batch.batch_id!r}: no rows to compare "
                               f"(reference {len(reference)}, current {len(current)})")
    outputs = predict(model, current[spec.feature_names])
    current = judged.assign(**prediction_columns(outputs, classes))
    check_columns(reference, current, tests, batch.batch_id)
    return current, tests


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
    budget = _Budget(batch_id, spec.drift.budget_seconds)
    batch = get_batch(spec.name, batch_id, settings.db_url)
    version = alias_holder(spec.name, settings.db_url)
    if version is None:
        raise ModelNotFound(f"batch {batch_id!r}: {spec.name!r} has no champion to monitor")
    champion = get_version(spec.name, version, settings.db_url)
    model = load_model(champion, settings)
    reference, source = _reference(spec, champion, model, settings, batch_id)
    current, tests = _scored_current(spec, batch, model, reference)
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
    """The JSON report (``drift_report.build_report``) and its HTML page, written atomically;
    on an object-storage home written locally, then one PUT each to the final key (an object is
    never half-visible), the recorded paths being the s3 URIs."""
    texts = (("json", json.dumps(report)), ("html", render_report(report)))
    if not settings.home_is_local:
        return _put_reports(result, texts, settings)
    out = settings.partition("reports", result.problem, result.batch_id)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in texts:
        path = out / f"drift_v{result.model_version}.{suffix}"
        tmp = out / f".{path.name}-{time.time_ns()}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths.append(str(path))
    return paths[0], paths[1]


def _put_reports(result: DriftResult, texts: tuple[tuple[str, str], ...],
                 settings: Settings) -> tuple[str, str]:
    """``_write_reports`` on an S3 home: staged in a process folder, put under
    ``reports/problem=<p>/batch=<id>/``, the staging removed."""
    import shutil

    from mlcore.data.objects import process_tmp
    from mlcore.model.artifacts_store import upload

    staged = process_tmp("report")
    try:
        uris = []
        for suffix, text in texts:
            name = f"drift_v{result.model_version}.{suffix}"
            (staged / name).write_text(text, encoding="utf-8")
            uris.append(upload(settings.store_home(), staged / name, "reports",
                               f"problem={result.problem}", f"batch={result.batch_id}", name))
        return uris[0], uris[1]
    finally:
        shutil.rmtree(staged, ignore_errors=True)


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

