"""The Batchloop view as the operator's cockpit, in a real headless Chromium against a real
`airflow standalone` (the fixtures of test_ui_view.py: its own Airflow and MLCORE_HOME).

The walk: a retrain DAG run fails for real (scheduler, LocalExecutor, the project's failure
notifier journaling the alert) → the cockpit's "needs attention" lists it with its runbook
section, which opens → a rollback from the view, with a reason, lands in the alias history under
the logged-in user's name → the compare and version pages → a stage re-run from a "missing
stage" button triggers the stage DAG with the batch in its conf; the ingest form refuses a bad
batch ID inline and triggers the real ingest DAG, which publishes. A Viewer sees no forms and a
hand-made POST with their own valid token is refused; a POST without the token or from another
origin is refused for anyone. Screenshots go to docs/screenshots/.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import time
import urllib.parse
from pathlib import Path

import pytest
import test_ui_view
from test_ui_view import ROOT, _get, _wait

pytestmark = pytest.mark.live  # starts a live Airflow (make test-live)

# The same fixtures (a standalone of its own for this module; the walk changes the champion).
view, browser = test_ui_view.view, test_ui_view.browser

PROBLEM = "census_employment"
RETRAIN, MONITOR = f"{PROBLEM}__retrain_model", f"{PROBLEM}__monitor_model"
SHOTS = ROOT / "docs" / "screenshots"


def _api(view, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(view.base.removeprefix("http://"), timeout=60)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Authorization": f"Bearer {view.token}",
                          "Content-Type": "application/json"})
    resp = conn.getresponse()
    status, data = resp.status, resp.read()
    conn.close()
    return status, json.loads(data or b"{}")


def _until(what: str, check, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(2)


def _post(view, path: str, fields: dict[str, str], token: str,
          origin: str | None = None) -> tuple[int, str]:
    """A form POST with the session cookie (as a browser would send it)."""
    conn = http.client.HTTPConnection(view.base.removeprefix("http://"), timeout=120)
    conn.request("POST", path, body=urllib.parse.urlencode(fields), headers={
        "Cookie": f"_token={token}", "Origin": origin or view.base, "Accept": "text/html",
        "Content-Type": "application/x-www-form-urlencoded"})
    resp = conn.getresponse()
    out = resp.status, resp.read().decode()
    conn.close()
    return out


def _token_of(view, user: str, password: str) -> str:
    conn = http.client.HTTPConnection(view.base.removeprefix("http://"), timeout=60)
    conn.request("POST", "/auth/token", body=json.dumps({"username": user, "password": password}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    token = json.loads(resp.read())["access_token"]
    conn.close()
    return token


def _page_csrf(view, token: str) -> tuple[str, str]:
    conn = http.client.HTTPConnection(view.base.removeprefix("http://"), timeout=120)
    conn.request("GET", f"/batchloop/problems/{PROBLEM}",
                 headers={"Cookie": f"_token={token}", "Accept": "text/html"})
    resp = conn.getresponse()
    page = resp.read().decode()
    conn.close()
    assert resp.status == 200, page[:500]
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found, "no CSRF token on the page"
    return page, found.group(1)


def _login(driver, view, user: str, password: str, page: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(page)
    _wait(driver, lambda d: d.find_elements(By.NAME, "username"), "the login form")
    driver.find_element(By.NAME, "username").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(driver, lambda d: d.current_url == page and d.find_elements(By.TAG_NAME, "h1"),
          "the view after login")


def _failed_retrain(view) -> str:
    """Unpause the retrain DAG, trigger it, wait until it failed and its alert is journaled."""
    _until("the DAGs parsed", lambda: _api(view, "GET", f"/api/v2/dags/{RETRAIN}")[0] == 200)
    assert _api(view, "PATCH", f"/api/v2/dags/{RETRAIN}", {"is_paused": False})[0] == 200
    _until("the monitor DAG parsed", lambda: _api(view, "GET", f"/api/v2/dags/{MONITOR}")[0] == 200)
    # Paused by an operator (stage DAGs may start active): the cockpit must say so.
    assert _api(view, "PATCH", f"/api/v2/dags/{MONITOR}", {"is_paused": True})[0] == 200
    status, run = _api(view, "POST", f"/api/v2/dags/{RETRAIN}/dagRuns",
                       {"logical_date": None, "conf": {}})
    assert status == 200, run
    run_id = run["dag_run_id"]
    path = f"/api/v2/dags/{RETRAIN}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    _until("the retrain run to fail", lambda: _api(view, "GET", path)[1].get("state") == "failed")
    alerts = view.settings.home / "alerts"
    _until("the alert journaled", lambda: any(
        json.loads(p.read_text()).get("run_id") == run_id and "deliveries" in p.read_text()
        for p in alerts.glob("*.json")) if alerts.is_dir() else False)
    return run_id


def test_cockpit_walk_failed_retrain_rollback_compare_rerun(view, spec, browser):
    from selenium.webdriver.common.by import By

    from mlcore.promotion import promote_version

    run_id = _failed_retrain(view)
    # Someone promoted the challenger by force: the rollback below has a previous holder.
    forced = promote_version(spec, view.challenger, "ui-test: forced for the rollback walk",
                             view.settings, force=True, actor="ui-test")
    assert forced["promoted"]

    page = f"{view.base}/batchloop/problems/{PROBLEM}"
    _login(browser, view, "admin", view.password, page)
    panel = browser.find_element(By.ID, "attention")
    failed = [li for li in panel.find_elements(By.CSS_SELECTOR, "li.failed")
              if run_id in li.text]
    assert failed, panel.text
    assert "retrain_model" in failed[0].text and "NotEnoughData" in failed[0].text
    runbook = failed[0].find_element(By.LINK_TEXT, "runbook section")
    assert runbook.get_attribute("href").endswith("/batchloop/runbook#not-enough-data")
    assert "injected by the UI test" in failed[0].text  # the journaled alert's error
    assert f"PAUSED {MONITOR}" in panel.text  # the paused stage DAG
    assert "MISSING STAGE batch 2016" in panel.text  # published, never scored
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / "cockpit.png"))

    main = browser.current_window_handle
    runbook.click()  # a new tab, at its section
    _wait(browser, lambda d: len(d.window_handles) == 2, "the runbook tab")
    browser.switch_to.window([h for h in browser.window_handles if h != main][0])
    _wait(browser, lambda d: d.find_elements(By.ID, "not-enough-data"), "the runbook section")
    browser.close()
    browser.switch_to.window(main)

    reason = "v2 misbehaves on 2016 ages; back to v1"
    form = browser.find_element(By.ID, "form-rollback")
    form.find_element(By.NAME, "reason").send_keys(reason)
    form.find_element(By.TAG_NAME, "button").click()
    result = _wait(browser, lambda d: d.find_elements(By.ID, "result"), "the rollback result")
    assert result[0].text == (f"Champion of {PROBLEM} rolled back: v{view.challenger} → "
                              f"v{view.champion}, by admin: {reason}")
    browser.find_element(By.LINK_TEXT, f"Back to {PROBLEM}").click()
    _wait(browser, lambda d: d.current_url == page, "the problem page")
    history = browser.find_element(
        By.XPATH, "//h2[starts-with(., 'Alias history')]/following-sibling::table[1]")
    newest = [c.text for c in history.find_elements(By.CSS_SELECTOR, "tbody tr")[0]
              .find_elements(By.TAG_NAME, "td")]
    assert newest[1:6] == ["champion", f"v{view.challenger} → v{view.champion}", "rollback",
                           "admin", reason]
    assert browser.find_elements(By.CSS_SELECTOR, ".card")[0].text.split()[:2] == [
        "champion", f"v{view.champion}"]

    browser.get(f"{page}/compare?a={view.challenger}&b={view.champion}")
    _wait(browser, lambda d: d.find_elements(By.TAG_NAME, "h1"), "the compare page")
    assert browser.find_element(By.TAG_NAME, "h1").text == (
        f"{PROBLEM}: v{view.challenger} vs v{view.champion}")
    facts = browser.find_element(By.CSS_SELECTOR, "table.compare").text
    assert "Trained on" in facts and "Artifact SHA-256" in facts and "rollback" in facts
    assert browser.save_screenshot(str(SHOTS / "compare.png"))
    browser.find_element(By.LINK_TEXT, f"v{view.champion}").click()
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == (
        f"{PROBLEM} v{view.champion}"), "the version page")
    assert "run card" in browser.page_source

    browser.get(page)
    rerun = [f for f in browser.find_elements(By.CSS_SELECTOR, "#attention form")
             if f.find_element(By.NAME, "batch_id").get_attribute("value") == "2016"
             and f.find_element(By.NAME, "stage").get_attribute("value") == "monitor"]
    assert rerun, browser.find_element(By.ID, "attention").text
    rerun[0].find_element(By.NAME, "reason").send_keys("drift check never ran")
    rerun[0].find_element(By.TAG_NAME, "button").click()
    result = _wait(browser, lambda d: d.find_elements(By.ID, "result"), "the re-run result")
    assert result[0].text.startswith(f"Triggered {MONITOR} for batch 2016: run "), result[0].text
    _, runs = _api(view, "GET", f"/api/v2/dags/{MONITOR}/dagRuns")
    assert [(r["conf"], r["triggering_user_name"]) for r in runs["dag_runs"]] == [
        ({"batch_id": "2016"}, "admin")]


def test_ingest_from_the_view_refuses_a_bad_id_inline_then_publishes(view, browser, slices):
    """The operator's ingest form: the browser itself refuses ``../etc`` (no request sent),
    a hand-made POST of it gets a sentence, not a schema dump; a good ID triggers the real
    ingest DAG, which publishes the batch, and the real materialize and score DAGs follow by
    asset events (all active from the start: nobody unpaused anything)."""
    from selenium.webdriver.common.by import By
    from sqlalchemy import func, select

    from mlcore.store.catalog import published_batches
    from mlcore.store.models import Prediction
    from mlcore.store.session import session_scope

    ingest = f"{PROBLEM}__ingest_batch"
    page = f"{view.base}/batchloop/problems/{PROBLEM}"
    _login(browser, view, "admin", view.password, page)
    form = browser.find_element(By.ID, "form-ingest")
    batch = form.find_element(By.NAME, "batch_id")
    batch.send_keys("../etc")
    form.find_element(By.NAME, "source").send_keys(str(slices[2017]))
    form.find_element(By.NAME, "reason").send_keys("new quarter arrived")
    form.find_element(By.TAG_NAME, "button").click()
    time.sleep(1)
    assert browser.current_url == page and not browser.find_elements(By.ID, "result")
    assert browser.execute_script("return arguments[0].validity.patternMismatch", batch)
    assert browser.execute_script("return arguments[0].validationMessage", batch)  # shown
    assert "letters, digits" in batch.get_attribute("title")  # Chromium's bubble adds it

    _, csrf = _page_csrf(view, view.token)
    status, body = _post(view, f"/batchloop/problems/{PROBLEM}/actions/ingest",
                         {"csrf": csrf, "reason": "by hand", "batch_id": "../etc",
                          "source": str(slices[2017])}, view.token)
    assert status == 400 and "Batch ID '../etc' is not valid: 1 to 64 letters" in (
        html.unescape(body)), body[-600:]
    assert "pattern" not in body and "schema" not in body.lower()

    batch.clear()
    batch.send_keys("2017")
    form.find_element(By.TAG_NAME, "button").click()
    result = _wait(browser, lambda d: d.find_elements(By.ID, "result"), "the ingest result")
    assert result[0].text.startswith(f"Triggered {ingest} for batch 2017 from "), result[0].text
    _, runs = _api(view, "GET", f"/api/v2/dags/{ingest}/dagRuns")
    [run] = runs["dag_runs"]
    assert run["conf"] == {"batch_id": "2017", "source": str(slices[2017])}
    assert run["triggering_user_name"] == "admin"
    path = f"/api/v2/dags/{ingest}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"
    _until("the ingest run to succeed",
           lambda: _api(view, "GET", path)[1].get("state") in ("success", "failed"))
    assert _api(view, "GET", path)[1]["state"] == "success"
    assert "2017" in {b.batch_id for b in published_batches(PROBLEM, view.settings.db_url)}

    def chained(stage: str) -> dict | None:  # the real stage DAGs, run by asset events alone
        runs = _api(view, "GET", f"/api/v2/dags/{PROBLEM}__{stage}/dagRuns")[1]["dag_runs"]
        return next((r for r in runs if r["state"] in ("success", "failed")), None)

    for stage in ("materialize_features", "score_batch"):
        run = _until(f"{stage} to run after the ingest", lambda s=stage: chained(s), 300)
        assert (run["state"], run["run_type"]) == ("success", "asset_triggered"), run
    with session_scope(view.settings.db_url) as s:
        scored = s.scalar(select(func.count()).select_from(Prediction).where(
            Prediction.problem == PROBLEM, Prediction.batch_id == "2017"))
    assert scored and scored > 0


def test_a_viewer_sees_no_forms_and_cannot_act(view, browser):
    from selenium.webdriver.common.by import By

    from mlcore.model.registry import alias_holder, alias_log

    page = f"{view.base}/batchloop/problems/{PROBLEM}"
    _login(browser, view, "viewer", view.viewer_password, page)
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Batchloop: {PROBLEM}"
    assert not browser.find_elements(By.CSS_SELECTOR, "form[method=post]")
    assert "You may view this problem" in browser.find_element(By.ID, "actions").text

    token = _token_of(view, "viewer", view.viewer_password)
    _, csrf = _page_csrf(view, token)  # the viewer's own valid token
    before = (alias_holder(PROBLEM, view.settings.db_url), len(alias_log(
        PROBLEM, view.settings.db_url)))
    for action, fields in (("rollback", {}), ("promote", {"version": "1"}),
                           ("challenger", {"version": "1"}), ("retrain", {}),
                           ("rerun", {"batch_id": "2016", "stage": "monitor"}),
                           ("ingest", {"batch_id": "v1", "source": "/data/x.parquet"})):
        status, body = _post(view, f"/batchloop/problems/{PROBLEM}/actions/{action}",
                             {"csrf": csrf, "reason": "viewer tries", **fields}, token)
        assert status == 403 and "may view but not change" in html.unescape(body), (action, body)
    assert (alias_holder(PROBLEM, view.settings.db_url),
            len(alias_log(PROBLEM, view.settings.db_url))) == before


def test_actions_need_the_session_token_and_same_origin(view):
    from mlcore.model.registry import alias_log

    page, csrf = _page_csrf(view, view.token)
    assert 'id="form-rollback"' in page
    moves = len(alias_log(PROBLEM, view.settings.db_url))
    path = f"/batchloop/problems/{PROBLEM}/actions/retrain"
    cases = [({"reason": "no token"}, None, "security token"),
             ({"reason": "bad token", "csrf": "0" * 64}, None, "security token"),
             ({"reason": "cross site", "csrf": csrf}, "http://evil.example", "Origin"),
             ({"reason": "", "csrf": csrf}, None, "reason")]
    for fields, origin, why in cases:
        status, body = _post(view, path, fields, view.token, origin)
        assert status in (400, 403) and why in body, (fields, status, body[-400:])
    viewer = _token_of(view, "viewer", view.viewer_password)
    status, _ = _post(view, path, {"reason": "token of another session", "csrf": csrf}, viewer)
    assert status == 403
    assert len(alias_log(PROBLEM, view.settings.db_url)) == moves
    headers = _get(view.base, f"/batchloop/problems/{PROBLEM}", view.token, "text/html")[1]
    assert "form-action 'self'" in headers["content-security-policy"]
    headers = _get(view.base, "/batchloop/", view.token, "text/html")[1]
    assert "form-action 'none'" in headers["content-security-policy"]
    assert Path(SHOTS).is_dir()
