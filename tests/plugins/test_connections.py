"""The ``mlcore_db`` Airflow Connection -> SQLAlchemy URL conversion, on real Airflow Connection
objects (URI, JSON and field forms) and a real PostgreSQL server; and ``settings()``'s lookup."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text

from batchloop_airflow.connections import clear_cache, settings, sqlalchemy_url

# Every character that needs quoting in a URL's userinfo, plus '%' (double-decoding bugs).
NASTY = "p@ss:w/rd%25?#&=+ é"
SOCKET_DIR = "/var/run/postgresql"  # Debian's default socket directory


def _conn(uri: str | None = None, **fields):
    from airflow.sdk import Connection

    if uri is not None:
        return Connection(conn_id="mlcore_db", uri=uri)
    return Connection(conn_id="mlcore_db", **fields)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgres_uri_forms_become_a_psycopg2_url_with_the_exact_password(scheme):
    uri = (f"{scheme}://batch%20user:{quote(NASTY, safe='')}@db.internal:6543/mlcore"
           "?sslmode=require&connect_timeout=7")
    url = make_url(sqlalchemy_url(_conn(uri)))
    assert url.drivername == "postgresql+psycopg2"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "batch user", NASTY, "db.internal", 6543, "mlcore")
    assert dict(url.query) == {"sslmode": "require", "connect_timeout": "7"}


def test_get_uri_round_trip_and_json_form_give_the_same_url():
    fields = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
              "password": NASTY, "schema": "mlcore",
              "extra": json.dumps({"sslmode": "disable", "options": "-csearch_path=s1"})}
    direct = sqlalchemy_url(_conn(**fields))
    # what Airflow writes (postgres://, everything percent-quoted) parses back the same
    assert sqlalchemy_url(_conn(_conn(**fields).get_uri())) == direct
    from airflow.sdk import Connection

    as_json = json.dumps({**fields, "extra": json.loads(fields["extra"])})
    assert sqlalchemy_url(Connection.from_json(as_json, conn_id="mlcore_db")) == direct
    url = make_url(direct)
    assert url.password == NASTY and url.query["options"] == "-csearch_path=s1"


def test_driver_override_and_socket_directory_host():
    url = make_url(sqlalchemy_url(_conn(conn_type="postgres", host="/var/run/postgresql",
                                        schema="mlcore", login="batch",
                                        extra=json.dumps({"sqlalchemy_scheme":
                                                          "postgresql+psycopg"}))))
    assert url.drivername == "postgresql+psycopg"
    assert url.host is None and url.database == "mlcore"  # a path is no URL host: libpq's
    assert dict(url.query) == {"host": "/var/run/postgresql"}  # host option takes it


def test_sqlite_connection(tmp_path):
    path = tmp_path / "mlcore.db"
    assert sqlalchemy_url(_conn(conn_type="sqlite", host=str(path))) == f"sqlite:///{path}"
    assert sqlalchemy_url(_conn(f"sqlite:///{path}")) == f"sqlite:///{path}"


@pytest.mark.parametrize(("fields", "message"), [
    ({"conn_type": "mysql", "host": "h", "schema": "d"}, "not supported"),
    ({"conn_type": "postgres", "host": "h"}, "database name"),
    ({"conn_type": "postgres", "host": "h", "schema": "d",
      "extra": json.dumps({"options": {"a": 1}})}, "extra 'options'"),
    ({"conn_type": "postgres", "host": "h", "schema": "d",
      "extra": json.dumps({"sqlalchemy_scheme": "mysql+pymysql"})}, "postgresql driver"),
])
def test_bad_connections_are_refused_without_echoing_the_password(fields, message):
    with pytest.raises(ValueError, match=message) as err:
        sqlalchemy_url(_conn(password=NASTY, login="u", **fields))
    assert NASTY not in str(err.value) and quote(NASTY, safe="") not in str(err.value)


@pytest.mark.parametrize("via", ["tcp", "socket"])
def test_the_url_connects_to_a_real_server(postgres_url, via):
    """Trust auth accepts any password: the URL must still reach the right database with the
    connection's libpq options applied, over TCP and over the server's Unix socket directory."""
    base = make_url(postgres_url)
    host = base.host if via == "tcp" else SOCKET_DIR
    if via == "socket" and not Path(SOCKET_DIR, f".s.PGSQL.{base.port or 5432}").exists():
        pytest.skip(f"no PostgreSQL socket in {SOCKET_DIR}")
    schema = f"s_{uuid.uuid4().hex[:8]}"
    conn = _conn(conn_type="postgres", host=host, port=base.port, login=base.username,
                 password=NASTY, schema=base.database,
                 extra=json.dumps({"sslmode": "disable", "options": f"-csearch_path={schema}",
                                   "application_name": "batchloop-test"}))
    engine = create_engine(sqlalchemy_url(conn))
    try:
        with engine.connect() as c:
            got = c.execute(text("select current_database(), current_setting('search_path'), "
                                 "current_setting('application_name')")).one()
    finally:
        engine.dispose()
    assert tuple(got) == (base.database, schema, "batchloop-test")


@pytest.fixture
def fresh_settings(monkeypatch, tmp_path):
    from mlcore.config import get_settings

    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCORE_DATABASE_URL", "sqlite:////nowhere/env.db")
    monkeypatch.delenv("AIRFLOW_CONN_MLCORE_DB", raising=False)
    get_settings.cache_clear()
    clear_cache()
    yield get_settings
    get_settings.cache_clear()
    clear_cache()


def test_settings_use_the_connection_when_defined_else_mlcore_settings(fresh_settings,
                                                                       monkeypatch):
    from airflow.sdk.log import redact

    # no connection: exactly mlcore's settings (MLCORE_DATABASE_URL)
    assert settings() is fresh_settings()
    assert settings().db_url == "sqlite:////nowhere/env.db"
    secret = f"S3cr3t-{uuid.uuid4().hex}/@:+%"
    extra = f"Xtra-{uuid.uuid4().hex}"
    monkeypatch.setenv("AIRFLOW_CONN_MLCORE_DB",
                       f"postgresql://u:{quote(secret, safe='')}@127.0.0.1:5432/mlcore"
                       f"?sslmode=disable&sslpassword={extra}")
    assert settings().db_url == "sqlite:////nowhere/env.db"  # cached for the process
    fresh_settings.cache_clear()  # mlcore's settings re-read: the connection is looked up again
    got = settings()
    assert got is settings()
    url = make_url(got.db_url)
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2", "u", secret, "127.0.0.1", 5432, "mlcore")
    assert dict(url.query) == {"sslmode": "disable", "sslpassword": extra}
    assert got.home == fresh_settings().home  # everything else stays mlcore's
    # registered with the log masker: raw, and as the printed URL quotes them
    logged = redact(f"raw {secret} {extra}; url {got.db_url}; {quote(secret, safe='')}")
    assert secret.split("-")[1][:32] not in logged and extra not in logged



@pytest.fixture
def stored_connection(postgres_url, airflow_db):
    """``mlcore_db`` defined in Airflow's metadata DB (as the UI or ``airflow connections add``
    would), pointing at a migrated schema of its own through the ``options`` extra; removed
    afterwards. Yields (schema, the connection's SQLAlchemy URL, an AUTOCOMMIT admin engine)."""
    from airflow.models.connection import Connection as ConnectionRow
    from airflow.utils.session import create_session

    from mlcore.store.session import get_engine, upgrade

    base, schema = make_url(postgres_url), f"conn_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"create schema {schema}"))
    row = ConnectionRow(conn_id="mlcore_db", conn_type="postgres", host=base.host,
                        port=base.port or 5432, login=base.username, password=NASTY,
                        schema=base.database, extra=json.dumps({
                            "sslmode": "disable", "options": f"-csearch_path={schema}"}))
    url = sqlalchemy_url(_conn(row.get_uri()))
    upgrade(url)
    with create_session() as s:
        s.add(row)
    try:
        yield schema, url, admin
    finally:
        with create_session() as s:
            s.query(ConnectionRow).filter(ConnectionRow.conn_id == "mlcore_db").delete()
        get_engine(url).dispose()
        with admin.connect() as c:
            c.execute(text(f"drop schema {schema} cascade"))
        admin.dispose()


def test_a_connection_in_airflow_metadata_db_is_what_tasks_use(
        fresh_settings, stored_connection, slices, spec):
    """The connection defined in Airflow's metadata DB (UI, ``airflow connections add``), not in
    the environment: a task finds it through the Execution API and writes where it points (a
    schema of its own, through the ``options`` extra); MLCORE_DATABASE_URL is not touched."""
    from batchloop_airflow.connections import mlcore_db_url
    from batchloop_airflow.runner import run_dag

    schema, _, admin = stored_connection
    assert mlcore_db_url() is None  # outside a task (no Execution API): env/backends only
    run_dag(f"{spec.name}__ingest_batch", {"batch_id": "db-conn", "source": str(slices[2015])})
    with admin.connect() as c:
        assert c.execute(text(f"select batch_id, state from {schema}.batches")).all() == [
            ("db-conn", "published")]
    assert not Path("/nowhere/env.db").exists()


def test_the_production_profile_never_falls_back_from_the_connection(fresh_settings,
                                                                     monkeypatch):
    """MLCORE_REQUIRE_DATABASE: a look-up that does not return ``mlcore_db`` fails (retryable,
    not cached), and mlcore itself refuses the SQLite fallback under MLCORE_HOME."""
    from batchloop_airflow.connections import StoreLookupFailed
    from mlcore.config import Settings, StoreNotConfigured

    monkeypatch.setenv("MLCORE_REQUIRE_DATABASE", "true")
    fresh_settings.cache_clear()
    with pytest.raises(StoreLookupFailed, match="refusing to fall back"):
        settings()  # MLCORE_DATABASE_URL is set, and still not used
    monkeypatch.setenv("AIRFLOW_CONN_MLCORE_DB", "postgresql://u:pw@127.0.0.1:5432/mlcore")
    assert make_url(settings().db_url).database == "mlcore"  # the failure was not cached
    with pytest.raises(StoreNotConfigured, match="MLCORE_DATABASE_URL"):
        Settings(require_database=True, database_url=None).db_url  # noqa: B018
    assert Settings(require_database=False, database_url=None).db_url.startswith("sqlite:///")


@pytest.mark.parametrize("required", [True, False], ids=["required", "embedded-default"])
def test_a_transient_execution_api_error_on_the_lookup(
        required, fresh_settings, monkeypatch, stored_connection, slices, spec, tmp_path):
    """The connection lives in Airflow's metadata DB; the Execution API answers the task's
    first look-up with a 503 (injected in the API client the task's supervisor uses). Required
    (production): the try fails, the retry finds the connection and publishes there; the
    fallback store is never opened. Not required (embedded default): the hazard the flag
    exists for: the try falls back to MLCORE_DATABASE_URL and publishes there."""
    from airflow.sdk.api import client as api_client

    from batchloop_airflow.runner import run_dag
    from mlcore.store.session import upgrade

    schema, _, admin = stored_connection
    trap = tmp_path / "fallback.db"
    monkeypatch.setenv("MLCORE_DATABASE_URL", f"sqlite:///{trap}")
    monkeypatch.setenv("MLCORE_REQUIRE_DATABASE", str(required).lower())
    fresh_settings.cache_clear()
    upgrade(f"sqlite:///{trap}")
    real_get, failures = api_client.ConnectionOperations.get, []

    def flaky_get(self, conn_id):
        if conn_id == "mlcore_db" and not failures:
            failures.append(conn_id)
            request = httpx.Request("GET", f"http://api/execution/connections/{conn_id}")
            raise api_client.ServerResponseError(
                "Service Unavailable", request=request,
                response=httpx.Response(503, request=request))
        return real_get(self, conn_id)

    monkeypatch.setattr(api_client.ConnectionOperations, "get", flaky_get)
    batch = f"flaky-{uuid.uuid4().hex[:6]}"
    result = run_dag(f"{spec.name}__ingest_batch", {"batch_id": batch,
                                                   "source": str(slices[2015])})
    assert failures == ["mlcore_db"]  # the error was injected once
    with admin.connect() as c:
        in_conn = c.execute(text(f"select batch_id from {schema}.batches")).scalars().all()
    with create_engine(f"sqlite:///{trap}").connect() as c:
        in_trap = c.execute(text("select batch_id from batches")).scalars().all()
    if required:
        assert (in_conn, in_trap) == ([batch], [])
        tries = _tries(result["run_id"], f"{spec.name}__ingest_batch")
        assert max(tries.values()) == 2  # the looked-up task failed once and was retried
    else:
        assert (in_conn, in_trap) == ([], [batch])


def _tries(run_id: str, dag_id: str) -> dict[str, int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as s:
        return {ti.task_id: ti.try_number for ti in s.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)}
