"""Drift report charts and numbers: readable numbers (``num``, ``signed``, ``pct``) and the inline
SVG charts of a drift report (reference against current per bin or category, the statistic over
the last batches), with hover titles; stdlib only.
"""

from __future__ import annotations

import math
from typing import Any

from mlcore.reports.html import escape

MINUS = "\u2212"


def num(value: Any, digits: int = 3) -> str:
    """``digits`` significant digits, fixed-point (no exponent), thousands separated:
    0.0123, 1.23, 12.3, 1,235, 0.00008; NaN and None as a dash."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(value)
    if value == 0:
        return "0"
    places = min(5, max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    text = f"{value:,.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text.strip("-0.,") == "" else text.replace("-", MINUS)


def signed(value: float, digits: int = 3, unit: str = "") -> str:
    """A delta with its sign: +1.23, −0.0456, ±0."""
    text = num(value, digits)
    if text == "0":
        return f"±0{unit}"
    return (text if text.startswith(MINUS) else f"+{text}") + unit


def pct(share: float) -> str:
    """A share as a percentage with 3 significant digits at most: 12.3%, 0.5%, 100%."""
    return f"{num(share * 100, 3)}%"


W, H, LEFT, TOP, BOTTOM = 560, 220, 46, 12, 56  # distribution charts (viewBox units)


def _bar_labels(plot: dict[str, Any]) -> list[str]:
    if plot["kind"] == "categorical":
        return [str(c) for c in plot["categories"]]
    e = plot["edges"]
    if plot.get("integral"):  # whole numbers: [40, 45) reads 40–44
        return [num(a) if b - a == 1 else f"{num(a)}–{num(b - 1)}"
                for a, b in zip(e[:-1], e[1:], strict=False)]
    return [f"{num(a)} to {num(b)}" for a, b in zip(e[:-1], e[1:], strict=False)]


def _axis_max(top: float) -> float:
    """A round upper bound for a share axis."""
    for bound in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.8, 1.0):
        if top <= bound:
            return bound
    return 1.0


def distribution_svg(label: str, plot: dict[str, Any]) -> str:
    """Reference and current shares side by side per bin or category, each group with a
    hover title giving both shares and row counts."""
    ref, cur = plot["reference"], plot["current"]
    if not ref:
        return "<p class=muted>No finite values to plot.</p>"
    totals = [max(1, sum(ref)), max(1, sum(cur))]
    shares = [[n / totals[0] for n in ref], [n / totals[1] for n in cur]]
    top = _axis_max(max(max(s) for s in shares))
    names, n = _bar_labels(plot), len(ref)
    pw, ph = W - LEFT - 8, H - TOP - BOTTOM
    gw = pw / n
    y = lambda v: TOP + ph * (1 - v / top)  # noqa: E731 - local scale
    parts = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}: reference and '
             f'current distribution">']
    for tick in (0, top / 2, top):
        parts.append(f'<line class=gridline x1={LEFT} x2={W - 8} y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}"/><text x={LEFT - 4} y="{y(tick) + 4:.1f}" '
                     f'text-anchor=end>{pct(tick)}</text>')
    every = max(1, math.ceil(n / 12))
    for i in range(n):
        x = LEFT + i * gw
        for side, cls in ((0, "ref"), (1, "cur")):
            h = ph * shares[side][i] / top
            parts.append(f'<rect class={cls} x="{x + gw * (0.1 + 0.4 * side):.1f}" '
                         f'y="{TOP + ph - h:.1f}" width="{gw * 0.38:.1f}" height="{h:.1f}"/>')
        tip = (f"{label}: {names[i]}\nreference {pct(shares[0][i])} ({num(ref[i])} rows)\n"
               f"current {pct(shares[1][i])} ({num(cur[i])} rows)\n"
               f"change {signed(100 * (shares[1][i] - shares[0][i]))} pp")
        parts.append(f'<rect class=hit x="{x:.1f}" y={TOP} width="{gw:.1f}" height={ph}>'
                     f"<title>{escape(tip)}</title></rect>")
        if i % every == 0:
            short = names[i] if len(names[i]) <= 12 else names[i][:11] + "…"
            anchor = "end" if n > 8 else "middle"
            rot = f' transform="rotate(-35 {x + gw / 2:.1f} {H - BOTTOM + 14})"' if n > 8 else ""
            parts.append(f'<text x="{x + gw / 2:.1f}" y={H - BOTTOM + 14} '
                         f'text-anchor={anchor}{rot}>{escape(short)}</text>')
    return "".join(parts) + "</svg>"


def spark_svg(points: list[tuple[str, float, bool]], threshold: float, width: int = 150,
              height: int = 30) -> str:
    """The statistic over the last batches (the newest last), the threshold dashed; each
    point with its batch and score on hover."""
    if not points:
        return ""
    top = max(threshold, *(p[1] for p in points)) * 1.15 or 1.0
    step = (width - 8) / max(1, len(points) - 1)
    xy = [(4 + i * step if len(points) > 1 else width / 2,
           height - 3 - (height - 6) * p[1] / top) for i, p in enumerate(points)]
    ty = height - 3 - (height - 6) * threshold / top
    out = [f'<svg class=spark viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="score over the last {len(points)} batches">'
           f'<line class=thr x1=0 x2={width} y1="{ty:.1f}" y2="{ty:.1f}"/>']
    if len(xy) > 1:
        out.append('<polyline class=line points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
                   + '"/>')
    for (x, y), (batch, score, drift) in zip(xy, points, strict=True):
        r = 3.2 if (x, y) == xy[-1] else 2.2
        out.append(f'<circle class="pt{" drift" if drift else ""}" cx="{x:.1f}" cy="{y:.1f}" '
                   f'r={r}><title>batch {escape(batch)}: {num(score)} '
                   f'({"drift" if drift else "ok"}; threshold {num(threshold)})</title></circle>')
    return "".join(out) + "</svg>"

