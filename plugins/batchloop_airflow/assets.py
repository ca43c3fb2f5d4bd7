"""One Asset per problem and stage output. Events carry ``{"batch_id": ...}`` in ``extra``."""

from __future__ import annotations

from airflow.sdk import Asset

# stage output -> what it means for the consumers scheduled on it
OUTPUTS = {
    "curated": "a batch was validated and published (ingest_batch)",
    "features": "a batch's features are in the offline and online stores (materialize_features)",
    "predictions": "a batch was scored by the champion (score_batch)",
    "retrain_requests": "monitoring asked for a retrain (monitor_model)",
    "champion": "the champion alias moved (retrain_model)",
    "labels": "a batch's late ground-truth labels were stored and measured (ingest_labels)",
}


def stage_asset(problem: str, output: str) -> Asset:
    """The Asset for ``output`` of ``problem`` (e.g. ``batchloop://census_employment/curated``)."""
    if output not in OUTPUTS:
        raise KeyError(f"unknown stage output {output!r}; known: {sorted(OUTPUTS)}")
    return Asset(name=f"{problem}.{output}", uri=f"batchloop://{problem}/{output}",
                 extra={"meaning": OUTPUTS[output]})
