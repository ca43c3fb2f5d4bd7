"""The one HTML toolkit of Batchloop's pages: run cards, the monitoring page, drift reports and the
plugin's view in the Airflow UI (``batchloop_airflow.ui``) are all written with it.

- text: ``escape`` (any value), ``esc`` (a dash for nothing), ``as_text``/``fmt`` (values as
  readable text), ``Html`` (text already safe), ``finite`` (a number or None);
- links: ``link``, ``report_href`` (a report file as served by the view), ``links`` and
  ``nav_html`` (a served page's way back to the view and to the Airflow run that wrote it);
- tables: ``value_table`` (values escaped here, rows marked by class) and ``html_table`` (cells
  already HTML, the newest rows, sortable in the view); ``card``;
- the page: ``document`` (the shell), ``REPORT_CSS`` (the written reports' plain style) and the
  Airflow UI's light/dark palette (``LIGHT``/``DARK``);
- plots: ``figures`` (matplotlib figures as inline SVG with stable bytes), ``message``,
  ``tex_safe``;
- files: ``jsonable`` (strict JSON values) and ``write_atomic``.

Stdlib only at import: drift reports render without numpy, and matplotlib is imported only when a
figure is drawn.
"""

from __future__ import annotations

import html
import io
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

DASH = "—"

# --- text ----------------------------------------------------------------------------------------


def escape(value: Any) -> str:
    """``value`` as escaped HTML text, quotes included (``None`` reads "None")."""
    return html.escape(str(value), quote=True)


def esc(value: Any) -> str:
    """``value`` as escaped HTML text (None and the empty string as an em dash)."""
    return DASH if value is None or value == "" else html.escape(str(value))


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, NaN, inf, text, booleans)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


def as_text(value: Any) -> str:
    """One value as plain text: NaN as "NaN", None as a dash, floats to 6 significant digits."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        x = float(value)
        return "NaN" if math.isnan(x) else f"{x:,.0f}" if abs(x) >= 1e6 else f"{x:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(as_text(v) for v in value)
    return str(value)


class Html(str):
    """Text that is already safe HTML (built from escaped parts): ``fmt`` passes it through."""


def fmt(value: Any) -> str:
    """One value as escaped HTML text (see ``as_text``); an ``Html`` value as it is."""
    return value if isinstance(value, Html) else html.escape(as_text(value))


# --- links ---------------------------------------------------------------------------------------


def link(href: str | None, text: Any, new_tab: bool = False) -> str:
    """An ``<a>`` (escaped href and text), or just the text when there is no href."""
    if not href:
        return esc(text)
    target = ' target="_blank" rel="noopener"' if new_tab else ""
    return f'<a href="{html.escape(href)}"{target}>{esc(text)}</a>'


def report_href(uri: str | None, home: Path, prefix: str) -> str | None:
    """URL (``prefix`` + path below ``<home>/reports``) of a report file, or None when ``uri``
    is not a file under the reports folder (such a file is never served)."""
    if not uri:
        return None
    root = (home / "reports").resolve()
    path = Path(uri).resolve()
    if not path.is_relative_to(root) or path == root:
        return None
    return prefix + quote(os.path.relpath(path, root), safe="/=")


# A report is <home>/reports/problem=<p>/batch=<b>/drift_v<n>.html, served by the Batchloop view
# at <base>/batchloop/reports/...: three levels up is the view, four the Airflow UI (links()).
def links(problem: str, environ: dict[str, str] | None = None,
          depth: int = 3) -> dict[str, str | None]:
    """Relative links from a served page to the problem's view and, when the page was written
    inside an Airflow task of this problem (``AIRFLOW_CTX_*``), to that DAG run. ``depth``: the
    folders between ``<home>/reports`` and the page (3 for a drift report or a run card under
    ``problem=<p>/<batch or evaluation>/``, 2 for the monitoring page)."""
    env = os.environ if environ is None else environ
    dag, run = env.get("AIRFLOW_CTX_DAG_ID", ""), env.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    mine = dag.startswith(f"{problem}__") and run
    view, airflow = "../" * depth, "../" * (depth + 1)
    return {"view": f"{view}problems/{quote(problem, safe='')}",
            "airflow_run": (f"{airflow}dags/{quote(dag, safe='')}/runs/"
                            f"{quote(run, safe='')}") if mine else None,
            "dag_id": dag if mine else None, "run_id": run if mine else None}


def nav_html(problem: str, page_links: dict[str, Any] | None) -> str:
    """The ``<nav>`` of a served page: back to the view, and to the Airflow run that wrote it."""
    given = page_links or {}
    out = []
    if given.get("view"):
        out.append(f"<a href='{escape(given['view'])}'>← {escape(problem)} in the Batchloop "
                   "view</a>")
    if given.get("airflow_run"):
        out.append(f"<a href='{escape(given['airflow_run'])}'>Airflow run "
                   f"{escape(given['run_id'])}</a>")
    return f"<nav>{' · '.join(out)}</nav>"


# --- tables and cards ----------------------------------------------------------------------------


def value_table(headers: list[str], rows: list[list[Any]],
                classes: list[str] | None = None) -> str:
    """A table of values (escaped here, see ``fmt``); ``classes`` (one per row) marks rows such
    as failing slices."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join((f'<tr class="{c}">' if c else "<tr>")
                   + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
                   for row, c in zip(rows, classes or [""] * len(rows), strict=True))
    return f"<table><tr>{head}</tr>{body}</table>"


def html_table(headers: list[str], rows: list[list[str]], empty: str,
               max_rows: int = 50) -> str:
    """A sortable table of pre-escaped cells (the first ``max_rows`` rows, the rest counted), or
    ``empty`` as a paragraph."""
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'
    more = (f'<p class="muted">{len(rows) - max_rows} older rows not shown.</p>'
            if len(rows) > max_rows else "")
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[:max_rows])
    return (f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            f"</table>{more}")


def card(inner: str) -> str:
    """A card of the view (``.card``: a bordered tile) around pre-escaped ``inner`` HTML."""
    return f'<div class="card">{inner}</div>'


# --- the page ------------------------------------------------------------------------------------

# The Airflow UI's look (Chakra's grays, blue accents): the colours every page of the view and every
# drift report share; each adds its own (LIGHT + ";--warn:..."), dark after its own card colour.
LIGHT = ("--fg:#18181b;--bg:#ffffff;--muted:#71717a;--border:#e4e4e7;--head:#f4f4f5;"
         "--link:#0369a1;--card:#fafafa;--ok:#15803d")
DARK = ("--fg:#e4e4e7;--bg:#09090b;--muted:#a1a1aa;--border:#3f3f46;--head:#18181b;"
        "--link:#7dd3fc")
# Run cards and the monitoring page: plain, printable, light only.
REPORT_CSS = """body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}
.outcome{padding:1em;border-radius:6px;margin:1em 0}.outcome h2{margin:0 0 .4em 0}
.promote{background:#e3f4e3;border:2px solid #2e7d32}.keep{background:#fff6dc;border:2px solid
#b08900}.reject,.other{background:#fde4e4;border:2px solid #c62828}
table{border-collapse:collapse;margin:.5em 0 1.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}tr.fail td{background:#fde4e4}figure{margin:1em 0}"""


def document(title: str, body: str, css: str, head: str = "") -> str:
    """A complete HTML page: ``title`` (escaped here), inline ``css``, ``head`` (pre-escaped
    elements after the style, such as a script) and the pre-escaped ``body``."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{escape(title)}</title><style>{css}</style>{head}</head><body>{body}"
            "</body></html>\n")


# --- plots ---------------------------------------------------------------------------------------


def tex_safe(text: Any) -> str:
    """Text for a matplotlib label: ``$`` escaped so data never triggers mathtext."""
    return str(text).replace("$", r"\$")


def svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (no prolog, no metadata: reproducible bytes)."""
    buf = io.StringIO()
    no_metadata = dict.fromkeys(("Creator", "Date", "Format", "Type"))  # no RDF block, no URLs
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata=no_metadata)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def message(ax: Any, text: str) -> None:
    """Replace a plot by a centred message (missing champion, degenerate data)."""
    ax.text(0.5, 0.5, tex_safe(text), ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    ax.figure.set_size_inches(6.4, 0.5)


Plot = Callable[[Any, Any], None]


def figures(specs: Sequence[tuple[Plot, tuple[float, float]]], data: Any) -> list[str]:
    """Each ``(plot, size)``: ``plot(ax, data)`` on a new figure of ``size`` inches, as inline
    SVG with text kept as text and stable IDs (matplotlib imported only here)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure registry to leak into

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "batchloop"}):
        out = []
        for plot, size in specs:
            fig = Figure(figsize=size)
            plot(fig.subplots(), data)
            out.append(svg(fig))
    return out


# --- files ---------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None and numpy arrays and scalars as Python ones (strict
    JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # without importing it
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; the page is for other readers
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
