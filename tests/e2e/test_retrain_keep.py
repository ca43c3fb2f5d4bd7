"""A retrain that keeps the champion still refreshes the monitoring page: the promotion gate
skips only the promotion (it once skipped every task after it, the page included)."""

from __future__ import annotations

from pathlib import Path

from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.registry import alias_holder


def test_a_kept_champion_skips_promotion_but_refreshes_the_page(airflow_db, mlcore_env, spec,
                                                                 slices, run_or_error):
    settings, dag_id = mlcore_env, f"{spec.name}__retrain_model"
    for year in (2015, 2016):
        ingest_batch(spec, str(slices[year]), str(year), settings)
        materialize_batch(spec, str(year), settings)
    conf = {"until_batch": "2016", "algorithm": "logistic_regression", "reason": "test"}
    first, error = run_or_error(dag_id, conf)
    assert error is None and first["tasks"]["promote_contender"]["state"] == "success"
    page = Path(first["tasks"]["publish_monitoring_page"]["value"])
    before = page.stat().st_mtime_ns

    # The same data, algorithm and seed again: an identical contender is too close to call.
    again, error = run_or_error(dag_id, conf)

    assert error is None
    tasks = again["tasks"]
    assert tasks["evaluate_contender"]["value"]["promote"] is False
    assert tasks["should_promote"]["state"] == "success"  # it ran and said no
    assert tasks["promote_contender"]["state"] == "skipped"
    assert tasks["publish_monitoring_page"]["state"] == "success"
    assert tasks["release_retrain"]["state"] == "success"
    assert alias_holder(spec.name, settings.db_url) == first["tasks"]["evaluate_contender"][
        "value"]["contender_version"]
    assert Path(tasks["publish_monitoring_page"]["value"]) == page
    assert page.stat().st_mtime_ns > before  # the page was rewritten
