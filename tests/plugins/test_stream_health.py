"""Online ingestion's health in the backlog sweep's alerts and in the Batchloop view, against a
real Redis (a claimed db) and a real metadata store (SQLite under a fresh ``MLCORE_HOME``).

Stream state is made with the core's own pieces (``EventBus``: events, the consumer group, dead
letters; ``ledger``: events taken in, segments sealed); the spec is a copy with small
``stream:`` thresholds (lag 5, dead letters 2). Alerts are caught where they go: the journal
under ``MLCORE_HOME/alerts`` and a loopback webhook (``BATCHLOOP_ALERT_WEBHOOK``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "census_employment"
SWEEP = f"{PROBLEM}__sweep_backlog"
DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


def _webhook_sink() -> SimpleNamespace:
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return SimpleNamespace(server=server, got=got, url=f"http://127.0.0.1:{server.server_port}/a")


@pytest.fixture
def stream(request, tmp_path, monkeypatch):
    """A claimed Redis db as ``MLCORE_STREAM_URL``, a spec copy with small thresholds as the
    problems dir, a fresh migrated ``MLCORE_HOME``, a webhook sink as the alert channel."""
    client, db = request.getfixturevalue("claim_redis_db")()
    problems = tmp_path / "problems"
    problems.mkdir()
    for path in (ROOT / "problems").glob("*.yaml"):  # all of them: DAGs parse from this dir
        raw = yaml.safe_load(path.read_text())
        if path.stem == PROBLEM:
            raw["stream"] = {"max_lag_events": 5, "max_dead_letters": 2}
        (problems / path.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    sink = _webhook_sink()
    url = f"redis://127.0.0.1:6379/{db}"
    for name, value in {"MLCORE_STREAM_URL": url, "MLCORE_PROBLEMS_DIR": str(problems),
                        "BATCHLOOP_ALERT_WEBHOOK": sink.url}.items():
        monkeypatch.setenv(name, value)
    for name in ("AIRFLOW_CONN_BATCHLOOP_ALERT_WEBHOOK", "AIRFLOW_CONN_BATCHLOOP_ALERT_SLACK",
                 "AIRFLOW_CONN_BATCHLOOP_ALERT_SMTP", "BATCHLOOP_ALERT_EMAIL_TO"):
        monkeypatch.delenv(name, raising=False)
    settings = request.getfixturevalue("mlcore_env")
    from mlcore.problems import get_problem
    from mlcore.stream.bus import EventBus

    bus = EventBus(url, PROBLEM)
    try:
        yield SimpleNamespace(url=url, bus=bus, sink=sink, settings=settings,
                              spec=get_problem(PROBLEM), monkeypatch=monkeypatch)
    finally:
        bus.close()
        sink.server.shutdown()
        client.flushdb()
        client.close()


def _events(start: int, n: int) -> list[dict]:
    return [{"event_id": f"e{i}", "person_id": i} for i in range(start, start + n)]


def sweep() -> list[dict]:
    from batchloop_airflow.sweep import alert_stream

    return alert_stream(PROBLEM, {"dag": SimpleNamespace(dag_id=SWEEP), "run_id": "manual__t"})


def journaled(settings) -> dict[str, dict]:
    folder = settings.home / "alerts"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _drain(bus) -> None:
    """What the service does with what it read: read everything, acknowledge it."""
    bus.ack([i for i, _ in bus.read("t", 1000, 100)])


# --- the payload ---------------------------------------------------------------------------


def _payload(**kw):
    from batchloop_airflow.alerting.payload import stream_payload

    args = {"problem": PROBLEM, "finding": "lag", "text": "lag 8 events > 5",
            "status": {"lag": 8, "pending": 0, "dead_letters": 1, "open_events": 2,
                       "events_taken": 9, "last_sealed": None},
            "episode": "2026-12-07T15:00:00+00:00", "sweep_dag_id": SWEEP,
            "sweep_run_id": "scheduled__1",
            "thresholds": {"max_lag_events": 5, "max_dead_letters": 2}} | kw
    return stream_payload(**args)


def test_the_stream_payload_says_what_where_and_what_to_run(monkeypatch):
    from batchloop_airflow.alerting.channels import subject, text

    monkeypatch.delenv("BATCHLOOP_RUNBOOK_URL", raising=False)
    p = _payload()
    assert (p["kind"], p["title"], p["problem"], p["stage"], p["finding"]) == (
        "stream_unhealthy", "STREAM UNHEALTHY", PROBLEM, "stream", "lag")
    assert (p["dag_id"], p["run_id"], p["error"], p["since"]) == (
        SWEEP, "scheduled__1", "lag 8 events > 5", "2026-12-07T15:00:00+00:00")
    assert p["stream"] == {"lag": 8, "pending": 0, "dead_letters": 1, "open_events": 2,
                           "events_taken": 9}
    assert p["runbook"].endswith("/batchloop/runbook#stream-unhealthy")
    assert p["log_url"].endswith(f"/dags/{SWEEP}/runs/scheduled__1")
    assert p["next_steps"][:2] == [f"mlcore stream status --problem {PROBLEM} --json",
                                   f"mlcore stream serve --problem {PROBLEM}  # if no service "
                                   "is running for it (one per problem); else give it more "
                                   "CPU or a higher stream.read_count"]
    assert p["batch_id"] is None and p["dedup_key"].endswith("-stream")
    assert subject(p) == f"[Batchloop] STREAM UNHEALTHY: {PROBLEM} stream"
    body = text(p)
    assert "What happened: lag 8 events > 5" in body and '"max_lag_events": 5' in body
    dead = _payload(finding="dead_letters")["next_steps"][1]
    assert f"XREVRANGE batchloop:{PROBLEM}:dead + - COUNT 10" in dead


def test_the_stream_dedup_key_is_one_per_problem_finding_and_episode():
    key = _payload()["dedup_key"]
    assert _payload(text="lag 9000 events > 5", status={"lag": 9000})["dedup_key"] == key
    others = {_payload(episode="2026-12-07T16:00:00+00:00")["dedup_key"],
              _payload(finding="dead_letters")["dedup_key"],
              _payload(problem="used_car_price")["dedup_key"]}
    assert key not in others and len(others) == 3


def test_a_rejected_finding_names_the_rejected_batch():
    last = {"batch_id": f"{PROBLEM}-stream-000002", "state": "rejected", "events": 3,
            "sealed_at": None, "reason": "x"}
    assert _payload(finding="rejected", status={"last_sealed": last})["batch_id"] == (
        f"{PROBLEM}-stream-000002")
    assert _payload(finding="lag", status={"last_sealed": last})["batch_id"] is None


# --- the sweep -----------------------------------------------------------------------------


def test_lag_over_the_threshold_pages_once_until_it_clears_and_again_when_it_comes_back(stream):
    bus = stream.bus
    bus.ensure_group()
    bus.add(_events(0, 5))
    assert sweep() == []  # lag 5, not over 5
    assert journaled(stream.settings) == {} and stream.sink.got == []

    bus.add(_events(5, 3))  # lag 8 > 5
    [found] = sweep()
    assert found["code"] == "lag" and found["text"].startswith(
        "lag 8 events > stream.max_lag_events 5")
    [alert] = stream.sink.got
    assert (alert["kind"], alert["finding"], alert["stream"]["lag"]) == (
        "stream_unhealthy", "lag", 8)
    assert alert["thresholds"] == {"max_lag_events": 5, "max_dead_letters": 2}
    assert list(journaled(stream.settings)) == [alert["dedup_key"]]
    assert journaled(stream.settings)[alert["dedup_key"]]["deliveries"] == {"webhook": "sent"}

    bus.add(_events(8, 4))  # still over (lag 12): the same episode, not paged again
    [again] = sweep()
    assert again["delivered"] == {"journal": "duplicate"} and again["since"] == found["since"]
    assert len(stream.sink.got) == 1

    _drain(bus)  # the service caught up: lag 0, the episode ends
    assert bus.state().lag == 0 and sweep() == []
    bus.add(_events(12, 6))  # lag 6 > 5: a new episode pages again
    [back] = sweep()
    assert back["since"] > found["since"] and back["delivered"] == {"webhook": "sent"}
    assert len(stream.sink.got) == 2 and stream.sink.got[1]["dedup_key"] != alert["dedup_key"]
    assert len(journaled(stream.settings)) == 2


def test_dead_letters_over_the_threshold_page(stream):
    stream.bus.ensure_group()
    stream.bus.dead_letter([{"_rule": "range", "_reason": "age -1", "_entry": f"1-{i}"}
                            for i in range(2)])
    assert sweep() == []  # 2, not over 2
    stream.bus.dead_letter([{"_rule": "range", "_reason": "age -1", "_entry": "1-9"}])
    [found] = sweep()
    assert found["code"] == "dead_letters" and found["text"].startswith("3 dead letters > ")
    [alert] = stream.sink.got
    assert alert["stream"]["dead_letters"] == 3 and alert["finding"] == "dead_letters"


def test_each_rejected_segment_pages_once(stream):
    from mlcore.stream import ledger

    url = stream.settings.db_url
    ledger.take_in(PROBLEM, [(f"e{i}", {"person_id": i}) for i in range(3)], "employed", url)
    ledger.finish(PROBLEM, ledger.claim(PROBLEM, url, 1), "rejected", "bad rows", url)
    [first] = sweep()
    assert first["code"] == "rejected" and stream.sink.got[0]["batch_id"] == (
        f"{PROBLEM}-stream-000001")
    assert sweep()[0]["delivered"] == {"journal": "duplicate"}
    ledger.finish(PROBLEM, ledger.claim(PROBLEM, url, 1), "rejected", "bad rows", url)
    assert sweep()[0]["delivered"] == {"webhook": "sent"}
    assert [a["batch_id"] for a in stream.sink.got] == [f"{PROBLEM}-stream-000001",
                                                       f"{PROBLEM}-stream-000002"]


def test_redis_down_pages_only_for_a_streamed_problem_and_never_raises(stream):
    from mlcore.stream import ledger

    stream.monkeypatch.setenv("MLCORE_STREAM_URL", DOWN)
    from mlcore.config import get_settings

    get_settings.cache_clear()
    assert sweep() == [] and stream.sink.got == []  # nobody streams it: no alert
    ledger.take_in(PROBLEM, [("e1", {"person_id": 1})], "employed", stream.settings.db_url)
    [found] = sweep()
    assert found["code"] == "unreachable"
    assert found["text"].startswith("stream engine unreachable at redis://127.0.0.1:1/0 "
                                    "(ConnectionError: ")
    assert sweep()[0]["delivered"] == {"journal": "duplicate"}
    assert [a["finding"] for a in stream.sink.got] == ["unreachable"]


def test_the_sweep_dag_has_the_stream_task_and_parses_light():
    code = ("import runpy, sys, json\nns = runpy.run_path('dags/sweep_backlog.py')\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pandas', 'redis', 'numpy', 'pyarrow', 'sklearn'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")})
    assert json.loads(out.stdout.splitlines()[-1]) == []
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "sweep_backlog.py"))
    assert not bag.import_errors
    dag = bag.dags[SWEEP]
    assert dag.get_task("alert_stream").downstream_task_ids == set()
    assert len((ROOT / "dags" / "sweep_backlog.py").read_text().splitlines()) <= 120


def test_the_sweep_dag_run_pages_a_stream_over_its_lag(stream, airflow_db, run_or_error):
    """The real DAG (``dag.test``): its ``alert_stream`` task delivers the alert."""
    stream.bus.ensure_group()
    stream.bus.add(_events(0, 8))
    result, error = run_or_error(SWEEP, {})
    assert error is None, error
    [found] = result["tasks"]["alert_stream"]["value"]
    assert found["code"] == "lag" and found["delivered"] == {"webhook": "sent"}
    [alert] = stream.sink.got
    assert (alert["finding"], alert["run_id"], alert["dag_id"]) == ("lag", result["run_id"], SWEEP)


# --- the view ------------------------------------------------------------------------------


def render(stream) -> tuple[dict, str]:
    from batchloop_airflow.ui.page import problem_data, render_problem

    data = problem_data(stream.spec, stream.settings.model_copy(
        update={"stream_url": os.environ["MLCORE_STREAM_URL"]}))
    return data, render_problem(data, stream.settings.home, stream.spec,
                                {"csrf": "t", "can": {"rerun": False, "models": False}})


def test_the_view_shows_stream_health_and_lists_its_findings(stream):
    from batchloop_airflow.ui.cockpit import count
    from mlcore.stream import ledger

    _, page = render(stream)
    assert "Not streamed: no events for this problem" in page and "<b class=\"bad\">STREAM" \
        not in page

    url = stream.settings.db_url
    ledger.take_in(PROBLEM, [(f"e{i}", {"person_id": i}) for i in range(3)], "employed", url)
    ledger.finish(PROBLEM, ledger.claim(PROBLEM, url, 2), "published", None, url)
    stream.bus.ensure_group()
    stream.bus.add(_events(0, 9))
    stream.bus.read("t", 2, 100)  # 2 delivered, not acknowledged: pending 2, lag 7
    data, page = render(stream)
    h = data["attention"]["stream"]
    assert (h["status"]["lag"], h["status"]["pending"], h["status"]["open_events"]) == (7, 2, 1)
    assert "<th>Lag (max 5)</th>" in page and "<th>Dead letters (max 2)</th>" in page
    assert ('<tr><td><span class="num bad">7</span></td><td><span class="num">2</span></td>'
            '<td><span class="num">0</span></td><td><span class="num">1</span> since ') in page
    assert (f'{PROBLEM}-stream-000001 (<span class="ok">published</span>, 2 events) sealed '
            '<span class="when"') in page
    assert ('<b class="bad">STREAM</b> lag 7 events &gt; stream.max_lag_events 5' in page
            or '<b class="bad">STREAM</b> lag 7 events > stream.max_lag_events 5' in page)
    # the stream finding is one more item; what else needs attention depends on the Airflow DB
    # the rest of the suite left (paused DAGs, runs): counted, not assumed to be nothing
    others = count({**data["attention"], "stream": None})
    assert count(data["attention"]) == others + 1 and f"Needs attention ({others + 1})" in page


def test_the_view_says_unreachable_fast_when_redis_is_down(stream):
    from mlcore.stream import ledger

    stream.monkeypatch.setenv("MLCORE_STREAM_URL", DOWN)
    ledger.take_in(PROBLEM, [("e1", {"person_id": 1})], "employed", stream.settings.db_url)
    started = time.monotonic()
    data, page = render(stream)
    h = data["attention"]["stream"]
    assert h["unreachable"].startswith("ConnectionError") and h["seconds"] < 1.5
    assert time.monotonic() - started < 30  # the whole page, not just its stream part
    assert ('<b class="bad">unreachable</b>: the stream engine at redis://127.0.0.1:1/0 did '
            "not answer") in page
    assert "Events taken in so far: <span class=\"num\">1</span>" in page
    assert '<b class="bad">STREAM</b> stream engine unreachable at redis://127.0.0.1:1/0' in page
