"""A task that fails for good sends one alert to the webhook sink (a real loopback HTTP server),
carrying what the on-call engineer needs; a sink that is down does not mask the failure."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest


@pytest.fixture
def sink(monkeypatch):
    """A loopback HTTP server collecting POSTed JSON bodies; its URL is the webhook."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("BATCHLOOP_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/alert")
    yield received
    server.shutdown()


def test_a_failed_task_alerts_the_webhook_once(airflow_db, mlcore_env, spec, run_or_error,
                                               tmp_path, sink):
    dag_id = f"{spec.name}__ingest_batch"
    missing = tmp_path / "nope.parquet"
    _, error = run_or_error(dag_id, {"batch_id": "a1", "source": str(missing)})
    assert error is not None
    [alert] = sink  # bad input fails without retries: exactly one alert
    assert (alert["problem"], alert["dag_id"], alert["task_id"]) == (
        spec.name, dag_id, "ingest_batch")
    assert alert["batch_id"] == "a1" and alert["try_number"] == 1
    assert "nope.parquet" in alert["error"]
    assert len(alert["dedup_key"]) == 16 and alert["runbook"] and alert["log_url"]
    assert any("mlcore batches" in step for step in alert["next_steps"])


def test_an_unreachable_sink_does_not_mask_the_failure(airflow_db, mlcore_env, spec,
                                                       run_or_error, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHLOOP_ALERT_WEBHOOK", "http://127.0.0.1:9/unreachable")
    _, error = run_or_error(f"{spec.name}__ingest_batch",
                            {"batch_id": "a2", "source": str(tmp_path / "nope.parquet")})
    assert error is not None and "ingest_batch" in error
