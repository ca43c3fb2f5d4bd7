"""Where alerts go, and how they read at 3 a.m.

Channels are chosen by deployment config, never by the spec; credentials stay in the Airflow
Connection (an ``AIRFLOW_CONN_*`` env var, the metadata DB or a secrets backend) or the env:

* ``webhook``: ``BATCHLOOP_ALERT_WEBHOOK`` (a URL): the payload as a JSON POST.
* ``webhook_connection``: Connection ``batchloop_alert_webhook`` (type http; host = base URL,
  auth in login/password or extra headers): the payload as a JSON POST (provider HttpNotifier).
* ``slack``: Connection ``batchloop_alert_slack`` (type slackwebhook; the webhook URL or token
  in the password): the text (provider SlackWebhookNotifier).
* ``email``: Connection ``batchloop_alert_smtp`` (type smtp) and ``BATCHLOOP_ALERT_EMAIL_TO``
  (comma-separated; or the connection's extra ``to``): subject + text (provider SmtpNotifier).

``CHANNELS`` is the registry (name -> send function and what turns it on): adding a channel is
one send function and one entry. Each channel is tried on its own; a failure is recorded (and
logged) and never stops the others.
Provider modules are imported only when sending (DAG files import this package at parse time).
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchloop_airflow.alerting.payload import DELIVERY_ANCHOR, runbook_link

log = logging.getLogger("batchloop.alerts")
WEBHOOK_ENV, EMAIL_TO_ENV, EMAIL_FROM_ENV = (
    "BATCHLOOP_ALERT_WEBHOOK", "BATCHLOOP_ALERT_EMAIL_TO", "BATCHLOOP_ALERT_EMAIL_FROM")
WEBHOOK_CONN, SLACK_CONN, SMTP_CONN = (
    "batchloop_alert_webhook", "batchloop_alert_slack", "batchloop_alert_smtp")
TIMEOUT_SECONDS = 10
RETRY_DELAY_SECONDS = 2.0  # one more try per failed channel, after this pause
_SHOWN = ("kind", "title", "problem", "stage", "dag_id", "task_id", "map_index", "run_id",
          "try_number", "batch_id", "error", "error_class", "exit", "log_url", "runbook",
          "dedup_key", "next_steps")


def subject(payload: dict[str, Any]) -> str:
    """One line: what, which problem/stage, which batch and try."""
    batch = f", batch {payload['batch_id']}" if payload.get("batch_id") else ""
    tries = f" (try {payload['try_number']})" if payload.get("try_number") else ""
    task = f"/{payload['task_id']}" if payload.get("task_id") else ""
    return (f"[Batchloop] {payload['title']}: {payload['problem']} {payload['stage']}{task}"
            f"{batch}{tries}")[:250]


def text(payload: dict[str, Any]) -> str:
    """The whole payload as plain text, most urgent first; nothing in it is left out."""
    p = payload
    where = p.get("task_id") or "(whole run)"
    if isinstance(p.get("map_index"), int) and p["map_index"] >= 0:
        where += f" [map index {p['map_index']}]"
    lines = [subject(p), "",
             f"What happened: {p.get('error') or 'unknown'}",
             *([f"Error class:   {p['error_class']}"] if p.get("error_class") else []),
             *([f"Exit:          {_exit_text(p['exit'])}"] if "exit" in p else []),
             f"Problem:       {p['problem']}   stage: {p['stage']}",
             f"Batch:         {p.get('batch_id') or 'unknown'}",
             f"DAG / task:    {p['dag_id']} / {where}   try: {p.get('try_number') or '-'}",
             f"Run:           {p['run_id']}",
             f"Log:           {p.get('log_url') or 'n/a'}",
             f"Runbook:       {p['runbook']}", "", "Next steps:"]
    lines += [f"  {i}. {step}" for i, step in enumerate(p.get("next_steps") or [], 1)]
    extra = {k: v for k, v in p.items() if k not in _SHOWN}
    if extra:
        lines += ["", "Details:"] + [f"  {k}: {json.dumps(v, default=str)}" for k, v in
                                     extra.items()]
    lines += ["", f"Kind: {p['kind']}   dedup key: {p['dedup_key']} (one alert per failure)"]
    return "\n".join(lines)


def mask(secret: str) -> None:
    """Register ``secret`` with Airflow's secrets masker (logs and ``redact``)."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # noqa: BLE001, S110 - outside an Airflow runtime there is no masker
        pass


def redact(value: Any) -> Any:
    """``value`` with every secret Airflow knows of (fetched connection passwords, masked URLs)
    replaced by ``***``; unchanged outside an Airflow runtime."""
    try:
        from airflow.sdk._shared.secrets_masker import redact as airflow_redact

        return airflow_redact(value)
    except Exception:  # noqa: BLE001 - no masker: nothing registered to hide
        return value


def _exit_text(info: dict[str, Any] | None) -> str:
    if not info:
        return "unknown (no exit line in the task log on this host)"
    how = f"signal {info['signal']}, " if info.get("signal") else ""
    return f"{how}exit code {info.get('exit_code')} (from the task log {info.get('source')})"


def _connection(conn_id: str) -> Any | None:
    """The Airflow Connection, or None when it is not defined anywhere."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def _post_json(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS):  # noqa: S310 - operator's URL
        pass


def _webhook(payload: dict[str, Any], _conn: Any) -> None:
    url = os.environ[WEBHOOK_ENV]
    mask(url)  # a webhook URL often carries its token: never in logs or journal
    _post_json(url, json.dumps(payload, default=str).encode())


def _webhook_connection(payload: dict[str, Any], _conn: Any) -> None:
    from airflow.providers.http.notifications.http import HttpNotifier

    HttpNotifier(http_conn_id=WEBHOOK_CONN, json=payload,
                 headers={"Content-Type": "application/json"},
                 extra_options={"timeout": TIMEOUT_SECONDS}).notify({})


def _slack(payload: dict[str, Any], _conn: Any) -> None:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    body = text(payload).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN, text=f"```{body}```",
                         timeout=TIMEOUT_SECONDS).notify({})


def _email(payload: dict[str, Any], conn: Any) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    extra = conn.extra_dejson if conn is not None else {}
    to = [a.strip() for a in (os.environ.get(EMAIL_TO_ENV) or str(extra.get("to") or ""))
          .split(",") if a.strip()]
    if conn is None:
        raise LookupError(f"{EMAIL_TO_ENV} is set but Connection {SMTP_CONN!r} is not defined")
    if not to:
        raise LookupError(f"no recipients: set {EMAIL_TO_ENV} or the extra 'to' of {SMTP_CONN!r}")
    sender = os.environ.get(EMAIL_FROM_ENV) or extra.get("from_email") or "batchloop@localhost"
    SmtpNotifier(to=to, from_email=sender, subject=subject(payload), smtp_conn_id=SMTP_CONN,
                 html_content=f"<pre>{html.escape(text(payload))}</pre>").notify({})


@dataclass(frozen=True)
class Channel:
    """A way to send an alert: ``send(payload, connection)``, on when its Connection is defined
    or its env var is set (the connection is then None if not defined)."""

    send: Callable[[dict[str, Any], Any], None]
    conn_id: str | None = None
    env: str | None = None


# name -> channel, tried in this order. A new channel: a send function and an entry here.
CHANNELS = {
    "webhook": Channel(_webhook, env=WEBHOOK_ENV),
    "webhook_connection": Channel(_webhook_connection, conn_id=WEBHOOK_CONN),
    "slack": Channel(_slack, conn_id=SLACK_CONN),
    "email": Channel(_email, conn_id=SMTP_CONN, env=EMAIL_TO_ENV),
}


def _unreadable(conn_id: str, exc: Exception) -> Callable[[dict[str, Any]], None]:
    def send(_payload: dict[str, Any]) -> None:
        raise LookupError(f"Connection {conn_id!r} could not be read: {type(exc).__name__}")

    return send


def configured() -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    """The channels this deployment defines, as (name, send) pairs. A connection that cannot be
    read counts as a channel that fails (recorded and logged), not as no channel."""
    chosen: list[tuple[str, Callable[[dict[str, Any]], None]]] = []
    for name, channel in CHANNELS.items():
        conn = None
        if channel.conn_id is not None:
            try:
                conn = _connection(channel.conn_id)
            except Exception as exc:  # noqa: BLE001 - e.g. a secrets backend down
                chosen.append((name, _unreadable(channel.conn_id, exc)))
                continue
        if conn is not None or (channel.env is not None and os.environ.get(channel.env)):
            chosen.append((name, lambda p, send=channel.send, conn=conn: send(p, conn)))
    return chosen


def send_all(payload: dict[str, Any]) -> dict[str, str]:
    """Send to every configured channel; {channel: "sent" | "failed: <reason>"}."""
    outcomes: dict[str, str] = {}
    try:
        channels = configured()
    except Exception as exc:  # noqa: BLE001 - a broken lookup must not cost the alert its log line
        log.error("BATCHLOOP ALERT channel lookup failed: %s: %s", type(exc).__name__, exc)
        return {"lookup": f"failed: {type(exc).__name__}: {exc}"}
    for name, send in channels:
        outcomes[name] = _send(name, send, payload)
    return outcomes


def _send(name: str, send: Callable[[dict[str, Any]], None], payload: dict[str, Any]) -> str:
    """One channel, tried twice: a dropped connection or a busy relay should not cost the
    on-call engineer the alert (an SMTP session cut mid-DATA was seen under heavy load)."""
    try:
        send(payload)
        return "sent"
    except Exception as exc:  # noqa: BLE001 - one channel down must not stop the others
        first = _reason(exc)
    log.warning("BATCHLOOP ALERT channel=%s dedup_key=%s %s; trying once more", name,
                payload.get("dedup_key"), first)
    time.sleep(RETRY_DELAY_SECONDS)
    try:
        send(payload)
        return f"sent (2nd try; 1st {first})"
    except Exception as exc:  # noqa: BLE001
        second = _reason(exc)
    log.error("BATCHLOOP ALERT DELIVERY FAILED channel=%s dedup_key=%s: %s (runbook %s)",
              name, payload.get("dedup_key"), second, runbook_link(DELIVERY_ANCHOR))
    return f"{second} (2 tries)"


def _reason(exc: Exception) -> str:
    return str(redact(f"failed: {type(exc).__name__}: {exc}"))[:400]
