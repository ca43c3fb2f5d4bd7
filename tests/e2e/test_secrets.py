"""Secrets never leak (issue 6): the whole loop runs through the DAGs with the mlcore store's
credentials in the Airflow Connection ``mlcore_db`` (password and a libpq ``sslpassword`` extra),
an alert webhook whose URL carries a token, and failing tasks; then every place a run writes to
is scanned, as bytes, for each secret in raw, URL-encoded, hex and base64 forms: task log files,
Airflow's metadata DB (XCom table and the raw DB file), every file under MLCORE_HOME (parquet
decoded too), every row of the mlcore PostgreSQL database, the alert payloads and the captured
stdout/stderr. A control token (in the batch IDs) must be found in each of those places, so the
scan cannot pass by looking nowhere.

PostgreSQL on 127.0.0.1 trusts local connections, so it accepts the random password; the store
is a fresh database of its own. ``MLCORE_DATABASE_URL`` points at a decoy SQLite file that must
never be created: the connection wins.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, quote_plus

import pytest
from airflow_stack import free_port, launch, stop_process
from pg_database import PG_ADMIN_URL, fresh_database
from sqlalchemy import create_engine, make_url, text

pytestmark = pytest.mark.live  # starts a live api-server (make test-live)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
P = "census_employment"


def forms(secret: str) -> dict[str, bytes]:
    """The byte strings that betray ``secret``. Its random core (32 hex digits) sits in every
    textual form (raw, URL-, JSON-, HTML-escaped), so the core, its hex and its base64 (std and
    URL-safe, at each of the three alignments it can have inside a longer encoded text) catch
    those forms and their encodings; the raw and URL-quoted secret name the form."""
    core = secret.split("-", 1)[1][:32].encode()
    out = {"raw": secret.encode(), "core": core, "url": quote(secret, safe="").encode(),
           "url+": quote_plus(secret).encode(), "hex": core.hex().encode()}
    for shift in range(3):
        for name, enc in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            full = enc(b"\0" * shift + core)
            start, end = (4 if shift else 0), (shift + len(core)) // 3 * 4
            out[f"{name}@{shift}"] = full[start:end]
    return out


class Scanner:
    """Counts what was scanned per place and records every (place, where, needle, form) hit."""

    def __init__(self, needles: dict[str, dict[str, bytes]]) -> None:
        self.needles = needles
        self.counts: Counter[str] = Counter()
        self.hits: list[tuple[str, str, str, str]] = []

    def scan(self, place: str, where: str, data: bytes) -> None:
        """Scan one item (a file, a row, a payload) of ``place``."""
        self.counts[place] += 1
        for name, needle_forms in self.needles.items():
            for form, needle in needle_forms.items():
                if needle in data:
                    self.hits.append((place, where, name, form))

    def found(self, name: str) -> set[str]:
        """The places where needle ``name`` was found."""
        return {place for place, _, hit, _ in self.hits if hit == name}


def _file_views(path: Path) -> Iterator[bytes]:
    """A file's bytes, plus the decoded cells and metadata of a parquet file (its pages may be
    compressed, which would hide a string from a byte scan)."""
    data = path.read_bytes()
    yield data
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        yield repr(table.schema.metadata).encode()
        yield json.dumps(table.to_pylist(), default=str).encode()


def test_the_scanner_finds_every_form():
    """The secret is found however it was written: raw, inside a URL (quoted), form-quoted, and
    that URL hex- or base64-encoded at each alignment; a near miss is not found."""
    secret = f"S3cr3t-{uuid.uuid4().hex}/@:+%"
    url = f"postgresql+psycopg2://u:{quote(secret, safe='')}@h/db".encode()
    planted = {"raw": secret.encode(), "url": url, "url+": quote_plus(secret).encode(),
               "hex": url.hex().encode()}
    for shift in range(3):
        planted[f"b64 shifted {shift}"] = base64.b64encode(b"x" * shift + url)
        planted[f"b64url shifted {shift}"] = base64.urlsafe_b64encode(b"x" * shift + url)
    scanner = Scanner({"s": forms(secret)})
    for where, data in planted.items():
        scanner.scan("planted", where, b"prefix " + data + b" suffix")
    by_item: dict[str, set[str]] = {}
    for _, where, _, form in scanner.hits:
        by_item.setdefault(where, set()).add(form)
    assert set(by_item) == set(planted)
    for where, found in by_item.items():  # an encoded plant is caught by its encoding's form
        family = where.split()[0][:3]  # hex, b64 (std and url-safe agree on most text)
        if family in ("hex", "b64"):
            assert found and all(f.startswith(family) for f in found), (where, found)
    scanner.scan("planted", "near miss", b"nothing to see " + secret[:20].encode())
    assert "near miss" not in {where for _, where, _, _ in scanner.hits}


@pytest.fixture
def sink() -> Iterator[SimpleNamespace]:
    """A loopback webhook: keeps each POSTed body as bytes."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(port=server.server_port, bodies=bodies)
    server.shutdown()


@pytest.fixture
def store_db() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own (so every row in it is this test's)."""
    with fresh_database("batchloop_secrets") as name:
        yield name


@pytest.fixture
def secret_env(tmp_path, monkeypatch, sink, store_db, airflow_db):
    """The connection, the webhook and a decoy MLCORE_DATABASE_URL, each with its secret."""
    from airflow.sdk import Connection

    from batchloop_airflow.connections import clear_cache, sqlalchemy_url
    from mlcore.config import get_settings
    from mlcore.store.session import get_engine, upgrade

    s = SimpleNamespace(password=f"S3cr3t-{uuid.uuid4().hex}/@:+%",
                        token=f"T0ken-{uuid.uuid4().hex}", extra=f"Xtra-{uuid.uuid4().hex}",
                        control=uuid.uuid4().hex[:12])
    admin = make_url(PG_ADMIN_URL)
    uri = (f"postgresql://{admin.username}:{quote(s.password, safe='')}@{admin.host}:"
           f"{admin.port or 5432}/{store_db}?sslmode=disable&sslpassword={s.extra}")
    home, decoy = tmp_path / "mlcore_home", tmp_path / "decoy" / "must-not-exist.db"
    home.mkdir()
    monkeypatch.setenv("AIRFLOW_CONN_MLCORE_DB", uri)
    monkeypatch.setenv("BATCHLOOP_ALERT_WEBHOOK",
                       f"http://127.0.0.1:{sink.port}/hook?token={s.token}")
    monkeypatch.setenv("MLCORE_HOME", str(home))
    monkeypatch.setenv("MLCORE_DATABASE_URL", f"sqlite:///{decoy}")
    get_settings.cache_clear()
    clear_cache()
    s.url = sqlalchemy_url(Connection(conn_id="mlcore_db", uri=uri))
    s.uri, s.database = uri, store_db
    upgrade(s.url)  # what `mlcore init` does against the production store
    s.home, s.decoy, s.sink = home, decoy, sink
    yield s
    get_engine(s.url).dispose()
    get_settings.cache_clear()
    clear_cache()


# One run through LocalExecutor in a child process (Airflow reads [core] parallelism at import),
# so the production task path writes real task log files: supervisor + task process.
CHILD = """
import json, sys
from batchloop_airflow.runner import dagbag
dag = dagbag().dags[sys.argv[1]]
dag.test(run_conf={**dag.params.dump(), **json.loads(sys.argv[2])}, use_executor=True)
"""


@pytest.fixture
def execution_api(tmp_path, monkeypatch, secret_env) -> Iterator[dict[str, str]]:
    """A private Airflow Execution API server (what LocalExecutor's task processes call); yields
    the environment a child process needs to run DAGs through LocalExecutor against it."""
    port = free_port()
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", uuid.uuid4().hex)  # shared with workers
    env = {**os.environ, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
           "AIRFLOW__CORE__PARALLELISM": "1",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "api-server.log"
    proc = launch(["api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(port),
                   "-w", "1"], env, log)
    env["API_LOG"] = str(log)
    try:
        yield env
    finally:
        stop_process(proc, whole_group=True)


def _last_run(dag_id: str | None = None) -> tuple[int, str, str]:
    """(id, run_id, state) of the newest DAG run (of ``dag_id``) in Airflow's DB."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        q = s.query(DagRun.id, DagRun.run_id, DagRun.state).order_by(DagRun.id.desc())
        row = (q.filter(DagRun.dag_id == dag_id) if dag_id else q).first()
    return (int(row[0]), str(row[1]), str(row[2])) if row else (0, "", "")


def _run_with_executor(env: dict[str, str], dag_id: str, conf: dict, out_path: Path) -> tuple:
    """Run one DAG with ``dag.test(use_executor=True)`` in a child; (run_id, state) from
    Airflow's DB. LocalExecutor's shutdown can hang in ``proc.join()`` (apache/airflow#45329,
    #67870): 30 s after the run finished, the child's process group (it and its workers) is
    killed."""
    health, deadline = env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] + "health", 0.0
    while True:  # the server started with the fixture; the first call waits for it
        try:
            urllib.request.urlopen(health, timeout=30).close()
            break
        except OSError:
            deadline = deadline or time.monotonic() + 240
            assert time.monotonic() < deadline, Path(env["API_LOG"]).read_text()[-3000:]
            time.sleep(2)
    after, finished_at = _last_run()[0], 0.0
    with out_path.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, dag_id, json.dumps(conf)],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while proc.poll() is None and time.monotonic() - (finished_at or 1e18) < 30:
            run_pk, _, state = _last_run(dag_id)
            if not finished_at and run_pk > after and state in ("success", "failed"):
                finished_at = time.monotonic()
            assert time.monotonic() < deadline, f"{dag_id} did not finish within 900 s"
            time.sleep(1)
    finally:
        if proc.poll() is None:
            print(f"{dag_id}: run finished, child still in LocalExecutor shutdown: killed")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    run_pk, run_id, state = _last_run(dag_id)
    assert run_pk > after, f"{dag_id}: no run; child said:\n{out_path.read_text()[-3000:]}"
    return run_id, state


def _runs(secrets, slices, run_or_error, executor_env) -> SimpleNamespace:
    """The loop through the DAGs: 2015 trains the first champion; 2016 is scored, monitored
    (these two and a failing ingest through LocalExecutor: real task log files), labelled and
    retrained on; plus a failing retrain and an ingest into a database that does not exist.
    Returns run IDs, error messages, child output."""
    from batchloop_airflow.runner import run_dag

    y15, y16, ctl = f"y2015-{secrets.control}", f"y2016-{secrets.control}", secrets.control
    run_ids, errors = set(), []

    def in_process(plan):
        for stage, conf in plan:
            run_ids.add(run_dag(f"{P}__{stage}", conf)["run_id"])

    in_process([("ingest_batch", {"batch_id": y15, "source": str(slices[2015])}),
                ("materialize_features", {"batch_id": y15}),
                ("retrain_model", {"until_batch": y15, "reason": f"first model {ctl}"}),
                ("ingest_batch", {"batch_id": y16, "source": str(slices[2016])}),
                ("materialize_features", {"batch_id": y16})])
    bad_source = str(secrets.home.parent / f"missing-{ctl}.parquet")
    child_out = secrets.home.parent / "executor-runs.log"
    states = []
    for dag_id, conf in [(f"{P}__score_batch", {"batch_id": y16}),
                         (f"{P}__monitor_model", {"batch_id": y16}),
                         (f"{P}__ingest_batch", {"batch_id": f"bad-{ctl}", "source": bad_source})]:
        run_id, state = _run_with_executor(executor_env, dag_id, conf, child_out)
        run_ids.add(run_id)
        states.append(state)
    assert states == ["success", "success", "failed"], child_out.read_text()[-4000:]
    in_process([("ingest_labels", {"batch_id": y16, "source": str(slices[2016])}),
                ("retrain_model", {"until_batch": y16, "reason": f"labels arrived {ctl}"})])
    result, error = run_or_error(f"{P}__retrain_model", {"until_batch": f"nope-{ctl}",
                                                        "reason": "must fail"})
    assert result is None and error, "a retrain up to an unknown batch must fail"
    errors.append(error)
    # the store itself unreachable: the driver's error (retried, then alerted) names the
    # server and database; it must not carry the credentials
    from batchloop_airflow.connections import clear_cache
    from mlcore.config import get_settings

    os.environ["AIRFLOW_CONN_MLCORE_DB"] = secrets.uri.replace(
        f"/{secrets.database}?", f"/{secrets.database}_missing?")
    get_settings.cache_clear()
    clear_cache()
    result, error = run_or_error(f"{P}__ingest_batch", {"batch_id": f"nodb-{ctl}",
                                                       "source": str(slices[2015])})
    assert result is None and error, "an ingest into a missing database must fail"
    errors.append(error)
    return SimpleNamespace(run_ids=run_ids, errors=errors, child_output=child_out.read_text())


def _scan_everything(scanner: Scanner, secrets, run_ids: set[str], captured: str) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    scanner.scan("stdout+stderr", "capfd", captured.encode())
    for i, body in enumerate(secrets.sink.bodies):
        scanner.scan("alerts", f"alert #{i}", body)
    airflow_home = Path(os.environ["AIRFLOW_HOME"])
    for path in sorted(p for p in (airflow_home / "logs").rglob("*") if p.is_file()):
        scanner.scan("task logs", str(path.relative_to(airflow_home)), path.read_bytes())
    with create_session() as s:
        rows = s.query(XComModel.dag_id, XComModel.run_id, XComModel.task_id, XComModel.key,
                       XComModel.value).all()
    for dag_id, run_id, task_id, key, value in rows:
        place = "xcom" if run_id in run_ids else "xcom (other runs)"
        scanner.scan(place, f"{dag_id}/{run_id}/{task_id}/{key}",
                     json.dumps(value, default=str).encode())
    db_file = Path(make_url(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).database or "")
    for path in (db_file, db_file.with_name(db_file.name + "-wal")):
        if path.exists():
            scanner.scan("airflow db file", path.name, path.read_bytes())
    for path in sorted(p for p in secrets.home.rglob("*") if p.is_file()):
        rel = path.relative_to(secrets.home)
        place = ("run cards" if path.stem == "run_card" else
                 "reports" if rel.parts[0] == "reports" else "mlcore home")
        for view in _file_views(path):
            scanner.scan(place, str(rel), view)
    engine = create_engine(secrets.url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(text("select table_name from information_schema.tables "
                                       "where table_schema = 'public'")).scalars().all()
            for table in tables:
                for (row,) in conn.execute(text(f'select row_to_json(t)::text from "{table}" t')):
                    scanner.scan("mlcore postgres", table, row.encode())
    finally:
        engine.dispose()


def test_no_secret_in_any_log_xcom_report_run_card_row_or_alert(
        secret_env, execution_api, slices, run_or_error, capfd, caplog):
    secrets = secret_env
    runs = _runs(secrets, slices, run_or_error, execution_api)
    out, err = capfd.readouterr()
    assert not secrets.decoy.exists()  # the connection, not MLCORE_DATABASE_URL, was used
    assert len(secrets.sink.bodies) == 3  # each failure alerted once, through the webhook
    assert b"OperationalError" in secrets.sink.bodies[-1]  # the driver's error reached on-call

    scanner = Scanner({"password": forms(secrets.password), "webhook token": forms(secrets.token),
                       "connection extra": forms(secrets.extra),
                       "control": {"raw": secrets.control.encode()}})
    captured = "\n".join([out, err, caplog.text, runs.child_output, *runs.errors])
    _scan_everything(scanner, secrets, runs.run_ids, captured)

    print(f"scanned per place: {dict(scanner.counts)}; control found in: "
          f"{sorted(scanner.found('control'))}")
    leaks = [hit for hit in scanner.hits if hit[2] != "control"]
    assert not leaks, "secrets leaked (place, where, secret, form):\n" + "\n".join(
        map(str, leaks))
    places = ("task logs", "xcom", "reports", "run cards", "mlcore postgres", "alerts",
              "stdout+stderr", "airflow db file", "mlcore home")
    assert all(scanner.counts[p] > 0 for p in places), f"scanned nothing in some: {scanner.counts}"
    # the control token travels where a leak would: the scan sees into every place
    missing = set(places) - scanner.found("control")
    assert not missing, f"control token not found in {sorted(missing)}: the scan is blind there"

