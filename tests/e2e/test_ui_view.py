"""The Batchloop view inside the Airflow UI, in a real headless Chromium.

A private `airflow standalone` (own home, free ports, SQLite; auth ON: a fixed admin password,
no all-admins mode) serves the plugin over an MLCORE_HOME built with mlcore's own API: two
batches (one with quarantined rows), features, a champion promoted through the real checks (an
evaluation with a run card), a challenger and the monitoring page. Without a session the view
shows nothing; after logging in on Airflow's login page it shows the champion, the batches with
their quarantine counts and a run-card link that opens the run card. Report files are served
only from the reports folder.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow_stack import Stack

pytestmark = pytest.mark.live  # starts a live Airflow (make test-live)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1800"]


# The problem's retrain DAG with the real DAG defaults (failure notifier, alert journal, runbook
# link) whose task fails the way a retrain without enough data does, and its monitor DAG (left
# paused: a paused stage shows in "needs attention"; the target of the re-run action).
STAGE_DAGS = '''
from airflow.sdk import dag, task

from batchloop_airflow import dag_kwargs


@dag(**{**dag_kwargs("census_employment", "retrain_model", "test retrain"),
        "default_args": {**dag_kwargs("census_employment", "retrain_model", None)["default_args"],
                         "retries": 0}}, schedule=None)
def census_employment__retrain_model():
    @task
    def retrain_model():
        from mlcore.model.splits import NotEnoughData

        raise NotEnoughData("injected by the UI test: 0 labelled rows after 2016")

    retrain_model()


@dag(**dag_kwargs("census_employment", "monitor_model", "test monitor"), schedule=None)
def census_employment__monitor_model():
    @task
    def monitor_model():
        return "ok"

    monitor_model()


census_employment__retrain_model()
census_employment__monitor_model()
'''


def _get(base: str, path: str, token: str | None = None, accept: str = "application/json"
         ) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` exactly as written (no client-side ``..`` folding): status, headers, body."""
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    headers = {"Accept": accept, **({"Authorization": f"Bearer {token}"} if token else {})}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def _build_state(settings, spec, slices, tmp: Path) -> dict:
    """2015 and 2016 (3 rows out of range: quarantined) ingested and materialized; v1 promoted
    through the real checks (evaluation + run card), v2 made challenger; the monitoring page."""
    import pandas as pd

    from mlcore.config import TrainConfig
    from mlcore.datasets import build_dataset
    from mlcore.features import materialize_batch
    from mlcore.ingestion import ingest_batch
    from mlcore.model.registry import CHALLENGER, move_alias
    from mlcore.promotion import promote_version
    from mlcore.reports.monitoring_page import write_monitoring_page
    from mlcore.training import train_contender

    bad = pd.read_parquet(slices[2016])
    bad.loc[bad.index[:3], "AGEP"] = 200  # spec: AGEP in [0, 120]
    bad_path = tmp / "employment_2016_bad.parquet"
    bad.to_parquet(bad_path, index=False)
    for batch_id, path in (("2015", slices[2015]), ("2016", bad_path)):
        ingest_batch(spec, str(path), batch_id, settings)
        materialize_batch(spec, batch_id, settings)
    dataset = build_dataset(spec, settings)
    first = train_contender(spec, dataset, TrainConfig(algorithm="logistic_regression"), settings)
    decision = promote_version(spec, first.version, "first model", settings, actor="ui-test")
    assert decision["promoted"], decision
    second = train_contender(spec, dataset, TrainConfig(algorithm="logistic_regression",
                                                        random_state=7), settings)
    move_alias(spec.name, expected=None, new=second.version, reason="shadow it",
               url=settings.db_url, action="manual", actor="ui-test", alias=CHALLENGER)
    write_monitoring_page(spec.name, settings)
    return {"champion": first.version, "challenger": second.version,
            "evaluation": decision["evaluation_id"], "run_card": Path(decision["run_card"])}


@pytest.fixture(scope="module")
def view(tmp_path_factory, settings_factory, spec, slices):
    """The running standalone (auth on) over a demo-like MLCORE_HOME; the state is built while
    Airflow starts."""
    home = tmp_path_factory.mktemp("ui_standalone")
    settings = settings_factory("ui_mlcore")
    (home / "dags").mkdir()
    (home / "dags" / "ui_stage_dags.py").write_text(STAGE_DAGS)
    for real in ("ingest_batch", "materialize_features", "score_batch"):  # the ingest form's chain
        shutil.copy(ROOT / "dags" / f"{real}.py", home / "dags")
    password, viewer_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"admin": password,
                                                     "viewer": viewer_password}))
    airflow = Stack(home, {
        "MLCORE_HOME": str(settings.home), "MLCORE_DATABASE_URL": None,
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),  # two stage DAGs (STAGE_DAGS)
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "BATCHLOOP_RETRY_DELAY": "1",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",  # `make` exports True
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json")})
    airflow.start()
    base = airflow.base
    try:
        state = _build_state(settings, spec, slices, home)
        airflow.wait("the api-server", lambda: airflow.api("/monitor/health"), 180, every=1)
        req = urllib.request.Request(
            f"{base}/auth/token", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"username": "admin", "password": password}).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            token = json.loads(resp.read())["access_token"]
        yield SimpleNamespace(base=base, password=password, token=token, settings=settings,
                              log=airflow.log_path, viewer_password=viewer_password, **state)
    finally:
        airflow.stop()


def test_plugin_load_stays_light():
    """Every Airflow process imports the plugin module; only the api-server's first request may
    pull in FastAPI, mlcore and the data stack."""
    code = ("import json, sys; import airflow.plugins_manager; before = set(sys.modules); "
            "import batchloop_ui_plugin; "
            "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    added = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "batchloop_ui_plugin" in added  # the import really happened
    assert not added & {"fastapi", "starlette", "mlcore", "pandas", "sklearn", "feast"}, added


def test_plugin_is_registered_without_import_errors(view):
    _, _, body = _get(view.base, "/api/v2/plugins", view.token)
    [plugin] = [p for p in json.loads(body)["plugins"] if p["name"] == "batchloop"]
    assert [(a["url_prefix"], a["name"]) for a in plugin["fastapi_apps"]] == [
        ("/batchloop", "batchloop")]
    [nav] = plugin["external_views"]
    assert (nav["url_route"], nav["href"], nav["destination"]) == (
        "batchloop", "batchloop/", "nav")
    _, _, body = _get(view.base, "/api/v2/plugins/importErrors", view.token)
    assert json.loads(body)["import_errors"] == []


def test_without_a_session_no_model_data_is_served(view, spec):
    page = f"/batchloop/problems/{spec.name}"
    card = "/batchloop/reports/" + view.run_card.relative_to(
        view.settings.home / "reports").as_posix()
    for path in ("/batchloop/", page, card):
        status, _, body = _get(view.base, path)
        assert status == 401 and b"logistic_regression" not in body, (path, status)
    status, headers, body = _get(view.base, page, accept="text/html")
    assert status == 303 and headers["location"].startswith("/auth/login?next=")
    status, _, body = _get(view.base, page, token="not-a-jwt")
    assert status in (401, 403) and b"logistic_regression" not in body
    status, headers, body = _get(view.base, card, view.token)  # the same file, authenticated
    assert status == 200 and b"Run card" in body
    assert headers["content-security-policy"].startswith("sandbox")


def test_report_paths_outside_the_reports_folder_are_refused(view, spec):
    reports = view.settings.home / "reports"
    (reports / "escape.html").symlink_to(view.settings.home / "mlcore.db")
    secret = (view.settings.home / "mlcore.db").read_bytes()[:16]
    assert secret.startswith(b"SQLite format 3")
    for path in ("../mlcore.db", "..%2Fmlcore.db", "%2e%2e/mlcore.db", "%2E%2E%2Fmlcore.db",
                 f"problem={spec.name}/../../mlcore.db",
                 "/etc/passwd", "%2Fetc%2Fpasswd", "escape.html", "", "problem=x%00"):
        status, _, body = _get(view.base, f"/batchloop/reports/{path}", view.token)
        assert status == 404 and secret not in body and b"root:" not in body, (path, status)


def _wait(driver, condition, what: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message=what)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "no browser: run `make browser`"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_logged_in_user_sees_champion_batches_and_run_card(view, spec, browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = f"{view.base}/batchloop/problems/{spec.name}"
    browser.get(page)  # no session: Airflow's login page, no model data
    _wait(browser, lambda d: d.find_elements(By.NAME, "username"), "the login form")
    assert "/auth/login" in browser.current_url
    assert "logistic_regression" not in browser.page_source
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(view.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(browser, lambda d: d.current_url == page
          and d.find_elements(By.TAG_NAME, "h1"), "the view after login")

    assert browser.find_element(By.TAG_NAME, "h1").text == f"Batchloop: {spec.name}"
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert cards[0].text.split()[:2] == ["champion", f"v{view.champion}"]
    assert cards[1].text.split()[:2] == ["challenger", f"v{view.challenger}"]

    def rows(section: str) -> list[list[str]]:
        table = browser.find_element(
            By.XPATH, f"//h2[starts-with(., '{section}')]/following-sibling::table[1]")
        return [[c.text for c in tr.find_elements(By.TAG_NAME, "td")]
                for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

    batches = {r[0]: r for r in rows("Batches")}
    assert {b: (r[3], r[4].split()[0]) for b, r in batches.items()} == {
        "2015": ("1500", "0"), "2016": ("1500", "3")}
    assert batches["2015"][5] == f"v{view.challenger}, v{view.champion}"  # lineage: trained on
    assert batches["2016"][2].split()[0] == "employment_2016_bad.parquet"  # the source file
    assert "range" in batches["2016"][4] or "AGEP" in batches["2016"][4]  # the rule
    versions = {r[0]: r for r in rows("Model versions")}
    assert versions[f"v{view.champion}"][1] == "champion"
    moves = rows("Alias history")  # newest first: alias, move, who, evaluation
    assert [(r[1], r[2], r[4], r[6]) for r in moves] == [
        ("challenger", f"— → v{view.challenger}", "ui-test", "—"),
        ("champion", f"— → v{view.champion}", "ui-test", f"#{view.evaluation} run card")]
    shot = tmp_path / "batchloop_view.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")

    link = browser.find_element(
        By.XPATH, f"//h2[starts-with(., 'Evaluations')]/following-sibling::table[1]"
                  f"//tr[td[1]='#{view.evaluation}']//a[text()='run card']")
    main = browser.current_window_handle
    link.click()  # opens in a new tab
    _wait(browser, lambda d: len(d.window_handles) == 2, "the run card tab")
    browser.switch_to.window([h for h in browser.window_handles if h != main][0])
    _wait(browser, lambda d: d.title == f"Run card: {spec.name}, evaluation {view.evaluation}",
          "the run card")
    assert "no champion: judged by the absolute floor alone" in browser.page_source
    browser.close()
    browser.switch_to.window(main)

    browser.find_element(By.LINK_TEXT, "Monitoring page").click()
    _wait(browser, lambda d: len(d.window_handles) == 2, "the monitoring tab")
    browser.switch_to.window([h for h in browser.window_handles if h != main][0])
    _wait(browser, lambda d: d.title == f"Monitoring: {spec.name}", "the monitoring page")
    browser.close()
    browser.switch_to.window(main)

    browser.get(f"{view.base}/plugin/batchloop")  # the nav entry: the view framed in the UI
    frame = _wait(browser, lambda d: d.find_elements(By.TAG_NAME, "iframe"), "the plugin frame")
    browser.switch_to.frame(frame[0])
    _wait(browser, lambda d: d.find_elements(By.LINK_TEXT, spec.name), "the framed index")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Batchloop: problems"
