"""On-call alerts through real Batchloop DAG runs (``dag.test``) and real sinks started here: a
loopback HTTP server (the ``BATCHLOOP_ALERT_WEBHOOK`` URL, the ``batchloop_alert_webhook`` HTTP
connection and the ``batchloop_alert_slack`` webhook) and a loopback SMTP server (aiosmtpd, the
``batchloop_alert_smtp`` connection). A task that fails for good alerts every channel once; one
channel down does not stop the others nor mask the failure; retries alert only when final; the
runbook has a section for every alert and every command it gives parses.

A killed task and a missed deadline need the real scheduler: ``test_alerts_scheduler.py``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import html
import json
import logging
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow_stack import free_port
from pg_database import PG_ADMIN_URL
from sqlalchemy import create_engine, make_url, text
from test_runbook_drill import lose_a_batch, run_verbatim, section_commands, variables

ROOT = Path(__file__).resolve().parents[2]
HOOK_PASSWORD = f"hook-pw-{uuid.uuid4().hex}"
SLACK_TOKEN = f"T0/B0/{uuid.uuid4().hex}"


def start_http_sink() -> SimpleNamespace:
    """A loopback HTTP server: every POST's path, headers and body, by path; answers 200 ok."""
    got: dict[str, list[dict]] = defaultdict(list)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got[self.path.split("/")[1]].append({"path": self.path, "body": body,
                                                 "headers": dict(self.headers)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return SimpleNamespace(server=server, port=server.server_port, got=got)


def start_smtp_sink() -> SimpleNamespace:
    """A loopback SMTP server (aiosmtpd): every message received, parsed."""
    from aiosmtpd.controller import Controller

    messages: list[email.message.EmailMessage] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
            messages.append(email.message_from_bytes(envelope.content,
                                                     policy=email.policy.default))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    return SimpleNamespace(controller=controller, port=port, messages=messages)


def channel_env(http_port: int, smtp_port: int) -> dict[str, str]:
    """Every channel configured the production way: env + ``AIRFLOW_CONN_*`` connections."""
    return {
        "BATCHLOOP_ALERT_WEBHOOK": f"http://127.0.0.1:{http_port}/alert",
        "AIRFLOW_CONN_BATCHLOOP_ALERT_WEBHOOK": json.dumps({
            "conn_type": "http", "host": f"http://127.0.0.1:{http_port}/hook",
            "login": "alerts", "password": HOOK_PASSWORD}),
        "AIRFLOW_CONN_BATCHLOOP_ALERT_SLACK": json.dumps({
            "conn_type": "slackwebhook",
            "password": f"http://127.0.0.1:{http_port}/slack/{SLACK_TOKEN}"}),
        "AIRFLOW_CONN_BATCHLOOP_ALERT_SMTP": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
            "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0,
                      "timeout": 5, "from_email": "batchloop@test.invalid"}}),
        "BATCHLOOP_ALERT_EMAIL_TO": "oncall@test.invalid",
    }


def alerts_at(http, smtp) -> dict[str, list]:
    """What each channel received: payloads (webhooks), texts (Slack), messages (SMTP)."""
    return {"webhook": [json.loads(r["body"]) for r in http.got["alert"]],
            "webhook_connection": [json.loads(r["body"]) for r in http.got["hook"]],
            "slack": [json.loads(r["body"])["text"] for r in http.got["slack"]],
            "email": list(smtp.messages)}


def email_text(message) -> str:
    return html.unescape(message.get_body(preferencelist=("html", "plain")).get_content())


def assert_carries_the_payload(textual: str, payload: dict) -> None:
    """Every value of the payload is in the human text."""
    for key, value in payload.items():
        items = (value if isinstance(value, list) else
                 list(value.values()) if isinstance(value, dict) else [value])
        for item in items:
            if item not in (None, ""):
                assert str(item) in textual, f"{key}={item!r} missing from:\n{textual}"


@pytest.fixture
def sinks(monkeypatch):
    http, smtp = start_http_sink(), start_smtp_sink()
    for name, value in channel_env(http.port, smtp.port).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BATCHLOOP_RUNBOOK_URL", raising=False)
    yield SimpleNamespace(http=http, smtp=smtp)
    http.server.shutdown()
    smtp.controller.stop()


def journal(home: Path) -> dict[str, dict]:
    folder = home / "alerts"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_a_failed_task_alerts_every_channel_once(airflow_db, mlcore_env, spec, run_or_error,
                                                  tmp_path, sinks, caplog):
    dag_id = f"{spec.name}__ingest_batch"
    with caplog.at_level(logging.INFO, logger="batchloop.alerts"):
        _, error = run_or_error(dag_id, {"batch_id": "a1",
                                         "source": str(tmp_path / "nope.parquet")})
    assert error is not None
    # the DAG-level sweep ran after the run failed, and found the task's own alert
    assert f"sweep: {dag_id}.ingest_batch try 1 already alerted" in caplog.text

    got = alerts_at(sinks.http, sinks.smtp)
    assert {k: len(v) for k, v in got.items()} == {  # the DAG sweep ran too: deduplicated
        "webhook": 1, "webhook_connection": 1, "slack": 1, "email": 1}
    [alert] = got["webhook"]
    assert got["webhook_connection"] == [alert]
    assert (alert["kind"], alert["problem"], alert["dag_id"], alert["task_id"]) == (
        "task_failed", spec.name, dag_id, "ingest_batch")
    assert alert["batch_id"] == "a1" and alert["try_number"] == 1  # bad input: no retries
    assert alert["error_class"] == "FileNotFoundError" and "nope.parquet" in alert["error"]
    assert alert["runbook"].endswith("/batchloop/runbook#bad-input")
    assert "/dags/census_employment__ingest_batch/runs/" in alert["log_url"]
    assert any(s.startswith("mlcore batches --problem census_employment")
               for s in alert["next_steps"])
    # the source is missing, so no batch a1 exists: lineage would only say "unknown batch"
    assert not any(s.startswith("mlcore lineage") for s in alert["next_steps"])

    message = got["email"][0]
    assert message["To"] == "oncall@test.invalid"
    assert message["Subject"] == (
        "[Batchloop] TASK FAILED: census_employment ingest_batch/ingest_batch, batch a1 (try 1)")
    assert_carries_the_payload(email_text(message), alert)
    assert_carries_the_payload(html.unescape(got["slack"][0]), alert)
    assert sinks.http.got["slack"][0]["path"] == f"/slack/{SLACK_TOKEN}"

    # the webhook connection's credential went in the Authorization header, nowhere else
    auth = sinks.http.got["hook"][0]["headers"]["Authorization"]
    assert base64.b64decode(auth.split()[1]).decode() == f"alerts:{HOOK_PASSWORD}"
    [entry] = journal(mlcore_env.home).values()
    assert entry["dedup_key"] == alert["dedup_key"]
    assert entry["deliveries"] == {"webhook": "sent", "webhook_connection": "sent",
                                   "slack": "sent", "email": "sent"}
    everything = json.dumps(got, default=str) + json.dumps(entry) + email_text(message)
    assert HOOK_PASSWORD not in everything and SLACK_TOKEN not in everything


def test_the_alerts_next_steps_run_verbatim_and_the_rerun_publishes(
        airflow_db, mlcore_env, spec, run_or_error, tmp_path, sinks, slices):
    """On call, in the state the alert describes (a bad source path): every command of the
    alert's ``next_steps`` runs as printed, in a shell with the workers' environment; the
    re-run is a new run with the failed run's Params (not ``dags clear``: apache/airflow#70368),
    and once the file is in place that run publishes the batch."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    dag_id, source = f"{spec.name}__ingest_batch", tmp_path / "incoming" / "a5.parquet"
    conf = {"batch_id": "a5", "source": str(source)}
    _, error = run_or_error(dag_id, conf)
    assert error is not None
    [alert] = alerts_at(sinks.http, sinks.smtp)["webhook"]
    steps = [s for s in alert["next_steps"] if "# only if" not in s]
    assert [s.split()[:3] for s in steps] == [
        ["airflow", "tasks", "states-for-dag-run"], ["mlcore", "batches", "--problem"],
        ["airflow", "dags", "trigger"]]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    source.parent.mkdir()
    source.write_bytes(slices[2015].read_bytes())  # the cause, fixed
    with create_session() as session:
        before = {r.run_id for r in session.query(DagRun).filter(DagRun.dag_id == dag_id)}
    for step in steps:
        done = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"`{step}` exited {done.returncode}: {done.stderr[-2000:]}"
        if step.startswith("airflow tasks states-for-dag-run"):
            assert "ingest_batch" in done.stdout and "failed" in done.stdout
    with create_session() as session:
        [rerun] = [r for r in session.query(DagRun).filter(DagRun.dag_id == dag_id)
                   if r.run_id not in before]
        rerun_conf = dict(rerun.conf)
    assert {k: rerun_conf[k] for k in conf} == conf  # the failed run's Params
    result, error = run_or_error(dag_id, rerun_conf)  # the scheduler's part, in process
    assert error is None and result["tasks"]["ingest_batch"]["state"] == "success"


def test_rerun_commands_name_the_batch_of_an_asset_triggered_run():
    from batchloop_airflow.alerting.payload import rerun_command

    step = rerun_command("p__score_batch", "asset_triggered__x", "2018", None)
    assert shlex.split(step.split("  #")[0]) == [
        "airflow", "dags", "trigger", "p__score_batch", "-c", '{"batch_id": "2018"}']
    retrain = rerun_command("p__retrain_model", "manual__1", None, {"until_batch": "2017"})
    assert json.loads(shlex.split(retrain.split("  #")[0])[-1]) == {
        "until_batch": "2017", "reason": "re-run of manual__1"}
    assert rerun_command("p__sweep_backlog", "scheduled__1", None, None) is None
    leaky = rerun_command("p__ingest_batch", "manual__3", "b1",
                          {"batch_id": "b1", "source": "https://u:s3cret@host/b1.parquet"})
    assert "s3cret" not in leaky and "https://u:***@host/b1.parquet" in leaky


def test_a_channel_down_does_not_stop_the_others_nor_mask_the_failure(
        airflow_db, mlcore_env, spec, run_or_error, tmp_path, sinks, monkeypatch):
    closed = SimpleNamespace(port=free_port())  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_BATCHLOOP_ALERT_SMTP", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": closed.port,
        "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 5}}))
    monkeypatch.setenv("AIRFLOW_CONN_BATCHLOOP_ALERT_SLACK", json.dumps({
        "conn_type": "slackwebhook", "password": f"http://127.0.0.1:{closed.port}/x/y/z"}))

    _, error = run_or_error(f"{spec.name}__ingest_batch",
                            {"batch_id": "a2", "source": str(tmp_path / "nope.parquet")})

    assert error is not None and "ingest_batch" in error and "failed" in error
    got = alerts_at(sinks.http, sinks.smtp)
    assert len(got["webhook"]) == 1 and len(got["webhook_connection"]) == 1
    assert got["email"] == [] and got["slack"] == []
    [entry] = journal(mlcore_env.home).values()
    assert entry["deliveries"]["webhook"] == "sent"
    assert entry["deliveries"]["email"].startswith("failed: ")
    assert entry["deliveries"]["slack"].startswith("failed: ")


@pytest.fixture
def flaky_store(mlcore_env, monkeypatch):
    """The mlcore store on PostgreSQL, down at first: ``MLCORE_DATABASE_URL`` names a database
    that does not exist yet. ``bring_up()`` creates it (from a migrated template) in ~0.1 s."""
    from batchloop_airflow.connections import clear_cache
    from mlcore.config import get_settings
    from mlcore.store.session import get_engine

    name, template = (f"batchloop_flaky_{uuid.uuid4().hex[:10]}",
                      f"batchloop_tmpl_{uuid.uuid4().hex[:10]}")
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{template}"'))
    subprocess.run([sys.executable, "-c", "import sys; from mlcore.store.session import upgrade;"
                    " upgrade(sys.argv[1])", f"{PG_ADMIN_URL}/{template}"], check=True,
                   capture_output=True, timeout=120)  # own process: no pooled connection left

    def bring_up() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))

    monkeypatch.setenv("MLCORE_DATABASE_URL", f"{PG_ADMIN_URL}/{name}")
    get_settings.cache_clear()
    clear_cache()  # the tasks' settings (batchloop_airflow.connections)
    yield SimpleNamespace(bring_up=bring_up)

    get_engine(f"{PG_ADMIN_URL}/{name}").dispose()
    with admin.connect() as conn:
        for db in (name, template):
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    admin.dispose()
    get_settings.cache_clear()
    clear_cache()


def _when_retrying(dag_id: str, then) -> threading.Thread:
    """Call ``then()`` as soon as a try of ``dag_id`` is up for retry (Airflow's own DB)."""
    db = make_url(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).database

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with sqlite3.connect(db, timeout=5) as conn:
                if conn.execute("select 1 from task_instance where dag_id = ? and state = "
                                "'up_for_retry'", (dag_id,)).fetchone():
                    then()
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_retries_alert_once_when_the_last_try_fails(airflow_db, spec, run_or_error, slices,
                                                    sinks, flaky_store, task_tries,
                                                    mlcore_env):
    dag_id = f"{spec.name}__ingest_batch"
    _, error = run_or_error(dag_id, {"batch_id": "r1", "source": str(slices[2015])})

    assert error is not None
    assert task_tries(dag_id)["ingest_batch"] == ("failed", 3)  # two retries, then for good
    got = alerts_at(sinks.http, sinks.smtp)
    assert {k: len(v) for k, v in got.items()} == {
        "webhook": 1, "webhook_connection": 1, "slack": 1, "email": 1}
    [alert] = got["webhook"]
    assert (alert["kind"], alert["try_number"], alert["batch_id"]) == ("task_failed", 3, "r1")
    assert alert["error_class"] == "OperationalError" and "does not exist" in alert["error"]
    assert alert["runbook"].endswith("/batchloop/runbook#stage-ingest-batch")  # stage section


def test_a_task_that_fails_once_then_succeeds_sends_nothing(airflow_db, spec, run_or_error,
                                                            slices, sinks, flaky_store,
                                                            task_tries, mlcore_env):
    dag_id = f"{spec.name}__ingest_batch"
    watcher = _when_retrying(dag_id, flaky_store.bring_up)
    result, error = run_or_error(dag_id, {"batch_id": "r2", "source": str(slices[2015])})
    watcher.join(5)

    assert error is None and result["state"] == "success"
    state, tries = task_tries(dag_id)["ingest_batch"]
    assert state == "success" and tries >= 2  # it did fail first
    assert all(not v for v in alerts_at(sinks.http, sinks.smtp).values())
    assert journal(mlcore_env.home) == {}


def test_a_skipped_challenger_alerts_once_and_the_scoring_run_succeeds(
        airflow_db, spec, run_or_error, slices, sinks, mlcore_env, task_tries):
    """Scoring with a shadow challenger whose artifact is gone: the run succeeds on the champion's
    scores and on-call hears about the challenger (a succeeded task is otherwise silent)."""
    from shadow_pair import shadow_pair

    from mlcore.model.registry import get_version

    settings = mlcore_env
    _, challenger, _ = shadow_pair(spec, slices, settings)
    Path(get_version(spec.name, challenger, settings.db_url).artifact_uri).unlink()

    dag_id = f"{spec.name}__score_batch"
    result, error = run_or_error(dag_id, {"batch_id": "2016"})

    assert error is None and result["state"] == "success"
    got = alerts_at(sinks.http, sinks.smtp)
    assert {k: len(v) for k, v in got.items()} == {
        "webhook": 1, "webhook_connection": 1, "slack": 1, "email": 1}
    [alert] = got["webhook"]
    assert (alert["kind"], alert["batch_id"], alert["challenger_version"]) == (
        "challenger_skipped", "2016", challenger)
    assert alert["error_class"] == "ArtifactMissing" and "champion's scores" in alert["error"]
    assert alert["runbook"].endswith("/batchloop/runbook#artifact-tampered")
    assert f"mlcore lineage --problem {spec.name} --model {challenger}" in alert["next_steps"]
    assert not any("dags trigger" in step for step in alert["next_steps"])  # nothing failed
    assert got["email"][0]["Subject"].startswith("[Batchloop] CHALLENGER SKIPPED")
    [entry] = journal(mlcore_env.home).values()
    assert entry["dedup_key"] == alert["dedup_key"]

    # the on-call drill: the artifact-tampered section, verbatim (its rebuild needs a real
    # training set, which these hand-registered versions do not have: left out)
    lines = [ln for ln in section_commands("artifact-tampered")
             if not ln.startswith("mlcore reproduce")]
    out = run_verbatim(lines, variables(alert, V=str(challenger)))
    assert f'"version": {challenger}' in out[0].stdout  # models --json
    assert [ln.split()[:3] for ln in lines] == [["mlcore", "models", "--problem"],
                                               ["mlcore", "lineage", "--problem"],
                                               ["mlcore", "backfill", "--problem"]]


def test_a_batch_missing_a_stage_past_its_deadline_alerts_once_and_is_nudged(
        airflow_db, spec, run_or_error, slices, sinks, mlcore_env, monkeypatch, tmp_path):
    """The backlog sweep: a published batch nobody materialized (its event was lost) past the
    spec's deadline pages once (dedup across sweeps) and gets one asset event naming it."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select as sa_select

    lose_a_batch(spec, slices, mlcore_env, tmp_path, monkeypatch)

    dag_id = f"{spec.name}__sweep_backlog"
    first, error = run_or_error(dag_id, {})
    assert error is None, error
    assert first["tasks"]["alert_stalled"]["value"][0]["batch_id"] == "lost"
    assert first["tasks"]["nudge_materialize"]["state"] == "success"
    assert first["tasks"]["nudge_materialize"]["value"]["missing"] == ["lost"]
    assert {first["tasks"][f"nudge_{s}"]["state"] for s in ("score", "monitor")} == {"skipped"}
    second, error = run_or_error(dag_id, {})  # still stalled: found again, not paged again
    assert error is None and second["tasks"]["alert_stalled"]["value"][0]["batch_id"] == "lost"

    got = alerts_at(sinks.http, sinks.smtp)
    assert {k: len(v) for k, v in got.items()} == {
        "webhook": 1, "webhook_connection": 1, "slack": 1, "email": 1}
    [alert] = got["webhook"]
    assert (alert["kind"], alert["batch_id"], alert["stage"]) == (
        "batch_stalled", "lost", "materialize_features")
    assert alert["runbook"].endswith("/batchloop/runbook#batch-stalled")
    assert alert["runbook"].startswith("http") and alert["log_url"].startswith("http")
    assert f"/dags/{dag_id}/runs/" in alert["log_url"]  # the sweep run that found it
    assert f"mlcore backfill --problem {spec.name} --stage materialize --batches lost" in (
        alert["next_steps"])
    with create_session() as session:
        extras = [e.extra for e in session.scalars(sa_select(AssetEvent).where(
            AssetEvent.source_dag_id == dag_id))]
    assert {"batch_id": "lost", "nudged_by": "sweep"} in extras


def runbook() -> str:
    return (ROOT / "RUNBOOK.md").read_text()


def test_every_alert_links_to_a_runbook_section():
    from batchloop_airflow.alerting.payload import (
        DELIVERY_ANCHOR,
        ERROR_ANCHORS,
        KIND_ANCHORS,
        stage_anchor,
    )
    from mlcore.spec_rules import DAG_STAGES

    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', runbook()))
    wanted = {*ERROR_ANCHORS.values(), *KIND_ANCHORS.values(), DELIVERY_ANCHOR,
              *(stage_anchor(s) for s in DAG_STAGES)}
    assert wanted <= anchors, f"missing in RUNBOOK.md: {sorted(wanted - anchors)}"


def runbook_examples() -> dict[str, str]:
    """The example values of "Before you start" (``NAME=value  # comment`` lines)."""
    text = runbook()
    block = re.search(r"```bash\n(.*?)```", text[text.index("Fill these in from the alert"):],
                      flags=re.S)
    assert block is not None
    words = [shlex.split(ln, comments=True) for ln in block.group(1).splitlines()]
    return dict(w[0].split("=", 1) for w in words if w and re.match(r"[A-Z]+=", w[0]))


def _commands(prefix: str) -> list[list[str]]:
    """Every ``<prefix> ...`` line of RUNBOOK.md's code blocks (comments and pipes cut off),
    its ``$VARIABLES`` replaced by the examples of "Before you start"."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", runbook(), flags=re.S)
    lines = [ln.split(" #")[0].split(" | ")[0].strip() for block in blocks
             for ln in block.replace("\\\n", " ").splitlines()]
    examples = runbook_examples()
    return [[examples.get(arg[1:], arg) if arg.startswith("$") else arg
             for arg in shlex.split(ln)] for ln in lines if ln.startswith(prefix + " ")]


@pytest.mark.parametrize("tool", ["mlcore", "airflow"])
def test_every_command_in_the_runbook_parses(tool):
    from airflow.cli.cli_parser import get_parser

    from mlcore.cli import build_parser

    parser = build_parser() if tool == "mlcore" else get_parser()
    commands = _commands(tool)
    assert len(commands) >= 20
    for argv in commands:
        try:
            parser.parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"RUNBOOK.md: `{shlex.join(argv)}` does not parse ({exc})")
