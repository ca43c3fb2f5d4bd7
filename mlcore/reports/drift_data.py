"""Drift report data: what a drift report shows, computed by ``mlcore.monitoring.detect_drift``
from the frames it already has and saved in the JSON report: per-column distributions of
reference and current on shared bins, the statistic over the problem's last batches, readable
labels and links back to the view and the Airflow run. ``mlcore.reports.drift_report`` renders it.

pandas/numpy and the store are imported when called; importing this module is stdlib only.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from mlcore.reports.html import links

FORMAT = "batchloop.drift/2"
BINS = 20  # numeric histograms: about this many bins of a round width, shared by both sides
TOP_CATEGORIES = 25  # categorical bars: the categories whose share is largest on either side
HISTORY_BATCHES = 10  # previous batches in the per-column history


def _step(span: float, integral: bool) -> float:
    """A round bin width (1, 2, 2.5 or 5 times a power of ten) giving at most ``BINS`` bins."""
    raw = span / BINS if span > 0 else 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    return max(1.0, round(step)) if integral else step


def numeric_plot(ref: Any, cur: Any) -> dict[str, Any]:
    """Histogram counts of both sides on the same round bins spanning the 0.5-99.5th
    percentiles of both (values beyond land in the end bins: ``clipped``)."""
    import numpy as np

    sides = [np.asarray(s, dtype=float) for s in (ref, cur)]
    finite = [s[np.isfinite(s)] for s in sides]
    out: dict[str, Any] = {"kind": "numeric", "missing": [int(len(s) - len(f)) for s, f
                                                          in zip(sides, finite, strict=True)]}
    both = np.concatenate(finite)
    if both.size == 0:
        return {**out, "edges": [], "reference": [], "current": [], "integral": False}
    lo, hi = (float(v) for v in np.quantile(both, [0.005, 0.995]))
    if lo == hi:
        lo, hi = float(both.min()), float(both.max())
    integral = bool(np.all(both == np.round(both)))
    step = _step(hi - lo, integral)
    start = math.floor(lo / step) * step
    n = max(1, math.ceil((hi - start) / step + (1 if integral else 0) - 1e-9))
    edges = start + step * np.arange(n + 1)
    counts = [np.histogram(np.clip(f, edges[0], edges[-1]), edges)[0].tolist() for f in finite]
    return {**out, "edges": [float(f"{e:.6g}") for e in edges], "reference": counts[0],
            "current": counts[1], "integral": integral,
            "clipped": bool(both.min() < edges[0] or both.max() > edges[-1])}


def categorical_plot(ref: Any, cur: Any, order: list[str]) -> dict[str, Any]:
    """Counts per category on both sides: the ``TOP_CATEGORIES`` with the largest share on
    either side (in the spec's order, then by share), the rest as one "other" bar."""
    from mlcore.spec_columns import label_key

    def counts(series: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for value, n in series.value_counts(dropna=False).items():
            key = "missing" if value is None or value != value else label_key(value)
            out[key] = out.get(key, 0) + int(n)
        return out

    sides = [counts(s) for s in (ref, cur)]
    totals = [max(1, sum(s.values())) for s in sides]
    share = {k: max(s.get(k, 0) / t for s, t in zip(sides, totals, strict=True))
             for k in {*sides[0], *sides[1]}}
    ranked = sorted(share, key=lambda k: (-share[k], k))
    kept, rest = ranked[:TOP_CATEGORIES], ranked[TOP_CATEGORIES:]
    rank = {k: i for i, k in enumerate(order)}
    kept.sort(key=lambda k: (k == "missing", rank.get(k, len(rank)), -share[k], k))
    out: dict[str, Any] = {"kind": "categorical", "categories": kept,
           "reference": [sides[0].get(k, 0) for k in kept],
           "current": [sides[1].get(k, 0) for k in kept], "other": len(rest)}
    if rest:
        out["categories"] = [*kept, f"other ({len(rest)} values)"]
        for i, side in ((0, "reference"), (1, "current")):
            out[side].append(sum(sides[i].get(k, 0) for k in rest))
    return out


def plot_data(reference: Any, current: Any, kinds: dict[str, str],
              spec: Any) -> dict[str, dict[str, Any]]:
    """Bounded plot data per judged column (``kinds``: column -> numeric | categorical)."""
    from mlcore.spec_columns import label_key

    def order(column: str) -> list[str]:
        if column not in spec.column_kinds:
            return []
        return [label_key(v) for v in spec.vocabulary(column)]

    return {c: numeric_plot(reference[c], current[c]) if k == "numeric"
            else categorical_plot(reference[c], current[c], order(c)) for c, k in kinds.items()}


def column_labels(spec: Any, columns: list[str]) -> dict[str, str]:
    """"description (code)" per column where the spec describes it; timestamp parts as
    "description, part (code)"; model outputs by what they are."""
    labels = {}
    for f in spec.features:
        for c in f.model_columns:
            text = f.description.strip()
            if text and c != f.name:
                text = f"{text}, {c.removeprefix(f.name + '_')}"
            labels[c] = f"{text} ({c})" if text else c
    kind = spec.target.kind
    for c in columns:
        if c == "prediction":
            what = "predicted value" if kind == "regression" else "predicted probability"
            labels[c] = f"model output: {what} (prediction)"
        elif c.startswith("prediction:"):
            labels[c] = f"model output: P({c.split(':', 1)[1]}) ({c})"
    return {c: labels.get(c, c) for c in columns}


def history(problem: str, batch_id: str, url: str,
            limit: int = HISTORY_BATCHES) -> list[dict[str, Any]]:
    """The stored drift of the ``limit`` batches ingested before ``batch_id`` (the newest
    report of each), oldest first: scores per column, verdicts, drift share."""
    from sqlalchemy import select

    from mlcore.store.models import Batch, DriftReport
    from mlcore.store.session import session_scope

    with session_scope(url) as s:
        here = s.scalar(select(Batch.id).where(Batch.problem == problem,
                                               Batch.batch_id == batch_id))
        query = (select(DriftReport).join(Batch, (Batch.problem == DriftReport.problem)
                                          & (Batch.batch_id == DriftReport.batch_id))
                 .where(DriftReport.problem == problem, DriftReport.batch_id != batch_id)
                 .order_by(Batch.id.desc(), DriftReport.id.desc()).limit(limit * 4))
        if here is not None:
            query = query.where(Batch.id < here)
        newest: dict[str, Any] = {}
        for row in s.scalars(query):
            if row.details and len(newest) < limit:
                newest.setdefault(row.batch_id, _history_entry(row))
    return list(reversed(newest.values()))


def _history_entry(row: Any) -> dict[str, Any]:
    d = row.details
    columns = {**d.get("columns", {}), **outputs(d.get("prediction") or {})}
    return {"batch_id": row.batch_id, "model_version": row.model_version,
            "checked_at": row.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            "drift_share": row.drift_share, "dataset_drift": row.dataset_drift,
            "drifted_columns": list(row.drifted_columns),
            "scores": {c: v["score"] for c, v in columns.items()},
            "drift": [c for c, v in columns.items() if v.get("drift")]}


def outputs(prediction: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model-output entries of ``details["prediction"]`` keyed by their column."""
    if "per_class" in prediction:
        return {f"prediction:{k}": v for k, v in prediction["per_class"].items()}
    return {"prediction": prediction} if prediction else {}


def build_report(result: dict[str, Any], snapshots: dict[str, Any], spec: Any,
                 plots: dict[str, dict[str, Any]], url: str) -> dict[str, Any]:
    """The JSON report: the result, Evidently's snapshots and what the page shows."""
    return {"format": FORMAT, **result, "evidently": snapshots, "plots": plots,
            "labels": column_labels(spec, list(plots)),
            "history": history(result["problem"], result["batch_id"], url),
            "links": links(result["problem"]),
            "spec": {"drift_share": spec.drift.drift_share,
                     "sample_rows": spec.drift.sample_rows},
            "checked_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}

