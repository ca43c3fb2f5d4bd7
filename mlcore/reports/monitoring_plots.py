"""Monitoring plots: the monitoring page's six matplotlib drawings of ``monitoring_data.collect``'s
data over the problem's batches in event-time order (the performance timeline, the primary metric
on matured labels, drift share, rows and quarantine rate, label coverage, the decisions over time),
drawn as inline SVG by ``page_figures``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from mlcore.reports.html import figures, finite, message, tex_safe

MAX_TICKS = 25  # batch labels on an x axis
COLORS = {"champion": "#1f77b4", "challenger": "#ff7f0e", "contender": "#2ca02c",
          "holdout_champion": "#7f7f7f", "drift": "#c44e52", "share": "#4c72b0",
          "rows": "#4c72b0", "quarantine": "#c44e52", "coverage": "#55a868", "matured": "#333333",
          "promote": "#2e7d32", "keep": "#b08900", "reject": "#c62828", "other": "#7f7f7f",
          "retrain": "#1f77b4", "rollback": "#8e24aa", "alias": "#555555",
          "estimate": "#9467bd"}
CONFIDENCE_LABEL = "95%"  # mlcore.estimation.CONFIDENCE (not imported: it is a heavy module)


def _nan(value: Any) -> float:
    return v if (v := finite(value)) is not None else math.nan


def _batch_axis(ax: Any, ids: list[str]) -> None:
    """Batch IDs as x tick labels, thinned to at most ``MAX_TICKS`` and cut to 16 characters."""
    step = max(1, math.ceil(len(ids) / MAX_TICKS))
    ticks = list(range(0, len(ids), step))
    labels = [tex_safe(ids[i] if len(ids[i]) <= 16 else ids[i][:15] + "\u2026") for i in ticks]
    ax.set_xticks(ticks, labels=labels, rotation=45, ha="right", fontsize="small")
    ax.set_xlim(-0.6, len(ids) - 0.4)
    ax.set_xlabel("batch (event-time order)")


def _legend(ax: Any) -> None:
    ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))


def _event_positions(data: dict[str, Any], ids: list[str]) -> list[tuple[float, str, int]]:
    """(x, kind, version) of each retrain / champion move: just after the newest batch its
    version was trained or judged on (events of versions with no batch shown are left out)."""
    position = {b: i for i, b in enumerate(ids)}
    out = []
    for event in data.get("model_events") or []:
        xs = [position[b] for b in event["batches"] if b in position]
        if xs:
            out.append((max(xs) + (0.3 if event["kind"] == "retrain" else 0.45), event["kind"],
                        event["version"]))
    return out


def plot_estimates(ax: Any, data: dict[str, Any]) -> None:
    """One timeline: the champion's estimated metric per batch (before labels, with its CI as a
    band and whiskers), the realized metric on matured labels, dataset drift, retrains and
    promotions."""
    batches, metric = data["batches"], data["metric"]["name"]
    ids, xs = [b["batch_id"] for b in batches], list(range(len(batches)))
    est = [b["estimate"]["champion"] or {} for b in batches]
    est = [e if e.get("metric") == metric else {} for e in est]
    value = [_nan(e.get("estimate")) for e in est]
    low, high = [_nan(e.get("ci_low")) for e in est], [_nan(e.get("ci_high")) for e in est]
    real = [_nan(r["value"]) if (r := b["performance"]["champion"]) and r["metric"] == metric
            else math.nan for b in batches]
    if all(math.isnan(v) for v in value + real):
        return message(ax, f"no estimated or realized {metric} yet")
    ax.fill_between(xs, low, high, color=COLORS["estimate"], alpha=0.18, linewidth=0,
                    label=f"{CONFIDENCE_LABEL} interval")
    ax.errorbar(xs, value, yerr=[[v - lo for v, lo in zip(value, low, strict=True)],
                                 [hi - v for v, hi in zip(value, high, strict=True)]],
                marker="o", markersize=4, capsize=3, color=COLORS["estimate"],
                label="champion: estimated (before labels)")
    ax.plot(xs, real, linestyle="none", marker="s", markersize=6, color=COLORS["champion"],
            label="champion: realized (matured labels)")
    for i, b in enumerate(batches):
        if (b["drift"] or {}).get("dataset_drift"):
            ax.axvspan(i - 0.45, i + 0.45, color=COLORS["drift"], alpha=0.12, linewidth=0,
                       label="dataset drift" if "dataset drift" not in _labels(ax) else None)
    styles = {"retrain": (":", COLORS["retrain"], "retrain"),
              "promotion": ("--", COLORS["promote"], "promoted champion"),
              "rollback": ("--", COLORS["rollback"], "rollback")}
    for x, kind, version in _event_positions(data, ids):
        style, color, label = styles[kind]
        ax.axvline(x, linestyle=style, color=color, linewidth=1.2,
                   label=label if label not in _labels(ax) else None)
        top = kind != "retrain"  # retrains labelled at the foot, champion moves at the top
        ax.text(x, 1.0 if top else 0.01, f"v{version}", transform=ax.get_xaxis_transform(),
                color=color, fontsize="x-small", ha="center", va="bottom")
    _batch_axis(ax, ids)
    ax.set_ylabel(tex_safe(f"{metric} ({data['metric']['direction']})"))
    _legend(ax)


def _labels(ax: Any) -> list[str]:
    return list(ax.get_legend_handles_labels()[1])


def plot_metric(ax: Any, data: dict[str, Any]) -> None:
    """Matured-label metric per batch for champion and challenger, and evaluation holdouts."""
    batches, metric = data["batches"], data["metric"]["name"]
    ids = [b["batch_id"] for b in batches]
    drawn = 0
    for role in ("champion", "challenger"):
        reports = [b["performance"][role] for b in batches]
        values = [_nan(r["value"]) if r and r["metric"] == metric else math.nan
                  for r in reports]
        if any(not math.isnan(v) for v in values):
            ax.plot(range(len(ids)), values, marker="o", markersize=4, color=COLORS[role],
                    label=f"{role} (matured labels)")
            drawn += 1
    position = {b: i for i, b in enumerate(ids)}
    for key, marker, color, label in (
            ("contender_metric", "^", COLORS["contender"], "evaluation: contender (holdout)"),
            ("champion_metric", "v", COLORS["holdout_champion"],
             "evaluation: champion (holdout)")):
        points = [(max(xs), d[key]) for d in data["decisions"]
                  if d["source"] == "evaluation" and d["metric"] == metric
                  and d[key] is not None
                  and (xs := [position[b] for b in d["holdout_batch_ids"] if b in position])]
        if points:
            ax.plot(*zip(*points, strict=True), linestyle="none", marker=marker, markersize=8,
                    color=color, label=label)
            drawn += 1
    if not drawn:
        return message(ax, f"no {metric} yet: no performance reports or evaluations")
    _batch_axis(ax, ids)
    ax.set_ylabel(tex_safe(f"{metric} ({data['metric']['direction']})"))
    _legend(ax)


def plot_drift(ax: Any, data: dict[str, Any]) -> None:
    """Drift share per batch, the dataset-drift threshold, flagged batches in red."""
    batches = data["batches"]
    shares = [_nan((b["drift"] or {}).get("drift_share")) for b in batches]
    if all(math.isnan(v) for v in shares):
        return message(ax, "no drift reports yet")
    xs = range(len(batches))
    ax.plot(xs, shares, marker="o", markersize=4, color=COLORS["share"], label="drift share")
    flagged = [(i, shares[i]) for i, b in enumerate(batches)
               if (b["drift"] or {}).get("dataset_drift")]
    if flagged:
        ax.plot(*zip(*flagged, strict=True), linestyle="none", marker="o", markersize=9,
                markerfacecolor="none", markeredgewidth=2, color=COLORS["drift"],
                label="dataset drift flagged")
    if (threshold := finite(data["drift_threshold"])) is not None:
        ax.axhline(threshold, color=COLORS["drift"], linestyle="--", linewidth=1,
                   label=f"threshold ({threshold:g})")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of features drifted")
    _batch_axis(ax, [b["batch_id"] for b in batches])
    _legend(ax)


def plot_rows(ax: Any, data: dict[str, Any]) -> None:
    """Published and quarantined rows per batch (stacked bars) and the quarantine rate."""
    batches = data["batches"]
    if all(b["rows"] is None for b in batches):
        return message(ax, "no batch manifests yet")
    xs = range(len(batches))
    published = [b["published_rows"] or 0 for b in batches]
    ax.bar(xs, published, color=COLORS["rows"], label="published rows")
    ax.bar(xs, [b["quarantined"] or 0 for b in batches], bottom=published,
           color=COLORS["quarantine"], label="quarantined rows")
    ax.set_ylabel("rows read")
    _batch_axis(ax, [b["batch_id"] for b in batches])
    rate = ax.twinx()
    rate.plot(xs, [100 * _nan(b["quarantine_rate"]) for b in batches], marker="o", markersize=4,
              color="black", label="quarantine rate (%)")
    rate.set_ylim(bottom=0)
    rate.set_ylabel("quarantine rate (%)")
    handles = ax.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize="small",
              bbox_to_anchor=(1.12, 1))


def plot_coverage(ax: Any, data: dict[str, Any]) -> None:
    """Label coverage (labelled / predicted) per batch, with the matured share as points."""
    batches = data["batches"]
    perf = [b["performance"]["champion"] or b["performance"]["challenger"] for b in batches]
    if all(p is None for p in perf):
        return message(ax, "no performance reports yet: no label coverage")
    xs = range(len(batches))
    ax.bar(xs, [_nan(b["label_coverage"]) for b in batches], color=COLORS["coverage"],
           label="labelled / predicted")
    ax.plot(xs, [_nan(p and p["matured_share"]) for p in perf], linestyle="none", marker="_",
            markersize=12, markeredgewidth=2, color=COLORS["matured"],
            label="matured / predicted")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of predicted rows")
    _batch_axis(ax, [b["batch_id"] for b in batches])
    _legend(ax)


def _lane_order(lane: str) -> tuple[int, str]:
    """Evaluation outcomes, then retrain requests, then alias moves, rollbacks last."""
    prefixes = ("evaluation: promote", "evaluation: keep", "evaluation: reject", "evaluation",
                "retrain request")
    if lane == "rollback":
        return len(prefixes) + 1, lane
    return next((i for i, p in enumerate(prefixes) if lane.startswith(p)), len(prefixes)), lane


def plot_timeline(ax: Any, data: dict[str, Any]) -> None:
    """One lane per kind of decision (retrain requests by trigger), markers at their times."""
    from matplotlib import dates

    points = []
    for d in data["decisions"]:
        if d["time"] is None:
            continue
        lanes = ([f"retrain request: {t}" for t in d["triggers"]]
                 if d["source"] == "retrain_request" else [d["lane"]])
        points += [(lane, dates.date2num(datetime.fromisoformat(d["time"])), d["kind"])
                   for lane in lanes]
    if not points:
        return message(ax, "no decisions yet")
    lanes = sorted({p[0] for p in points}, key=_lane_order)
    row = {lane: i for i, lane in enumerate(lanes)}
    for kind in dict.fromkeys(p[2] for p in points):
        mine = [(x, row[lane]) for lane, x, k in points if k == kind]
        ax.plot(*zip(*mine, strict=True), linestyle="none", marker="D", markersize=7,
                color=COLORS.get(kind, COLORS["other"]))
    ax.set_yticks(range(len(lanes)), labels=[tex_safe(lane) for lane in lanes],
                  fontsize="small")
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.invert_yaxis()
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    pad = max((high - low) * 0.05, 1 / 1440)  # at least a minute either side
    ax.set_xlim(low - pad, high + pad)
    locator = dates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("decision time (UTC)")
    ax.grid(axis="y", color="#eeeeee")


def page_figures(data: dict[str, Any]) -> list[str]:
    """The six plots as inline SVG strings."""
    lanes = {d["lane"] for d in data["decisions"]} | {
        f"retrain request: {t}" for d in data["decisions"] for t in d.get("triggers") or []}
    return figures([(plot_estimates, (7.5, 3.2)), (plot_metric, (7.5, 3.0)),
                    (plot_drift, (7.5, 2.8)),
                    (plot_rows, (7.5, 2.8)), (plot_coverage, (7.5, 2.6)),
                    (plot_timeline, (7.5, 0.35 * len(lanes) + 1.2))], data)

