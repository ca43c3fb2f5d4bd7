"""Safe actions in the Batchloop view: promote, roll back, set the challenger, re-run a stage for a
batch, file a retrain request, ingest a batch.

Each is an HTML form POSTed to ``/batchloop/problems/<p>/actions/<action>`` and runs the same
``mlcore`` function the CLI runs, with the same checks (``promote_version`` judges the version
on the holdout exactly like ``mlcore promote``; every alias move verifies the artifact's SHA-256
with ``settings``), recorded in the alias history under the logged-in Airflow user's name.

Three gates, in order, before anything runs:

1. **Same origin.** The ``Origin`` header (or, without one, ``Referer``) must be this server;
   ``Sec-Fetch-Site``, when sent, must be ``same-origin``. Airflow's ``_token`` cookie is
   ``SameSite=Lax`` anyway, so a cross-site POST carries no session.
2. **CSRF token.** Every form carries ``csrf``: an HMAC (the api-server's ``[api] secret_key``)
   of the session's JWT. It is compared in constant time; another session's token fails.
3. **Airflow's permission model.** The auth manager must allow the user to edit the problem's
   DAGs (``PUT`` on ``<problem>__retrain_model``; re-runs and ingests: ``POST`` a run of the
   stage's DAG).
   A Viewer may look, never act: the forms are not even shown to them, and a hand-made POST is
   refused with 403.

A reason is required for every action (3 to 500 characters). Imported only inside handlers.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

ACTIONS = ("promote", "rollback", "challenger", "rerun", "retrain", "ingest")
TRIGGERS = ("rerun", "ingest")  # actions that trigger a stage DAG (Airflow: trigger permission)
# mlcore.batches.BATCH_ID_RE as an HTML pattern (anchored by the browser, "v" flag: "-" escaped)
BATCH_ID_HTML = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
BATCH_ID_HINT = ("1 to 64 letters, digits, _ . or -, starting with a letter or digit "
                 "(e.g. 2018 or 2018-03-fixed)")
MIN_REASON, MAX_REASON = 3, 500
MAX_BODY = 16_384
_fallback_key = secrets.token_bytes(32)
_lock = threading.Lock()  # one action at a time per api-server worker (the CLI is one process)


class Refused(Exception):
    """The request may not act (status and a message for the user)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _key() -> bytes:
    try:
        from airflow.api_fastapi.auth.tokens import get_signing_key

        return get_signing_key("api", "secret_key").encode()
    except Exception:  # noqa: BLE001 - no configured key: a per-process one (one worker)
        return _fallback_key


def session_token(request: Any) -> str:
    """The credential this request authenticated with (bearer header, else the cookie)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return str(auth[7:].strip())
    return str(request.cookies.get("_token", ""))


def csrf_token(request: Any) -> str:
    """The form token of this session: HMAC-SHA256 of its JWT (never the JWT itself)."""
    return hmac.new(_key(), b"batchloop-csrf|" + session_token(request).encode(),
                    hashlib.sha256).hexdigest()


def _origin_ok(request: Any) -> bool:
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


async def read_form(request: Any) -> dict[str, str]:
    """The urlencoded form of a POST after the origin and CSRF checks.

    Raises:
        Refused: wrong origin, missing or wrong token, or a body that is not a small form.
    """
    if not _origin_ok(request):
        raise Refused(403, "Refused: the request did not come from this Batchloop view "
                      "(Origin/Referer check).")
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise Refused(415, "Refused: expected a form post.")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Refused(413, "Refused: form too large.")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                         keep_blank_values=True).items()}
    if not session_token(request) or not hmac.compare_digest(
            form.get("csrf", ""), csrf_token(request)):
        raise Refused(403, "Refused: the form's security token is missing or expired. Reload "
                      "the page and try again.")
    return form


def reason_of(form: dict[str, str]) -> str:
    """The required reason, stripped.

    Raises:
        Refused: missing, too short or too long.
    """
    reason = " ".join(form.get("reason", "").split())
    if not MIN_REASON <= len(reason) <= MAX_REASON:
        raise Refused(400, f"A reason of {MIN_REASON} to {MAX_REASON} characters is required.")
    return reason


def version_of(form: dict[str, str]) -> int:
    """The ``version`` field as an int.

    Raises:
        Refused: not a positive integer.
    """
    text = form.get("version", "").strip().removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        raise Refused(400, "Pick a model version.")
    return int(text)


def authorize(user: Any, problem: str, action: str, stage_dag: str | None = None) -> None:
    """Ask Airflow's auth manager.

    Raises:
        Refused: 403 when the user may not.
    """
    from batchloop_airflow.ui.airflow_api import dag_id, may

    trigger = action in TRIGGERS
    if action == "ingest":
        stage_dag = dag_id(problem, "ingest_batch")
    dag = stage_dag if trigger and stage_dag else dag_id(problem, "retrain_model")
    if not may(user, "trigger" if trigger else "edit", dag):
        raise Refused(403, f"Forbidden: {user.get_name()} may view but not change {problem} "
                      f"(Airflow permission: {'trigger' if trigger else 'edit'} "
                      f"DAG {dag}).")


def may_act(user: Any, problem: str) -> dict[str, bool]:
    """Which forms to show this user: ``models`` (promote, roll back, challenger, retrain
    request), ``rerun`` and ``ingest``."""
    from batchloop_airflow.ui.airflow_api import dag_id, may

    try:
        return {"models": may(user, "edit", dag_id(problem, "retrain_model")),
                "rerun": may(user, "trigger", dag_id(problem, "score_batch")),
                "ingest": may(user, "trigger", dag_id(problem, "ingest_batch"))}
    except Exception:  # noqa: BLE001 - no auth manager answer: show no forms
        return {"models": False, "rerun": False, "ingest": False}


def run_action(action: str, spec: Any, form: dict[str, str], user: Any,
               settings: Any) -> str:
    """Do ``action`` (already authorized) and say what happened (plain text).

    Raises:
        Refused: bad input (400), or the registry refused (409).
    """
    from mlcore.errors import one_line
    from mlcore.model.registry import CHALLENGER, RegistryError, alias_holder
    from mlcore.promotion import promote_version, rollback, set_challenger

    who, problem, url = user.get_name(), spec.name, settings.db_url
    reason = reason_of(form)
    with _lock:
        try:
            if action == "rollback":
                old, new = rollback(problem, reason, url, actor=who, settings=settings)
                return f"Champion of {problem} rolled back: v{old} → v{new}, by {who}: {reason}"
            if action == "promote":
                r = promote_version(spec, version_of(form), reason, settings, actor=who)
                if r["promoted"]:
                    return (f"v{r['version']} is champion of {problem} (was "
                            f"{'none' if r['previous'] is None else 'v' + str(r['previous'])}"
                            f"), by {who}: {r['outcome']}: {r['reason']}")
                raise Refused(409, f"Not promoted: v{r['version']} {r['outcome']}: "
                              f"{r['reason']} (evaluation #{r['evaluation_id']}; the same "
                              "checks as `mlcore promote`).")
            if action == "challenger":
                version = version_of(form)
                current = alias_holder(problem, url, CHALLENGER)
                if current == version:
                    return f"v{version} is already the challenger (no change)."
                set_challenger(problem, version, reason, settings, expected=current, actor=who)
                return f"Challenger of {problem}: {_v(current)} → v{version}, by {who}: {reason}"
            if action == "retrain":
                from mlcore.policy import request_manual

                request_id = request_manual(problem, f"{reason} (by {who} in the view)", url)
                return f"Retrain request #{request_id} filed (or merged) for {problem}, by {who}."
            if action == "rerun":
                return _rerun(spec, form, who, reason, settings)
            if action == "ingest":
                return _ingest(spec, form, who, reason)
        except RegistryError as exc:
            raise Refused(409, f"Refused: {one_line(str(exc))}") from exc
        except (ValueError, LookupError) as exc:
            raise Refused(400, f"Refused: {one_line(str(exc))}") from exc
    raise Refused(404, f"Unknown action {action!r}.")


def _v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def rerun_dag(problem: str, form: dict[str, str]) -> str:
    """The stage DAG a re-run form names.

    Raises:
        Refused: unknown stage.
    """
    from batchloop_airflow.ui.airflow_api import STAGE_DAGS, dag_id

    stage = form.get("stage", "")
    if stage not in STAGE_DAGS:
        raise Refused(400, f"Unknown stage {stage!r} (one of {', '.join(STAGE_DAGS)}).")
    return dag_id(problem, STAGE_DAGS[stage])


def _rerun(spec: Any, form: dict[str, str], who: str, reason: str, settings: Any) -> str:
    from batchloop_airflow.ui.airflow_api import trigger
    from mlcore.batches import check_batch_id
    from mlcore.store.catalog import published_batches

    dag = rerun_dag(spec.name, form)
    batch_id = form.get("batch_id", "")
    check_batch_id(batch_id)
    if batch_id not in {b.batch_id for b in published_batches(spec.name, settings.db_url)}:
        raise Refused(400, f"Batch {batch_id!r} is not a published batch of {spec.name}.")
    run_id = trigger(dag, {"batch_id": batch_id}, who, f"Batchloop view, {who}: {reason}")
    return f"Triggered {dag} for batch {batch_id}: run {run_id}, by {who}."


def _ingest(spec: Any, form: dict[str, str], who: str, reason: str) -> str:
    """Trigger ``<problem>__ingest_batch`` with the form's batch ID and source, after the same
    batch-ID check the task makes (a plain message, not the Param's JSON schema)."""
    from batchloop_airflow.ui.airflow_api import dag_id, trigger
    from mlcore.batches import BATCH_ID_RE

    batch_id, source = form.get("batch_id", "").strip(), form.get("source", "").strip()
    if not BATCH_ID_RE.fullmatch(batch_id):
        raise Refused(400, f"Batch ID {batch_id!r} is not valid: {BATCH_ID_HINT}. Nothing was "
                      "triggered.")
    if not source:
        raise Refused(400, "A source file is required (a path or URI the workers can read). "
                      "Nothing was triggered.")
    dag = dag_id(spec.name, "ingest_batch")
    run_id = trigger(dag, {"batch_id": batch_id, "source": source}, who,
                     f"Batchloop view, {who}: {reason}")
    return (f"Triggered {dag} for batch {batch_id} from {source}: run {run_id}, by {who}. "
            "The next stages follow by asset events.")


def ingest_form(problem: str, csrf: str, base: str) -> str:
    """The "ingest a batch" form: the browser refuses a bad batch ID inline (``pattern``)."""
    action = f"{base}problems/{html.escape(problem)}/actions/ingest"
    return (f'<form class="act" method="post" action="{action}" id="form-ingest">'
            f'<input type="hidden" name="csrf" value="{csrf}">'
            f'<input name="batch_id" required pattern="{BATCH_ID_HTML}" maxlength="64" '
            f'placeholder="batch ID" size="12" title="{html.escape(BATCH_ID_HINT)}">'
            '<input name="source" required placeholder="source file (path or URI)" size="36">'
            f'<input name="reason" required minlength="{MIN_REASON}" maxlength="{MAX_REASON}" '
            'placeholder="reason (required)" size="20">'
            '<button type="submit">Ingest batch</button></form><br>')


def forms(problem: str, csrf: str, models: list[dict[str, Any]], can: dict[str, bool],
          base: str) -> str:
    """The action forms of a problem page (empty for users who may not act)."""
    ingest = ingest_form(problem, csrf, base) if can.get("ingest") else ""
    if not can["models"]:
        if ingest:
            return f'<div id="actions">{ingest}</div>'

        return ('<p class="muted" id="actions">You may view this problem; changing it needs '
                "an Airflow role that may edit its DAGs."
                f'<input type="hidden" name="csrf" value="{csrf}"></p>')
    action = f"{base}problems/{html.escape(problem)}/actions/"
    token = f'<input type="hidden" name="csrf" value="{csrf}">'
    reason = (f'<input name="reason" required minlength="{MIN_REASON}" '
              f'maxlength="{MAX_REASON}" placeholder="reason (required)" size="28">')
    options = "".join(
        f'<option value="{m["version"]}">v{m["version"]} {html.escape(m["algorithm"])}'
        f'{" (" + ", ".join(m["aliases"]) + ")" if m["aliases"] else ""}</option>'
        for m in models)

    def form(name: str, label: str, body: str) -> str:
        return (f'<form class="act" method="post" action="{action}{name}" id="form-{name}">'
                f'{token}{body}{reason}<button type="submit">{label}</button></form><br>')

    return ('<div id="actions">' + ingest
            + form("promote", "Promote (runs the checks)",
                   f'<select name="version" required>{options}</select>')
            + form("rollback", "Roll back champion", "")
            + form("challenger", "Set challenger",
                   f'<select name="version" required>{options}</select>')
            + form("retrain", "File retrain request", "") + "</div>")


def rerun_form(problem: str, csrf: str, base: str) -> Any:
    """A function rendering the re-run button of one (batch, stage)."""
    action = f"{base}problems/{html.escape(problem)}/actions/rerun"

    def render(batch_id: str, stage: str) -> str:
        return (f'<form class="act" method="post" action="{action}">'
                f'<input type="hidden" name="csrf" value="{csrf}">'
                f'<input type="hidden" name="batch_id" value="{html.escape(batch_id)}">'
                f'<input type="hidden" name="stage" value="{html.escape(stage)}">'
                f'<input name="reason" required minlength="{MIN_REASON}" '
                f'maxlength="{MAX_REASON}" placeholder="reason" size="14">'
                f'<button type="submit">Re-run {html.escape(stage)}</button></form>')

    return render
