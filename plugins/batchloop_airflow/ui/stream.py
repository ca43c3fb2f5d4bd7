"""The "Online ingestion" part of a problem page: the stream's health (``stream_health.health``:
lag, pending, dead letters, open events, the last sealed batch and when), or "unreachable" when
Redis does not answer (within ``stream_health.UI_TIMEOUT_SECONDS``), or a muted line when the
problem is not streamed. Its findings also go into "needs attention" (``ui.cockpit``).

Imported only inside request handlers.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from batchloop_airflow.ui.page import when
from mlcore.reports.html import esc, html_table

log = logging.getLogger(__name__)


def stream_data(spec: Any, settings: Any) -> dict[str, Any]:
    """``stream_health.health`` plus the spec's thresholds; on an unexpected error (the ledger
    unreadable) ``{"error": <class>}``: the rest of the page still helps."""
    from batchloop_airflow.stream_health import health

    try:
        out = health(spec, settings)
    except Exception as exc:  # noqa: BLE001 - never lose the page for its stream part
        log.warning("Batchloop view: stream health unreadable: %s", exc)
        return {"problem": spec.name, "error": type(exc).__name__, "findings": []}
    out["thresholds"] = {"lag": spec.stream.max_lag_events,
                         "dead_letters": spec.stream.max_dead_letters}
    return out


def iso(value: Any) -> str | None:
    """A ledger time as ISO text (datetimes from the store, or already text)."""
    if value is None:
        return None
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)


def _count(value: Any, limit: int | None = None) -> str:
    over = limit is not None and value is not None and int(value) > limit
    cls = "num bad" if over else "num"
    return f'<span class="{cls}">{"—" if value is None else int(value)}</span>'


def last_sealed(st: dict[str, Any]) -> str:
    """``<batch> (<state>, <n> events) <when>`` or a dash."""
    last = st.get("last_sealed")
    if not last:
        return "—"
    cls = "bad" if last.get("state") == "rejected" else "ok" if last.get("state") == (
        "published") else "warn"
    reason = f' <span class="muted">{esc(str(last["reason"])[:200])}</span>' if last.get(
        "reason") else ""
    return (f'{esc(last.get("batch_id"))} (<span class="{cls}">{esc(last.get("state"))}</span>, '
            f'{int(last.get("events") or 0)} events) sealed {when(iso(last.get("sealed_at")))}'
            + reason)


def render_stream(h: dict[str, Any] | None) -> str:
    """The section (``h`` from ``stream_data``); empty without data."""
    if not h:
        return ""
    head = "<h2>Online ingestion (stream)</h2>"
    if h.get("error"):
        return (f'{head}<p class="muted" id="stream">Stream health could not be read '
                f'({esc(h["error"])}); see the api-server log.</p>')
    st, limits = h["status"], h.get("thresholds") or {}
    if h.get("unreachable"):
        taken = (f' Events taken in so far: <span class="num">{int(st.get("events_taken") or 0)}'
                 f'</span>; last sealed batch: {last_sealed(st)}.' if h["streamed"] else "")
        return (f'{head}<p id="stream"><b class="bad">unreachable</b>: the stream engine at '
                f'{esc(h["url"])} did not answer ({esc(h["unreachable"])}).{taken}</p>')
    if not h["streamed"]:
        return (f'{head}<p class="muted" id="stream">Not streamed: no events for this problem '
                f"on {esc(h['url'])} (online ingestion: <code>mlcore stream serve --problem "
                f"{esc(h['problem'])}</code>).</p>")
    oldest = iso(st.get("oldest_open"))
    segments = ", ".join(f"{esc(k)} {int(v)}" for k, v in sorted(st["segments"].items())) or "—"
    row = [_count(st.get("lag"), limits.get("lag")), _count(st.get("pending")),
           _count(st.get("dead_letters"), limits.get("dead_letters")),
           _count(st.get("open_events")) + (f" since {when(oldest)}" if oldest else ""),
           _count(st.get("events_taken")), segments, last_sealed(st)]
    return (head + '<div id="stream">' + html_table(
        [f"Lag (max {limits.get('lag', '—')})", "Pending", "Dead letters (max "
         f"{limits.get('dead_letters', '—')})", "Open events (unsealed)", "Events taken",
         "Segments", "Last sealed batch"], [row], "")
        + f'<p class="muted">{esc(st.get("stream"))} on {esc(h["url"])}, read in '
          f'{h.get("seconds", 0):.2f} s</p></div>')
