"""Alert delivery: each channel gets a second try, so one dropped connection does not lose the
alert (a real loopback HTTP server that fails its first request(s))."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from batchloop_airflow.alerting import channels as alert_channels


@pytest.fixture
def flaky_sink(monkeypatch):
    """An HTTP server answering 503 to its first ``fail`` POSTs, then 200; records the bodies."""
    state = {"fail": 0, "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state["fail"] > 0:
                state["fail"] -= 1
                self.send_response(503)
            else:
                state["bodies"].append(json.loads(body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(alert_channels, "RETRY_DELAY_SECONDS", 0.01)
    url = f"http://127.0.0.1:{server.server_port}/hook"
    yield state, lambda p: alert_channels._post_json(url, json.dumps(p).encode())
    server.shutdown()


def test_a_channel_that_fails_once_is_tried_again_and_sends(flaky_sink):
    state, send = flaky_sink
    state["fail"] = 1
    outcome = alert_channels._send("webhook", send, {"dedup_key": "k1"})
    assert outcome.startswith("sent (2nd try; 1st failed: HTTPError") and "503" in outcome
    assert state["bodies"] == [{"dedup_key": "k1"}]


def test_a_channel_that_keeps_failing_is_reported_failed_after_two_tries(flaky_sink):
    state, send = flaky_sink
    state["fail"] = 5
    outcome = alert_channels._send("webhook", send, {"dedup_key": "k2"})
    assert outcome.startswith("failed: HTTPError") and outcome.endswith("(2 tries)")
    assert state["fail"] == 3 and state["bodies"] == []


def test_a_healthy_channel_sends_once(flaky_sink):
    state, send = flaky_sink
    assert alert_channels._send("webhook", send, {"dedup_key": "k3"}) == "sent"
    assert state["bodies"] == [{"dedup_key": "k3"}]


def test_the_registry_picks_the_channels_the_deployment_defines(monkeypatch):
    defined = {alert_channels.SLACK_CONN}
    monkeypatch.setattr(alert_channels, "_connection", lambda c: object() if c in defined else None)
    monkeypatch.setenv(alert_channels.WEBHOOK_ENV, "http://127.0.0.1:9/hook")
    monkeypatch.delenv(alert_channels.EMAIL_TO_ENV, raising=False)
    assert [name for name, _ in alert_channels.configured()] == ["webhook", "slack"]
    monkeypatch.setenv(alert_channels.EMAIL_TO_ENV, "oncall@test.invalid")  # email, no connection
    assert [name for name, _ in alert_channels.configured()][-1] == "email"


def test_a_new_channel_is_one_function_and_one_registry_entry(monkeypatch):
    sent = []
    monkeypatch.setattr(alert_channels, "_connection", lambda c: None)
    for env in (alert_channels.WEBHOOK_ENV, alert_channels.EMAIL_TO_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("BATCHLOOP_ALERT_PAGER", "on")
    monkeypatch.setitem(alert_channels.CHANNELS, "pager", alert_channels.Channel(
        lambda payload, conn: sent.append(payload), env="BATCHLOOP_ALERT_PAGER"))
    assert alert_channels.send_all({"dedup_key": "k4"}) == {"pager": "sent"}
    assert sent == [{"dedup_key": "k4"}]
