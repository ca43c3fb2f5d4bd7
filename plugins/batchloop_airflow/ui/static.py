"""Static parts of the Batchloop view: its one script and the RUNBOOK page.

``VIEW_JS`` is served as ``/batchloop/static/view.js`` (CSP ``script-src 'self'``: no inline
script anywhere). It only enhances: every page works without it. It makes tables sortable (click
a header; numbers, versions and signed deltas sort as numbers) and copies the Airflow UI's color
mode when the view is framed there (same origin), following it when the user switches.
"""

from __future__ import annotations

import os
from pathlib import Path

VIEW_JS = r"""(function () {
  "use strict";
  var root = document.documentElement;
  function airflowMode() {
    try {
      var p = window.parent && window.parent !== window ? window.parent.document : null;
      if (!p) return null;
      var el = p.documentElement, cls = el.classList;
      if (cls.contains("dark") || el.style.colorScheme === "dark") return "dark";
      if (cls.contains("light") || el.style.colorScheme === "light") return "light";
    } catch (e) { /* not same origin: keep the system setting */ }
    return null;
  }
  function syncTheme() {
    var mode = airflowMode();
    if (mode) root.setAttribute("data-theme", mode); else root.removeAttribute("data-theme");
  }
  syncTheme();
  try {
    if (window.parent && window.parent !== window) {
      new MutationObserver(syncTheme).observe(window.parent.document.documentElement,
        {attributes: true, attributeFilter: ["class", "style", "data-theme"]});
    }
  } catch (e) { /* ignore */ }

  function key(cell) {
    if (!cell) return "";
    var raw = cell.getAttribute("data-sort");
    var text = raw !== null ? raw : cell.textContent.trim();
    var n = text.replace(/\u2212/g, "-").replace(/^[v#±+]/, "").replace(/[,%]/g, "");
    var m = n.match(/^-?\d+(\.\d+)?/);
    if (m && m[0].length === n.split(" ")[0].length) return parseFloat(m[0]);
    return text.toLowerCase();
  }
  function sortBy(table, index, th) {
    var body = table.tBodies[0];
    if (!body) return;
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index]), y = key(b.cells[index]);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (t) {
      if (!t.tHead) return;
      Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th, i) {
        th.setAttribute("data-sortable", "");
        th.title = "Sort by " + th.textContent;
        th.addEventListener("click", function () { sortBy(t, i, th); });
      });
    });
  });
})();
"""


def runbook_path() -> Path:
    """RUNBOOK.md: ``BATCHLOOP_RUNBOOK_PATH``, else the project's (next to ``plugins/``)."""
    explicit = os.environ.get("BATCHLOOP_RUNBOOK_PATH")
    return Path(explicit) if explicit else Path(__file__).resolve().parents[3] / "RUNBOOK.md"


def runbook_href(link: str | None, base: str) -> str | None:
    """Where an alert's ``runbook`` link points in the view: an http(s) URL as it is (a
    deployment's ``BATCHLOOP_RUNBOOK_URL``); ``RUNBOOK.md#x`` as the view's runbook page
    (``<base>runbook#x``)."""
    if not link:
        return None
    if link.startswith(("https://", "http://")):
        return link
    _, _, anchor = link.partition("#")
    return f"{base}runbook" + (f"#{anchor}" if anchor else "")


def render_runbook() -> str | None:
    """RUNBOOK.md as HTML (its ``<a id>`` anchors kept), or None when the file is missing.

    The runbook is the project's own, trusted text; the page still has no inline script.
    """
    from markdown_it import MarkdownIt

    from batchloop_airflow.ui.page import page

    path = runbook_path()
    if not path.is_file():
        return None
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(path.read_text())
    return page("Batchloop runbook", '<p><a href="./">Batchloop</a></p>' + body)
