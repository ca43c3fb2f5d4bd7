"""Monitoring: Evidently data drift of a batch against the champion's training data; the report
is stored (JSON + HTML, DB row) and drift files a retrain request."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from sqlalchemy import delete, select, update

from mlcore.config import Settings
from mlcore.ingestion import get_batch, read_curated
from mlcore.problems import ProblemSpec
from mlcore.registry import ModelNotFound, alias_holder, get_version
from mlcore.store.models import DriftReport, RetrainRequest
from mlcore.store.session import session_scope


@dataclass(frozen=True)
class DriftResult:
    """Dataset-level drift verdict and where the reports are."""

    problem: str
    batch_id: str
    model_version: int
    drift_share: float
    drifted_columns: list[str]
    dataset_drift: bool
    json_uri: str
    html_uri: str
    retrain_request_id: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    return frame.sample(rows, random_state=0) if len(frame) > rows else frame


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, spec: ProblemSpec) -> Any:
    """Run Evidently's DataDriftPreset over the spec's features; returns the Snapshot."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=spec.numeric,
                                categorical_columns=spec.categorical)
    ref = Dataset.from_pandas(reference[spec.feature_names], data_definition=definition)
    cur = Dataset.from_pandas(current[spec.feature_names], data_definition=definition)
    report = Report([DataDriftPreset(drift_share=spec.drift.drift_share)], include_tests=True)
    return report.run(current_data=cur, reference_data=ref)


def summarize(snapshot: Any, spec: ProblemSpec) -> tuple[float, list[str]]:
    """(share of drifted features, drifted feature names) read from the preset's own tests."""
    result = snapshot.dict()
    share = next(float(m["value"]["share"]) for m in result["metrics"]
                 if "DriftedColumnsCount" in m["config"]["type"])
    drifted = sorted({c for t in result["tests"] if str(t["status"]).endswith("FAIL")
                      for c in spec.feature_names if t.get("metric_config", {}).get(
                          "params", {}).get("column") == c})
    return share, drifted


def detect_drift(spec: ProblemSpec, batch_id: str, settings: Settings) -> DriftResult:
    """Compare a batch with the champion's training batches; file a retrain request on drift.

    Raises:
        ModelNotFound: there is no champion (nothing to compare against).
    """
    batch = get_batch(spec.name, batch_id, settings.db_url)
    version = alias_holder(spec.name, settings.db_url)
    if version is None:
        raise ModelNotFound(f"batch {batch_id!r}: {spec.name!r} has no champion to monitor")
    champion = get_version(spec.name, version, settings.db_url)
    n = spec.drift.sample_rows
    reference = _sample(pd.concat([read_curated(get_batch(spec.name, b, settings.db_url),
                                                spec.feature_names)
                                   for b in champion.training_batch_ids]), n)
    current = _sample(read_curated(batch, spec.feature_names), n)
    snapshot = drift_report(reference, current, spec)
    share, drifted = summarize(snapshot, spec)
    out = settings.partition("reports", spec.name, batch_id)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / f"drift_v{version}.json", out / f"drift_v{version}.html"
    snapshot.save_json(str(json_path))
    snapshot.save_html(str(html_path))
    is_drift = share >= spec.drift.drift_share
    request_id = _record(spec, batch_id, version, share, drifted, is_drift,
                         (str(json_path), str(html_path)), settings.db_url)
    return DriftResult(spec.name, batch_id, version, share, drifted, is_drift, str(json_path),
                       str(html_path), request_id)


def _record(spec: ProblemSpec, batch_id: str, version: int, share: float, drifted: list[str],
            is_drift: bool, paths: tuple[str, str], url: str) -> int | None:
    with session_scope(url) as s:
        s.execute(delete(DriftReport).where(DriftReport.problem == spec.name,
                                            DriftReport.batch_id == batch_id,
                                            DriftReport.model_version == version))
        s.add(DriftReport(problem=spec.name, batch_id=batch_id, model_version=version,
                          drift_share=share, drifted_columns=drifted, dataset_drift=is_drift,
                          json_uri=paths[0], html_uri=paths[1]))
        if not is_drift:
            return None
        pending = s.scalar(select(RetrainRequest.id).where(  # a retried check files no second one
            RetrainRequest.problem == spec.name, RetrainRequest.batch_id == batch_id,
            RetrainRequest.trigger == "drift", RetrainRequest.state == "pending"))
        if pending is not None:
            return int(pending)
        request = RetrainRequest(problem=spec.name, trigger="drift", batch_id=batch_id,
                                 reason=f"batch {batch_id}: {share:.0%} of features drifted "
                                        f"vs champion v{version} ({', '.join(drifted)})")
        s.add(request)
        s.flush()
        return request.id


def close_retrain_requests(problem: str, version: int, url: str) -> int:
    """Mark every pending retrain request of ``problem`` as answered by ``version``."""
    with session_scope(url) as s:
        return int(s.execute(update(RetrainRequest).where(
            RetrainRequest.problem == problem, RetrainRequest.state == "pending",
        ).values(state="trained", resolved_by_version=version)).rowcount)  # type: ignore[attr-defined]
