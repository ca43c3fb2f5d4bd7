"""Read-side summary of a problem: batches, models, decisions, drift, predictions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from mlcore.config import Settings
from mlcore.registry import alias_holder, alias_log, list_versions
from mlcore.store.models import Batch, DriftReport, Evaluation, Prediction, RetrainRequest
from mlcore.store.session import session_scope


def batches(problem: str, url: str) -> list[dict[str, Any]]:
    """Every batch manifest of a problem (any state), in ingestion order."""
    with session_scope(url) as s:
        rows = s.scalars(select(Batch).where(Batch.problem == problem).order_by(Batch.id))
        return [{"batch_id": b.batch_id, "state": b.state, "rows": b.row_count,
                 "quarantined": b.quarantine_count, "sha256": b.sha256,
                 "source_uri": b.source_uri, "schema_hash": b.schema_hash,
                 "curated_uri": b.curated_uri, "code_version": b.code_version,
                 "reason": b.reason} for b in rows]


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
                     "resolved_by_version": r.resolved_by_version}
                    for r in s.scalars(select(RetrainRequest)
                                       .where(RetrainRequest.problem == problem)
                                       .order_by(RetrainRequest.id))]
    from mlcore.labels import performance_history
    return {"problem": problem, "batches": batches(problem, url),
            "models": list_versions(problem, url), "champion": alias_holder(problem, url),
            "evaluations": evals, "drift": drift, "predictions": preds,
            "retrain_requests": requests, "alias_history": alias_log(problem, url),
            "performance": performance_history(problem, url),
            "home": str(settings.home)}


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
                   f"      {r['reason'][:200]}")
    out.append("Performance on matured labels:")
    out += [f"  {p['batch_id']:<10} v{p['model_version']} {p['role']:<10} {p['metric']} "
            + ("—" if p["value"] is None else f"{p['value']:.4f}")
            + f"  coverage {p['labelled_rows']}/{p['predicted_rows']}"
            for p in data["performance"]]
    out.append("Predictions stored: " + ", ".join(f"{k}: {v}" for k, v in
                                                   data["predictions"].items()))
    return "\n".join(out)
