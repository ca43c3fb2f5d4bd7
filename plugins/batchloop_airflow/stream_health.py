"""Online ingestion's health, for the Batchloop view and the backlog sweep's stream alerts.

``health`` reads ``mlcore.streaming.status`` with short Redis timeouts and turns it into named
findings (what the sweep alerts on and the view lists under "needs attention"):

* ``lag``: events not yet read by the service over ``stream.max_lag_events``;
* ``dead_letters``: dead letters over ``stream.max_dead_letters``;
* ``rejected``: sealed segments rejected by validation;
* ``unreachable``: the stream engine (Redis at ``MLCORE_STREAM_URL``) does not answer.

Only a problem that is streamed has findings: its events stream has entries, a consumer group
position or dead letters, or the ledger has taken events in or sealed segments. A problem nobody
streams never alerts, even when Redis is down. A Redis that does not answer is a finding, never
an exception: one ping without retries first, so the view's page stays fast.

Light at import (stdlib only): the DAG file imports the sweep module at parse time.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

UI_TIMEOUT_SECONDS = 1.0  # the view: a page must not hang on a Redis that does not answer
SWEEP_TIMEOUT_SECONDS = 10.0
# findings that last (alerted once per episode); "rejected" is keyed by the rejected count
EPISODIC = ("lag", "dead_letters", "unreachable")


def with_timeouts(url: str, seconds: float) -> str:
    """``url`` with redis-py's socket and connect timeouts set to ``seconds`` (URL query
    options win over the client's own arguments)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(socket_timeout=f"{seconds:g}", socket_connect_timeout=f"{seconds:g}")
    return urlunsplit(parts._replace(query=urlencode(query)))


def shown_url(url: str) -> str:
    """The URL without its password or query (for texts shown and sent)."""
    from mlcore.errors import redact

    return redact(url.split("?", 1)[0])


def ping(url: str, seconds: float) -> str | None:
    """None when Redis at ``url`` answers within ``seconds`` (one try, no retries), else why
    not (``<ErrorClass>: <message>``)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(with_timeouts(url, seconds), retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
        return None
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        client.close()


def streamed(st: dict[str, Any]) -> bool:
    """Whether anything was ever streamed for the problem (``st``: status or ledger summary)."""
    return bool(st.get("length") or st.get("dead_letters") or st.get("events_taken")
                or st.get("segments") or st.get("last_delivered", "0-0") != "0-0")


def code_of(text: str) -> str:
    """The finding an attention text of ``mlcore.streaming.status`` names."""
    if text.startswith("lag "):
        return "lag"
    if "dead letters" in text:
        return "dead_letters"
    if "rejected" in text:
        return "rejected"
    return "attention-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def health(spec: Any, settings: Any, seconds: float = UI_TIMEOUT_SECONDS) -> dict[str, Any]:
    """``{problem, streamed, unreachable, status, findings, seconds}``: ``status`` is
    ``mlcore.streaming.status`` (the ledger's part only when Redis does not answer),
    ``unreachable`` why Redis did not answer (else None), ``findings`` ``[{code, text}]``."""
    import redis

    from mlcore.stream.ledger import summary
    from mlcore.streaming import status

    started = time.monotonic()
    url = with_timeouts(settings.stream_url, seconds)
    error = ping(url, seconds)
    st: dict[str, Any] | None = None
    if error is None:
        try:
            st = status(spec, settings.model_copy(update={"stream_url": url}))
        except (redis.RedisError, OSError) as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
    if st is None:
        st = {"problem": spec.name, **summary(spec.name, settings.db_url), "attention": []}
    out = {"problem": spec.name, "streamed": streamed(st), "unreachable": error, "status": st,
           "url": shown_url(settings.stream_url), "findings": []}
    if out["streamed"] and error is not None:
        out["findings"] = [{"code": "unreachable", "text": (
            f"stream engine unreachable at {out['url']} ({error}): is Redis up? the service "
            "takes no events in while it is down")}]
    elif out["streamed"]:
        out["findings"] = [{"code": code_of(t), "text": t} for t in st["attention"]]
    out["seconds"] = round(time.monotonic() - started, 3)
    return out
