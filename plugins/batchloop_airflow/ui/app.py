"""The Batchloop view inside the Airflow 3 UI: a FastAPI app mounted on the api-server.

Routes (under ``URL_PREFIX``; all behind Airflow's own auth):

* ``/problems/<name>`` starts with the "needs attention" panel (``ui_cockpit``) and the action
  forms (``ui_actions``: POST ``/problems/<name>/actions/<action>``, CSRF-checked and authorized
  by Airflow's permission model); ``/problems/<name>/versions/<n>`` is a version's page and
  ``/problems/<name>/compare?a=<n>&b=<m>`` compares two; ``/runbook`` renders RUNBOOK.md (the
  alerts' sections); ``/static/view.js`` is the view's one script.

* ``/`` lists the problems; ``/problems/<name>`` shows one problem: champion and challenger,
  model versions with their metrics, the alias history (who, when, why, which evaluation),
  evaluations with links to their run cards, batches with row and quarantine counts, lineage,
  retrain requests and performance on matured labels.
* ``/reports/<path>`` serves files under ``<MLCORE_HOME>/reports`` (run cards, the monitoring
  page, drift reports) and nothing else: no ``..``, no absolute path, no symlink out.

Auth is Airflow's: every route depends on ``requires_access_view(AccessView.WEBSITE)`` from the
core API, which reads the user from ``Authorization: Bearer`` or the ``_token`` cookie the UI sets
at login and asks the configured auth manager. A browser without a session is redirected to the
auth manager's login page (and back); API clients get 401.

Plugin load stays light: this module imports only the stdlib. FastAPI, Airflow's security
module and ``mlcore`` are imported when the api-server serves the first request.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at runtime, and
# the routes' types are imported inside ``create_app``.
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

URL_PREFIX = "/batchloop"
# Our own pages: one same-origin script (static/view.js: sortable tables, color mode), no
# inline script; framed only by the Airflow UI itself (same origin). Forms may post only to this
# server, and only pages with action forms allow posting at all.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
FORM_PAGE_CSP = PAGE_CSP.replace("form-action 'none'", "form-action 'self'")
# Served report files run in an opaque origin: a drift report's scripts still work, but nothing
# in a report can read the Airflow session or call the API as the user.
REPORT_CSP = "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox allow-downloads"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class LazyApp:
    """An ASGI app that builds the real FastAPI app (``create_app``) on its first request.

    Every Airflow process that loads plugins (scheduler, dag-processor, workers) imports the
    plugin module; only the api-server ever calls it, so only it pays for the imports.
    """

    def __init__(self) -> None:
        self._app: FastAPI | None = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                      send: Callable[[Message], Awaitable[None]]) -> None:
        """Delegate to the FastAPI app, building it once."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = create_app()
        await self._app(scope, receive, send)


def resolve_report(home: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``<home>/reports``, or None if it is not one.

    Refused: empty, absolute, NUL, any ``..`` part, anything that resolves (symlinks included)
    outside the reports folder, and anything that is not a regular file.
    """
    parts = PurePosixPath(relative).parts
    if not relative or "\x00" in relative or relative.startswith("/") or ".." in parts:
        return None
    root = (home / "reports").resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _store_missing(settings: Any) -> bool:
    """True when the metadata store is a SQLite file that does not exist yet (reading it would
    create an empty one)."""
    url: str = settings.db_url
    return url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()


def create_app() -> "FastAPI":
    """The FastAPI app with the view's routes, every one behind Airflow's auth."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
    from fastapi import Depends, FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
    from starlette.exceptions import HTTPException
    from starlette.responses import Response

    app = FastAPI(title="Batchloop", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(requires_access_view(AccessView.WEBSITE))])

    def html_response(body: str, status: int = 200, forms: bool = False) -> HTMLResponse:
        return HTMLResponse(body, status, headers={"Content-Security-Policy":
                                                   FORM_PAGE_CSP if forms else PAGE_CSP,
                                                   "Cache-Control": "no-store",
                                                   "X-Content-Type-Options": "nosniff"})

    def message(title: str, text: str, status: int) -> HTMLResponse:
        from batchloop_airflow.ui.page import page
        from mlcore.reports.html import esc

        return html_response(page(title, f"<h1>{esc(title)}</h1><p>{esc(text)}</p>"), status)

    @app.exception_handler(HTTPException)
    async def _unauthenticated(request: Request, exc: HTTPException) -> Response:
        """A browser without a session goes to the login page and comes back here."""
        if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=303)
        if exc.status_code == 403 and "text/html" in request.headers.get("accept", ""):
            return message("Forbidden", f"{exc.detail}. Log in again as a user who may "
                           "view the Airflow UI.", 403)
        return await http_exception_handler(request, exc)

    def read(render: Callable[[Any], str], forms: bool = False) -> HTMLResponse:
        from sqlalchemy.exc import SQLAlchemyError

        from batchloop_airflow.connections import settings as get_settings

        settings = get_settings()
        if _store_missing(settings):
            return message("Batchloop: no state yet", "The metadata store does not exist "
                           "yet; run `mlcore init` (or `make demo`).", 503)
        try:
            return html_response(render(settings), forms=forms)
        except SQLAlchemyError as exc:
            log.warning("Batchloop view: metadata store unreadable: %s",
                        str(exc).splitlines()[0][:300])
            return message("Batchloop: metadata store unavailable", "The metadata store "
                           "could not be read (not migrated? run `mlcore init`). See the "
                           "api-server log.", 503)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        """Every declared problem with its champion and challenger."""
        from batchloop_airflow.ui.page import index_data, render_index

        return read(lambda settings: render_index(index_data(settings)))

    def spec_of(problem: str) -> Any:
        from batchloop_airflow.connections import settings as get_settings
        from mlcore.problems import load_problems

        return load_problems(get_settings().problems_dir).get(problem)

    @app.get("/problems/{problem}", response_class=HTMLResponse)
    def problem(problem: str, request: Request, user: GetUserDep) -> HTMLResponse:
        """One problem: needs attention, actions, versions, aliases, evaluations, batches."""
        from batchloop_airflow.ui.actions import csrf_token, may_act
        from batchloop_airflow.ui.page import problem_data, render_problem

        spec = spec_of(problem)
        if spec is None:
            return message("Not found", f"No problem spec named {problem!r}.", 404)
        ui = {"csrf": csrf_token(request), "can": may_act(user, problem)}
        return read(lambda settings: render_problem(problem_data(spec, settings),
                                                    settings.home, spec, ui), forms=True)

    @app.get("/problems/{problem}/versions/{version}", response_class=HTMLResponse)
    def version(problem: str, version: int) -> HTMLResponse:
        """One model version: metrics, slices, lineage, alias moves, run cards."""
        from batchloop_airflow.ui.versions import render_version, version_data
        from mlcore.model.registry import ModelNotFound

        spec = spec_of(problem)
        if spec is None:
            return message("Not found", f"No problem spec named {problem!r}.", 404)
        try:
            return read(lambda settings: render_version(version_data(spec, version, settings),
                                                        spec, settings.home))
        except ModelNotFound:
            return message("Not found", f"{problem} has no model version {version}.", 404)

    @app.get("/problems/{problem}/compare", response_class=HTMLResponse)
    def compare(problem: str, a: int, b: int) -> HTMLResponse:
        """Two versions side by side."""
        from batchloop_airflow.ui.versions import render_compare, version_data
        from mlcore.model.registry import ModelNotFound

        spec = spec_of(problem)
        if spec is None:
            return message("Not found", f"No problem spec named {problem!r}.", 404)
        try:
            return read(lambda settings: render_compare(
                version_data(spec, a, settings), version_data(spec, b, settings), spec,
                settings.home))
        except ModelNotFound as exc:
            return message("Not found", str(exc), 404)

    @app.post("/problems/{problem}/actions/{action}", response_class=HTMLResponse)
    async def act(problem: str, action: str, request: Request, user: GetUserDep
                  ) -> HTMLResponse:
        """A safe action: same origin, CSRF token, Airflow permission, required reason."""
        from starlette.concurrency import run_in_threadpool

        from batchloop_airflow.connections import settings as get_settings
        from batchloop_airflow.ui.actions import (
            ACTIONS,
            Refused,
            authorize,
            read_form,
            rerun_dag,
            run_action,
        )
        from batchloop_airflow.ui.page import page
        from mlcore.reports.html import esc

        back = f'<p><a href="../../{quote(problem, safe="")}">Back to {esc(problem)}</a></p>'
        try:
            spec = await run_in_threadpool(spec_of, problem)
            if spec is None or action not in ACTIONS:
                raise Refused(404, "No such problem or action.")
            form = await read_form(request)
            await run_in_threadpool(authorize, user, problem, action,
                                    rerun_dag(problem, form) if action == "rerun" else None)
            text = await run_in_threadpool(run_action, action, spec, form, user, get_settings())
            log.info("Batchloop view action %s on %s by %s: %s", action, problem,
                     user.get_name(), text)
            return html_response(page("Batchloop: done", f'{back}<h1>Done</h1><p id="result" '
                                      f'class="allclear">{esc(text)}</p>', "../../../"))
        except Refused as exc:
            log.warning("Batchloop view action %s on %s refused (%d): %s", action, problem,
                        exc.status, exc)
            return html_response(page("Batchloop: refused", f'{back}<h1>Not done</h1><p '
                                      f'id="result" class="attn">{esc(str(exc))}</p>',
                                      "../../../"), exc.status)

    @app.get("/runbook", response_class=HTMLResponse)
    def runbook() -> HTMLResponse:
        """RUNBOOK.md, so an alert's runbook link opens its section."""
        from batchloop_airflow.ui.static import render_runbook

        body = render_runbook()
        if body is None:
            return message("Not found", "RUNBOOK.md is not installed next to the plugins "
                           "(set BATCHLOOP_RUNBOOK_PATH).", 404)
        return html_response(body)

    @app.get("/static/view.js")
    def view_js() -> Response:
        """The view's one script (sortable tables, the Airflow UI's color mode)."""
        from batchloop_airflow.ui.static import VIEW_JS

        return Response(VIEW_JS, media_type="text/javascript",
                        headers={"Cache-Control": "max-age=300",
                                 "X-Content-Type-Options": "nosniff"})

    @app.api_route("/reports/{path:path}", methods=["GET", "HEAD"])
    def report(path: str) -> Response:
        """A file under ``<MLCORE_HOME>/reports`` (run card, monitoring page, drift report)."""
        from batchloop_airflow.connections import settings as get_settings

        found = resolve_report(get_settings().home, path)
        if found is None:
            return message("Not found", "No such report.", 404)
        return FileResponse(found, content_disposition_type="inline",
                            headers={"Content-Security-Policy": REPORT_CSP,
                                     "Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff"})

    return app
