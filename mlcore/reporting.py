"""Read-side summary of a problem: batches, models, decisions, drift, predictions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from mlcore.backfill import load_state
from mlcore.config import Settings
from mlcore.labels import performance_history
from mlcore.model.registry import alias_holder, alias_log, get_version, list_versions
from mlcore.store.catalog import all_batches, published_batches
from mlcore.store.models import DriftReport, Evaluation, Prediction, QuarantinedRow, RetrainRequest
from mlcore.store.session import session_scope


def batches(problem: str, url: str) -> list[dict[str, Any]]:
    """Every batch manifest of a problem (any state), in ingestion order."""
    return [{"batch_id": b.batch_id, "state": b.state, "rows": b.row_count,
             "quarantined": b.quarantine_count, "sha256": b.sha256,
             "source_uri": b.source_uri, "schema_hash": b.schema_hash,
             "curated_uri": b.curated_uri, "code_version": b.code_version,
             "reason": b.reason} for b in all_batches(problem, url)]


def summary(problem: str, settings: Settings) -> dict[str, Any]:
    """Everything the demo prints, as plain data (also ``mlcore report --json``)."""
    url = settings.db_url
    with session_scope(url) as s:
        evals = [{"id": e.id, "contender": e.contender_version, "champion": e.champion_version,
                  "holdout": e.holdout_batch_ids, "holdout_rows": e.holdout_rows,
                  "metric": e.metric, "contender_value": e.contender_metrics[e.metric],
                  "champion_value": (e.champion_metrics or {}).get(e.metric),
                  "delta": e.delta, "ci": [e.ci_low, e.ci_high], "promote": e.promote,
                  "outcome": e.outcome or ("promote" if e.promote else "keep"),
                  "reason": e.reason, "run_card": e.run_card_uri,
                  "method": (e.details or {}).get("split")}
                 for e in s.scalars(select(Evaluation).where(Evaluation.problem == problem)
                                    .order_by(Evaluation.id))]
        drift = [{"batch_id": d.batch_id, "model_version": d.model_version,
                  "drift_share": d.drift_share, "dataset_drift": d.dataset_drift,
                  "drifted_columns": d.drifted_columns, "html": d.html_uri, "json": d.json_uri}
                 for d in s.scalars(select(DriftReport).where(DriftReport.problem == problem)
                                    .order_by(DriftReport.id))]
        preds = {f"{b}@v{v}": n for b, v, n in s.execute(
            select(Prediction.batch_id, Prediction.model_version, func.count())
            .where(Prediction.problem == problem)
            .group_by(Prediction.batch_id, Prediction.model_version)
            .order_by(Prediction.batch_id))}
        requests = [{"id": r.id, "trigger": r.trigger, "triggers": r.triggers or [r.trigger],
                     "state": r.state, "reason": r.reason, "batch_id": r.batch_id,
                     "resolved_by_version": r.resolved_by_version, "run_id": r.run_id,
                     "error": r.error}
                    for r in s.scalars(select(RetrainRequest)
                                       .where(RetrainRequest.problem == problem)
                                       .order_by(RetrainRequest.id))]
    return {"problem": problem, "batches": batches(problem, url),
            "models": list_versions(problem, url), "champion": alias_holder(problem, url),
            "evaluations": evals, "drift": drift, "predictions": preds,
            "retrain_requests": requests, "alias_history": alias_log(problem, url),
            "performance": performance_history(problem, url),
            "home": str(settings.home) if settings.home_is_local else settings.home_uri}


def format_summary(data: dict[str, Any]) -> str:
    """The summary as a human-readable report."""
    out = [f"== Batchloop summary: {data['problem']} (state in {data['home']}) =="]
    out.append("Batches:")
    out += [f"  {b['batch_id']:<10} {b['state']:<9} rows {b['rows']:>7}  quarantined "
            f"{b['quarantined']:>5}  sha256 {b['sha256'][:12]}"
            + (f"\n             {b['reason']}" if b["reason"] else "") for b in data["batches"]]
    out.append("Model versions:")
    for m in reversed(data["models"]):
        tag = f"  <- {', '.join(m['aliases'])}" if m["aliases"] else ""
        tuned = ", ".join(f"{k}={v}" for k, v in m["hyperparameters"].items()
                          if k not in ("algorithm", "random_state"))
        out.append(f"  v{m['version']:<3} {m['algorithm']:<24} trained on "
                   f"{','.join(m['training_batch_ids']):<16} {tuned}{tag}")
    champion = data["champion"]
    out.append(f"Champion: {'none yet' if champion is None else f'v{champion}'}")
    out.append("Decisions (contender vs champion on the frozen holdout):")
    for e in data["evaluations"]:
        champ = "—" if e["champion"] is None else f"v{e['champion']}"
        where = ",".join(e["holdout"]) + (" (shadow)" if e.get("method") == "shadow" else "")
        out.append(f"  holdout {where:<6} v{e['contender']} vs {champ:<3} "
                   f"{e['outcome'].upper()} — {e['reason']}"
                   + (f"\n      run card {e['run_card']}" if e["run_card"] else ""))
    out.append("Drift (Evidently, batch vs champion's training data):")
    out += [f"  {d['batch_id']:<10} vs v{d['model_version']}: drift share {d['drift_share']:.2f}"
            f" {'DRIFT' if d['dataset_drift'] else 'ok':<5} report {d['html']}"
            for d in data["drift"]]
    out.append("Retrain requests (the policy's triggers and what answered them):")
    for r in data["retrain_requests"]:
        answer = f" -> v{r['resolved_by_version']}" if r["resolved_by_version"] else ""
        out.append(f"  #{r['id']:<3} batch {r['batch_id'] or '—':<6} "
                   f"{'+'.join(r['triggers']):<20} {r['state']}{answer}\n"
                   f"      {r['reason'][:200]}"
                   + (f"\n      failed in run {r['run_id']}: {r['error'][:300]}"
                      if r.get("error") else ""))
    out.append("Performance on matured labels:")
    out += [f"  {p['batch_id']:<10} v{p['model_version']} {p['role']:<10} {p['metric']} "
            + ("—" if p["value"] is None else f"{p['value']:.4f}")
            + f"  coverage {p['labelled_rows']}/{p['predicted_rows']}"
            for p in data["performance"]]
    out.append("Predictions stored: " + ", ".join(f"{k}: {v}" for k, v in
                                                   data["predictions"].items()))
    return "\n".join(out)


# Read helpers of the Airflow view's cockpit (``batchloop_airflow.ui_*``): plain data, no HTML.

STAGES = ("materialize", "score", "monitor")  # the per-batch stages of ``mlcore.backfill``


def quarantine_breakdown(problem: str, url: str, examples: int = 3
                         ) -> dict[str, list[dict[str, Any]]]:
    """Per batch, each quarantine rule with its row count and the first ``examples`` rows
    (row number and reason), most frequent rule first."""

    out: dict[str, list[dict[str, Any]]] = {}
    with session_scope(url) as s:
        counts = list(s.execute(
            select(QuarantinedRow.batch_id, QuarantinedRow.rule, func.count())
            .where(QuarantinedRow.problem == problem)
            .group_by(QuarantinedRow.batch_id, QuarantinedRow.rule)))
        for batch_id, rule, n in sorted(counts, key=lambda r: (r[0], -r[2], r[1])):
            rows = s.execute(
                select(QuarantinedRow.row_number, QuarantinedRow.reason)
                .where(QuarantinedRow.problem == problem, QuarantinedRow.batch_id == batch_id,
                       QuarantinedRow.rule == rule)
                .order_by(QuarantinedRow.row_number).limit(examples))
            out.setdefault(batch_id, []).append(
                {"rule": rule, "rows": int(n),
                 "examples": [{"row": int(r), "reason": why} for r, why in rows]})
    return out


def drift_by_batch(problem: str, url: str) -> dict[str, list[dict[str, Any]]]:
    """Per batch, each drift report (one per model version checked): drifted columns, drift
    share, and the prediction's drift (method, score, threshold) from the stored details."""
    out: dict[str, list[dict[str, Any]]] = {}
    with session_scope(url) as s:
        for d in s.scalars(select(DriftReport).where(DriftReport.problem == problem)
                           .order_by(DriftReport.id)):
            prediction = (d.details or {}).get("prediction") or {}
            out.setdefault(d.batch_id, []).append({
                "model_version": d.model_version, "drift_share": d.drift_share,
                "dataset_drift": d.dataset_drift, "drifted_columns": list(d.drifted_columns),
                "prediction_drift": prediction.get("drift"),
                "prediction_score": prediction.get("score"),
                "prediction_method": prediction.get("method"),
                "html": d.html_uri, "at": d.created_at.isoformat()})
    return out


def missing_stages(problem: str, settings: Settings) -> dict[str, list[str]]:
    """Per published batch, the stages it lacks: not materialized, not scored by the current
    champion, not drift-checked against it (the definition ``mlcore backfill`` plans with:
    ``backfill.load_state``). Without a champion only materialization is expected."""

    ids = [b.batch_id for b in published_batches(problem, settings.db_url)]
    if not ids:
        return {}
    champion = alias_holder(problem, settings.db_url)
    out: dict[str, list[str]] = {}
    for stage in STAGES if champion is not None else STAGES[:1]:
        done = load_state(problem, stage, ids, settings).done
        for batch_id in ids:
            if batch_id not in done:
                out.setdefault(batch_id, []).append(stage)
    return out


def stalled_requests(problem: str, url: str, older_than_hours: float
                     ) -> list[dict[str, Any]]:
    """Pending retrain requests filed more than ``older_than_hours`` ago, oldest first."""
    from datetime import UTC, datetime, timedelta

    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
    out = []
    with session_scope(url) as s:
        for r in s.scalars(select(RetrainRequest).where(RetrainRequest.problem == problem,
                                                        RetrainRequest.state == "pending")
                           .order_by(RetrainRequest.id)):
            filed = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
            if filed < cutoff:
                out.append({"id": r.id, "batch_id": r.batch_id, "reason": r.reason,
                            "triggers": r.triggers or [r.trigger], "created_at": filed.isoformat(),
                            "age_hours": (datetime.now(UTC) - filed).total_seconds() / 3600})
    return out


def version_detail(problem: str, version: int, url: str) -> dict[str, Any]:
    """One model version as the view's version page shows it: the registry row, every
    evaluation it took part in (as contender or champion, with slices and guardrails), its
    alias moves and the batches it scored or was drift-checked on.

    Raises:
        ModelNotFound: no such version.
    """

    mv = get_version(problem, version, url)
    with session_scope(url) as s:
        evals = [{"id": e.id, "contender": e.contender_version, "champion": e.champion_version,
                  "holdout": e.holdout_batch_ids, "holdout_rows": e.holdout_rows,
                  "metric": e.metric, "contender_metrics": e.contender_metrics,
                  "champion_metrics": e.champion_metrics, "delta": e.delta,
                  "ci": [e.ci_low, e.ci_high], "outcome": e.outcome or (
                      "promote" if e.promote else "keep"), "reason": e.reason,
                  "slices": (e.details or {}).get("slices") or [],
                  "guardrails": (e.details or {}).get("guardrails") or [],
                  "method": (e.details or {}).get("split"), "run_card": e.run_card_uri,
                  "at": e.created_at.isoformat()}
                 for e in s.scalars(select(Evaluation).where(
                     Evaluation.problem == problem,
                     (Evaluation.contender_version == version)
                     | (Evaluation.champion_version == version)).order_by(Evaluation.id))]
        scored = list(s.scalars(select(Prediction.batch_id).where(
            Prediction.problem == problem, Prediction.model_version == version).distinct()))
    moves = [h for h in alias_log(problem, url) if version in (h["from"], h["to"])]
    holders = {a: alias_holder(problem, url, a) for a in ("champion", "challenger")}
    return {"problem": problem, "version": mv.version, "algorithm": mv.algorithm,
            "hyperparameters": mv.hyperparameters, "metrics": mv.metrics,
            "training_batch_ids": mv.training_batch_ids, "train_rows": mv.train_rows,
            "data_hash": mv.data_hash, "artifact_sha256": mv.artifact_sha256,
            "code_version": mv.code_version, "spec_hash": mv.spec_hash,
            "timings": mv.timings, "created_at": mv.created_at.isoformat(),
            "aliases": sorted(a for a, v in holders.items() if v == version),
            "evaluations": evals, "alias_history": moves, "scored_batches": sorted(scored)}
