"""Tell Airflow a batch was published: ``POST /api/v2/assets/events`` on the problem's
``curated`` asset with ``{"batch_id": ...}`` in ``extra``, as the ingest DAG's own event carries.

Credentials come from the environment (``MLCORE_AIRFLOW_USER`` / ``MLCORE_AIRFLOW_PASSWORD``);
without them ``GET /auth/token`` is tried (Airflow's simple auth manager with all-admins). A
failure raises ``NotifyFailed`` (no credential in its text); the caller retries later and the
backlog sweep nudges any batch whose event never came.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT = 10.0


class NotifyFailed(RuntimeError):
    """Airflow could not be told (unreachable, refused, no such asset)."""


def _call(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise NotifyFailed(f"{method} {urllib.parse.urlsplit(url).path}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NotifyFailed(f"{method} {urllib.parse.urlsplit(url).path}: {exc}") from None


def token(base: str) -> str:
    """An API token for ``base`` (the user and password from the environment, if set)."""
    user = os.environ.get("MLCORE_AIRFLOW_USER")
    password = os.environ.get("MLCORE_AIRFLOW_PASSWORD")
    if user and password:
        reply = _call("POST", f"{base}/auth/token", {"username": user, "password": password})
    else:
        reply = _call("GET", f"{base}/auth/token")
    return str(reply["access_token"])


def curated_event(base: str, problem: str, batch_id: str) -> int:
    """Record a ``curated`` asset event for ``batch_id``; returns the asset's ID."""
    base = base.rstrip("/")
    auth = token(base)
    uri = f"batchloop://{problem}/curated"
    found = _call("GET", f"{base}/api/v2/assets?" + urllib.parse.urlencode({"uri_pattern": uri}),
                  token=auth)
    ids = [a["id"] for a in found.get("assets", []) if a.get("uri") == uri]
    if not ids:
        raise NotifyFailed(f"Airflow has no asset {uri} (are the DAGs parsed?)")
    _call("POST", f"{base}/api/v2/assets/events",
          {"asset_id": ids[0], "extra": {"batch_id": batch_id}}, token=auth)
    return int(ids[0])
