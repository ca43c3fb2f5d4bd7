"""Run card: the one self-contained HTML page (plus its JSON) a reviewer reads before a promotion.

The page shows what fits the target kind, for the contender and the champion: ``binary`` ROC and
precision-recall curves; ``multiclass`` a confusion matrix and per-class metrics; ``regression``
predicted against actual and the residual histogram. Then the primary-metric delta with its CI,
per-slice deltas against their allowed drop, and tables of every number the decision used. Plots
are inline SVG; the page needs no JavaScript and no network, so it renders offline. Deltas are
oriented so that positive means "contender is better"; a slice fails when its delta falls below
``-bound``. A card without ``target`` (written before target kinds) is binary, and its models may
carry ``roc`` instead of ``curves``.

The page helpers (text and escaping, tables, SVG figures, atomic writes, CSS) are shared with
``mlcore.reports.monitoring_page``.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

MAX_BYTES = 1_000_000
MAX_CLASSES = 30  # confusion matrix and per-class rows: the most frequent classes, rest "other"
MAX_SCATTER = 500  # regression: rows in the predicted-against-actual sample
RESIDUAL_BINS = 30
ROLES = ("contender", "champion")
SLICE_KEYS = ("column", "value", "rows", "contender", "champion", "delta", "bound", "ok", "note")
THROUGHPUT_KEYS = ("contender", "champion", "required", "required_from", "ok", "note", "ratio",
                   "max_drop", "ok_relative", "relative_note", "max_spread")
COLORS = {"contender": "#1f77b4", "champion": "#7f7f7f", "ok": "#4c72b0", "fail": "#c44e52",
          "skip": "#bbbbbb"}
CSS = """body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}
.outcome{padding:1em;border-radius:6px;margin:1em 0}.outcome h2{margin:0 0 .4em 0}
.promote{background:#e3f4e3;border:2px solid #2e7d32}.keep{background:#fff6dc;border:2px solid
#b08900}.reject,.other{background:#fde4e4;border:2px solid #c62828}
table{border-collapse:collapse;margin:.5em 0 1.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}tr.fail td{background:#fde4e4}figure{margin:1em 0}"""


@dataclass(frozen=True)
class RunCard:
    """Where a run card was written and how big it is (HTML + JSON bytes)."""

    html_path: Path
    json_path: Path
    bytes: int


def _rounded(values: np.ndarray, digits: int = 5) -> list[float]:
    """Values as Python floats rounded to ``digits`` decimals (probabilities, rates)."""
    return [round(float(v), digits) for v in values]


def _significant(values: np.ndarray, digits: int = 6) -> list[float]:
    """Values as Python floats to ``digits`` significant digits (regression values, any scale)."""
    return [float(f"{float(v):.{digits}g}") for v in values]


def _spread(size: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices evenly spread over ``range(size)``, both ends kept."""
    return np.unique(np.linspace(0, size - 1, min(max_points, size)).round().astype(int))


def _usable(y: np.ndarray, p: np.ndarray) -> bool:
    """Whether labels and outputs are non-empty, finite and of matching length."""
    return (y.size > 0 and p.shape[:1] == y.shape and bool(np.all(np.isfinite(y)))
            and bool(np.all(np.isfinite(p))))


def roc_points(y: np.ndarray, p: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve of scores ``p`` against labels ``y``, downsampled for plotting.

    Args:
        y: Binary labels.
        p: Scores (higher means more likely positive).
        max_points: Most points returned (at least 2); the ends (0,0) and (1,1) are always kept.

    Returns:
        ``{"fpr": [...], "tpr": [...]}`` rounded to 5 decimals; both empty if ``y`` or ``p`` has
        a non-finite value or ``y`` has a single class.
    """
    from sklearn.metrics import roc_curve

    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 1 or not _usable(y, p) or np.unique(y).size < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, p)
    keep = _spread(fpr.size, max_points)
    return {"fpr": _rounded(fpr[keep]), "tpr": _rounded(tpr[keep])}


def pr_points(y: np.ndarray, p: np.ndarray, max_points: int = 200) -> dict[str, Any]:
    """Precision-recall curve of scores ``p`` against binary labels ``y``, downsampled.

    Returns:
        ``{"recall": [...], "precision": [...], "prevalence": float}``: points in order of
        increasing recall from (0, 1) (sklearn's convention) to the lowest threshold, 5
        decimals; ``prevalence`` (the share of positives) is the no-skill line. Empty lists and
        a None prevalence on non-finite values or a single class.
    """
    from sklearn.metrics import precision_recall_curve

    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 1 or not _usable(y, p) or np.unique(y).size < 2:
        return {"recall": [], "precision": [], "prevalence": None}
    precision, recall, _ = precision_recall_curve(y, p)
    precision, recall = precision[::-1], recall[::-1]
    keep = _spread(recall.size, max_points)
    return {"recall": _rounded(recall[keep]), "precision": _rounded(precision[keep]),
            "prevalence": round(float(np.mean(y == 1)), 5)}


def _shown_classes(support: np.ndarray) -> np.ndarray:
    """Class indices the card lists one by one: all, or the ``MAX_CLASSES - 1`` most frequent
    (ties by class order), in class order."""
    if support.size <= MAX_CLASSES:
        return np.arange(support.size)
    return np.sort(np.argsort(-support, kind="stable")[:MAX_CLASSES - 1])


def _class_row(name: str, tp: float, support: float, predicted: float,
               auc: float) -> dict[str, Any]:
    """Per-class precision, recall, F1, support and one-vs-rest ROC AUC (None if undefined)."""
    def ratio(num_: float, den: float) -> float | None:
        return round(float(num_ / den), 5) if den > 0 else None
    return {"class": name, "precision": ratio(tp, predicted), "recall": ratio(tp, support),
            "f1": ratio(2 * tp, support + predicted), "support": int(support),
            "roc_auc": round(float(auc), 5) if math.isfinite(auc) else None}


def _multiclass_curves(y: np.ndarray, p: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Confusion matrix (rows actual, columns argmax prediction; classes beyond ``MAX_CLASSES``
    summed into "other") and per-class metrics of the listed classes."""
    from mlcore.model.metrics import ranked, weighted_auc

    empty: dict[str, Any] = {"labels": [], "confusion": [], "per_class": [], "omitted": 0}
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 2 or p.shape[1] < 1 or not _usable(y, p):
        return empty
    k, yi = p.shape[1], y.astype(np.int64)
    if np.any(yi != y) or yi.min() < 0 or yi.max() >= k:
        return empty
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    pred = np.argmax(p, axis=1)
    support, predicted = np.bincount(yi, minlength=k), np.bincount(pred, minlength=k)
    tp = np.bincount(yi[yi == pred], minlength=k)
    shown = _shown_classes(support)
    group = np.full(k, shown.size)
    group[shown] = np.arange(shown.size)
    g = shown.size + int(shown.size < k)
    confusion = np.bincount(group[yi] * g + group[pred], minlength=g * g).reshape(g, g)
    ones = np.ones(y.size)
    rows = [_class_row(names[c], tp[c], support[c], predicted[c],
                       weighted_auc(ranked((yi == c).astype(float), p[:, c]), ones))
            for c in shown]
    labels = [names[c] for c in shown] + [f"other ({k - shown.size} classes)"] * (g > shown.size)
    return {"labels": labels, "confusion": confusion.tolist(), "per_class": rows,
            "omitted": k - int(shown.size)}


def _residual_histogram(residuals: np.ndarray) -> dict[str, Any]:
    """Histogram of the residuals over their range, cut at a quarter of the 0.5-99.5% range
    beyond it on either side so that far outliers do not squash the plot: the ``clipped`` rows
    beyond the cut are counted in the end bins."""
    lo, hi = np.quantile(residuals, [0.005, 0.995])
    lo, hi = (max(residuals.min(), lo - (hi - lo) / 4), min(residuals.max(), hi + (hi - lo) / 4))
    clipped = int(np.count_nonzero((residuals < lo) | (residuals > hi)))
    counts, edges = np.histogram(np.clip(residuals, lo, hi), bins=RESIDUAL_BINS)
    return {"edges": _significant(edges, 7), "counts": counts.tolist(), "clipped": clipped}


def _regression_curves(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """A deterministic sample of (actual, predicted) pairs (the same rows for every model of a
    holdout) and the histogram of all residuals (actual - predicted)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if p.ndim != 1 or not _usable(y, p):
        return {"scatter": {"actual": [], "predicted": []},
                "residuals": {"edges": [], "counts": [], "clipped": 0}}
    rows = np.arange(y.size)
    if y.size > MAX_SCATTER:
        rows = np.sort(np.random.default_rng(0).choice(y.size, MAX_SCATTER, replace=False))
    return {"scatter": {"actual": _significant(y[rows]), "predicted": _significant(p[rows])},
            "residuals": _residual_histogram(y - p)}


def model_curves(kind: str, y: np.ndarray, p: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The JSON-able plot data of one model's outputs ``p`` on encoded labels ``y``.

    Args:
        kind: ``binary``, ``multiclass`` or ``regression`` (encodings as in
            ``mlcore.model.targets``).
        y: Encoded labels (binary 0/1, multiclass class index, regression value).
        p: Outputs: P(positive) (n,); class probabilities (n, k); predicted values (n,).
        classes: Class names in code order (labels of the multiclass tables; else unused).

    Returns:
        binary ``{"roc": roc_points, "pr": pr_points}``; multiclass ``{"labels", "confusion",
        "per_class", "omitted"}`` (rows/columns named by ``labels``; per-class ``class``,
        ``precision``, ``recall``, ``f1``, ``support``, ``roc_auc``); regression ``{"scatter":
        {"actual", "predicted"}, "residuals": {"edges", "counts", "clipped"}}``. Values are
        rounded; non-finite inputs give empty lists.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "binary":
        return {"roc": roc_points(y, p), "pr": pr_points(y, p)}
    if kind == "multiclass":
        return _multiclass_curves(y, p, classes)
    if kind == "regression":
        return _regression_curves(y, p)
    raise ValueError(f"unknown target kind {kind!r}")


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def num(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, NaN, inf, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    return float(value) if math.isfinite(value) else None


def as_text(value: Any) -> str:
    """One value as plain text: NaN as "NaN", None as a dash, floats to 6 significant digits."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
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


def table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    """An HTML table; ``classes`` (one per row) marks rows such as failing slices."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join((f'<tr class="{c}">' if c else "<tr>")
                   + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
                   for row, c in zip(rows, classes or [""] * len(rows), strict=True))
    return f"<table><tr>{head}</tr>{body}</table>"


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


def card_kind(card: dict[str, Any]) -> str:
    """The card's target kind (``binary`` for cards written before target kinds)."""
    return str((card.get("target") or {}).get("kind") or "binary")


def _curves(model: dict[str, Any] | None) -> dict[str, Any]:
    """A model's plot data: ``curves``, or the ``roc`` entry of a card before target kinds."""
    model = model or {}
    if model.get("curves") is None and model.get("roc") is not None:
        return {"roc": model["roc"]}
    return model.get("curves") or {}


def _label(role: str, model: dict[str, Any]) -> str:
    """``contender v3 (hist_gradient_boosting)``: how plots and headings name a model."""
    return f"{role} v{model.get('version')} ({model.get('algorithm')})"


def _plot_roc(ax: Any, card: dict[str, Any]) -> None:
    """ROC curves of the contender and (when present) the champion, with the chance diagonal."""
    drawn = 0
    for role in ROLES:
        model = card.get(role) or {}
        roc = _curves(model).get("roc") or {}
        if roc.get("fpr"):
            auc = as_text((model.get("metrics") or {}).get("roc_auc"))
            ax.plot(roc["fpr"], roc["tpr"], color=COLORS[role],
                    label=tex_safe(f"{_label(role, model)}, AUC {auc}"))
            drawn += 1
    if not drawn:
        return message(ax, "ROC curve unavailable (single class or non-finite scores)")
    ax.plot([0, 1], [0, 1], color="#cccccc", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           aspect="equal")
    ax.legend(loc="lower right", fontsize="small")


def _plot_pr(ax: Any, card: dict[str, Any]) -> None:
    """Precision-recall curves of both models, with the no-skill line at the prevalence."""
    prevalence = None
    for role in ROLES:
        model = card.get(role) or {}
        pr = _curves(model).get("pr") or {}
        if pr.get("recall"):
            ap = as_text((model.get("metrics") or {}).get("pr_auc"))
            ax.plot(pr["recall"], pr["precision"], color=COLORS[role],
                    label=tex_safe(f"{_label(role, model)}, PR AUC {ap}"))
            prevalence = num(pr.get("prevalence")) if prevalence is None else prevalence
    if not ax.lines:
        return message(ax, "precision-recall curve unavailable (single class or non-finite "
                           "scores)")
    if prevalence is not None:
        ax.axhline(prevalence, color="#cccccc", linestyle=":", linewidth=1,
                   label=f"no skill (prevalence {prevalence:.4g})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), aspect="equal")
    ax.legend(loc="lower left", fontsize="small")


def _scatter_limits(card: dict[str, Any]) -> tuple[float, float]:
    """Common axis range of every model's predicted-against-actual sample (padded by 3%)."""
    values = [v for role in ROLES for key in ("actual", "predicted")
              for v in (_curves(card.get(role)).get("scatter") or {}).get(key) or []]
    lo, hi = min(values), max(values)
    pad = 0.03 * (hi - lo) or 0.5
    return lo - pad, hi + pad


def _plot_scatter(ax: Any, card: dict[str, Any], role: str) -> None:
    """One model's sampled predictions against the actual values, with the y = x line."""
    model = card.get(role) or {}
    scatter = _curves(model).get("scatter") or {}
    if not scatter.get("actual"):
        return message(ax, f"{role}: predicted against actual unavailable (non-finite values)")
    lo, hi = _scatter_limits(card)
    ax.plot([lo, hi], [lo, hi], color="#999999", linestyle=":", linewidth=1, label="y = x")
    ax.scatter(scatter["actual"], scatter["predicted"], s=6, alpha=0.5, linewidths=0,
               color=COLORS[role])
    ax.set(xlabel="actual", ylabel="predicted", xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
    ax.set_title(tex_safe(f"{_label(role, model)}, {len(scatter['actual'])} sampled rows"),
                 fontsize="small")
    ax.legend(loc="upper left", fontsize="small")


def _plot_residuals(ax: Any, card: dict[str, Any]) -> None:
    """Residual histograms (actual - predicted) of both models as overlaid step lines."""
    for role in ROLES:
        model = card.get(role) or {}
        hist = _curves(model).get("residuals") or {}
        if hist.get("counts"):
            clipped = f", {hist['clipped']} outliers in the end bins" if hist.get("clipped") else ""
            ax.stairs(hist["counts"], hist["edges"], color=COLORS[role],
                      label=tex_safe(f"{_label(role, model)}{clipped}"))
    if not ax.patches:
        return message(ax, "residuals unavailable (non-finite values)")
    ax.axvline(0, color="black", linewidth=1)
    ax.set(xlabel="residual (actual - predicted)", ylabel="rows")
    ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))


def _plot_delta(ax: Any, card: dict[str, Any]) -> None:
    """Primary-metric delta with its CI and the decision's reference lines."""
    delta, ci = num(card.get("delta")), card.get("ci") or [None, None]
    if card.get("champion") is None:
        return message(ax, "no champion: judged by the absolute floor alone")
    if delta is None:
        return message(ax, "metric delta unavailable (NaN)")
    low, high = num(ci[0]), num(ci[1])
    if low is not None and high is not None:  # a segment, not error bars: CI need not hold delta
        ax.plot([low, high], [0, 0], marker="|", markersize=16, color=COLORS["contender"],
                label=f"{as_text(card.get('confidence'))} CI [{low:.4g}, {high:.4g}]")
    ax.plot([delta], [0], "o", color=COLORS["contender"], label=f"delta {delta:+.4g}")
    thresholds = card.get("thresholds") or {}
    ax.axvline(0, color="black", linewidth=1)
    lines = [("min_improvement", 1.0, "#2e7d32", "--"),
             ("non_inferiority_margin", -1.0, "#c62828", ":")]
    for key, sign, color, style in lines:
        if (value := num(thresholds.get(key))) is not None:
            ax.axvline(sign * value, color=color, linestyle=style,
                       label=f"{'+' if sign > 0 else '-'}{key} ({value:g})")
    metric = (card.get("metric") or {}).get("name", "metric")
    ax.set(yticks=[], xlabel=tex_safe(f"{metric} delta (positive = contender better)"))
    ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))


def _plot_slices(ax: Any, card: dict[str, Any]) -> None:
    """Per-slice delta bars, the allowed drop (-bound) as a tick, failing slices in red."""
    slices = card.get("slices") or []
    if not slices:
        return message(ax, "no slices configured")
    if card.get("champion") is None:
        return message(ax, "no champion: no slice deltas")
    pos = np.arange(len(slices))
    status = ["skip" if s.get("ok") is None else "ok" if s.get("ok") else "fail" for s in slices]
    ax.barh(pos, [num(s.get("delta")) or 0.0 for s in slices],
            color=[COLORS[k] for k in status])
    bounds = [(i, -b) for i, s in enumerate(slices) if (b := num(s.get("bound"))) is not None]
    if bounds:
        ax.plot([b for _, b in bounds], [i for i, _ in bounds], linestyle="none", marker="|",
                markersize=14, color="black", label="allowed drop (-bound)")
        ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))
    ax.axvline(0, color="black", linewidth=1)
    labels = [tex_safe(f"{s.get('column')}={s.get('value')}" + (" (skipped)" * (k == "skip")))
              for s, k in zip(slices, status, strict=True)]
    ax.set_yticks(pos, labels=labels, fontsize="small")
    for tick, k in zip(ax.get_yticklabels(), status, strict=True):
        tick.set_color(COLORS["fail"] if k == "fail" else "black")
    ax.invert_yaxis()
    ax.set_xlabel("slice metric delta (positive = contender better)")


def figures(specs: Sequence[tuple[Callable[[Any, Any], None], tuple[float, float]]],
            data: Any) -> list[str]:
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


def _figures(card: dict[str, Any]) -> list[str]:
    """The delta and slice plots as inline SVG strings."""
    n_slices = len(card.get("slices") or [])
    return figures([(_plot_delta, (6.4, 1.8)),
                    (_plot_slices, (6.4, max(1.8, 0.3 * n_slices + 1.0)))], card)


def _binary_section(card: dict[str, Any]) -> str:
    """ROC and precision-recall curves, both models overlaid."""
    roc, pr = figures([(_plot_roc, (5.0, 4.5)), (_plot_pr, (5.0, 4.5))], card)
    classes = (card.get("target") or {}).get("classes") or []
    positive = f" (positive class: {fmt(classes[1])})" if len(classes) == 2 else ""
    return (f"<h3>ROC curves</h3><figure>{roc}</figure>"
            f"<h3>Precision-recall curves{positive}</h3><figure>{pr}</figure>")


def _confusion_table(curves: dict[str, Any]) -> str:
    """Counts with actual classes as rows and predicted as columns, shaded by row share."""
    labels, matrix = curves.get("labels") or [], curves.get("confusion") or []
    if not matrix or len(labels) != len(matrix):
        return "<p>confusion matrix unavailable (non-finite outputs or unknown labels)</p>"
    head = "".join(f"<th>{fmt(name)}</th>" for name in labels)
    rows = []
    for name, counts in zip(labels, matrix, strict=True):
        total = sum(counts) or 1
        cells = "".join(f'<td style="background:rgba(31,119,180,{0.6 * c / total:.2f})">{c}</td>'
                        if c else "<td>0</td>" for c in counts)
        rows.append(f"<tr><th>{fmt(name)}</th>{cells}</tr>")
    omitted = curves.get("omitted") or 0
    note = (f"<p>The {len(labels) - 1} most frequent classes; {omitted} others are summed in "
            f"&quot;other&quot;.</p>" if omitted else "")
    return (f"{note}<table><tr><th>actual \\ predicted</th>{head}</tr>{''.join(rows)}</table>")


PER_CLASS_KEYS = ("class", "support", "precision", "recall", "f1", "roc_auc")


def _multiclass_section(card: dict[str, Any]) -> str:
    """A confusion matrix and a per-class metrics table for each model."""
    models = [(role, m) for role in ROLES if (m := card.get(role))]
    parts = [f"<h3>Confusion matrix: {fmt(_label(role, m))}</h3>{_confusion_table(_curves(m))}"
             for role, m in models]
    headers = ["class", "support", "precision", "recall", "F1", "ROC AUC (one-vs-rest)"]
    for role, m in models:
        rows = [[r.get(k) for k in PER_CLASS_KEYS] for r in _curves(m).get("per_class") or []]
        parts.append(f"<h3>Per-class metrics: {fmt(_label(role, m))}</h3>"
                     + (table(headers, rows) if rows else "<p>per-class metrics unavailable</p>"))
    return "".join(parts)


def _regression_section(card: dict[str, Any]) -> str:
    """Predicted against actual for each model (same axes) and the residual histograms."""
    roles = [role for role in ROLES if card.get(role) or role == "contender"]
    specs: list[tuple[Callable[[Any, Any], None], tuple[float, float]]] = [
        (partial(_plot_scatter, role=role), (4.6, 4.6)) for role in roles]
    *scatters, residuals = figures(specs + [(_plot_residuals, (6.4, 3.0))], card)
    return ('<h3>Predicted against actual</h3><div style="display:flex;flex-wrap:wrap">'
            + "".join(f"<figure>{s}</figure>" for s in scatters)
            + f"</div><h3>Residuals</h3><figure>{residuals}</figure>")


def _model_section(card: dict[str, Any]) -> str:
    """The plots and tables that fit the card's target kind."""
    sections = {"binary": _binary_section, "multiclass": _multiclass_section,
                "regression": _regression_section}
    kind = card_kind(card)
    if kind not in sections:
        return f"<p>no model plots for target kind {fmt(kind)}</p>"
    return sections[kind](card)


def _metric_rows(card: dict[str, Any]) -> list[list[Any]]:
    """One row per metric present: name (primary marked), which way is better, contender value,
    champion value."""
    from mlcore.spec_rules import METRICS_BY_KIND

    contender = (card.get("contender") or {}).get("metrics") or {}
    champion = (card.get("champion") or {}).get("metrics") or {}
    metric = card.get("metric") or {}
    directions: dict[Any, Any] = {**METRICS_BY_KIND.get(card_kind(card), {}),
                                  metric.get("name"): metric.get("direction")}
    better = {"maximize": "higher", "minimize": "lower"}
    names = list(contender) + [n for n in champion if n not in contender]
    return [[f"{n} (primary)" if n == metric.get("name") else n,
             better.get(str(directions.get(n)), ""), contender.get(n), champion.get(n)]
            for n in names]


def _tables(card: dict[str, Any]) -> str:
    """Every number the decision used, as HTML tables."""
    metric, ci = card.get("metric") or {}, card.get("ci") or [None, None]
    hold, thru = card.get("holdout") or {}, card.get("throughput") or {}
    slices, guards = card.get("slices") or [], card.get("guardrails") or []
    kv = ["name", "value"]
    models = [[role, m.get("version"), m.get("algorithm"), m.get("rows_per_second"),
               m.get("window") or "all history"]
              for role in ("contender", "champion") if (m := card.get(role))]
    parts = [
        ("Metrics", table(["metric", "better", "contender", "champion"],
                          _metric_rows(card))),
        ("Decision numbers", table(kv, [
            ["metric", metric.get("name")], ["direction", metric.get("direction")],
            ["delta", card.get("delta")], ["CI low", ci[0]], ["CI high", ci[1]],
            ["confidence", card.get("confidence")],
            ["bootstrap samples", card.get("bootstrap_samples")]])),
        ("Thresholds", table(kv, [[k, v] for k, v in (card.get("thresholds") or {}).items()])),
        ("Holdout", table(kv, [[k, hold.get(k)] for k in (
            "batches", "rows", "hash", "method", "rule", "from", "left_out_seen")])),
        ("Throughput guardrail", table(kv, [[k, thru.get(k)] for k in THROUGHPUT_KEYS])),
        ("Throughput passes", table(
            ["model", "median rows/s", "p10", "p90", "spread", "threads", "rows", "passes"],
            [[role, t.get("rows_per_second"), t.get("p10"), t.get("p90"), t.get("spread"),
              t.get("threads"), t.get("rows"), ", ".join(f"{v:,.0f}" for v in t.get("passes")
                                                        or [])]
             for role, t in (thru.get("timings") or {}).items()])),
        ("Guardrails", table(["guardrail", "ok", "detail"],
                              [[g.get("name"), g.get("ok"), g.get("detail")] for g in guards],
                              ["fail" if g.get("ok") is False else "" for g in guards])),
        ("Slices", table(list(SLICE_KEYS), [[s.get(k) for k in SLICE_KEYS] for s in slices],
                          ["fail" if s.get("ok") is False else "" for s in slices])),
        ("Models", table(["role", "version", "algorithm", "rows/s", "training window"],
                         models)),
    ]
    if back := card.get("backtest"):
        parts.append(("Rolling-origin backtest (each configuration refitted on the batches "
                      "before each one; not part of the decision)", table(
            ["batch", "fitted rows", "rows", "contender", "champion", "delta", "note"],
            [[b.get("batch_id"), b.get("fit_rows"), b.get("rows"), b.get("contender"),
              b.get("champion"), b.get("delta"),
              "; ".join(b[k] for k in ("contender_note", "champion_note") if b.get(k))]
             for b in back])))
    return "".join(f"<h3>{title}</h3>{html_table}" for title, html_table in parts)


def _held_by(card: dict[str, Any]) -> str:
    """A better contender not promoted: the spec settings that held it, as a list."""
    held = card.get("held_by") or []
    if not held:
        return ""
    items = "".join(f"<li><code>{fmt(h.get('setting'))}</code> is {fmt(h.get('value'))}; "
                    f"{fmt(h.get('would_change'))}</li>" for h in held)
    return f'<p>Held back by:</p><ul class="held">{items}</ul>'


def _target_text(card: dict[str, Any]) -> str:
    """``target: multiclass; classes: a, b, c`` (the first 50 classes)."""
    classes = [str(c) for c in (card.get("target") or {}).get("classes") or []]
    more = f" and {len(classes) - 50} more" if len(classes) > 50 else ""
    listed = f"; classes: {', '.join(classes[:50])}{more}" if classes else ""
    return f"target: {card_kind(card)}{listed}"


def _nav(card: dict[str, Any]) -> str:
    """Back to the Batchloop view and to the Airflow run that evaluated (``card["links"]``)."""
    from mlcore.reports.drift_report import nav_html

    return nav_html(str(card.get("problem")), card.get("links")) if card.get("links") else ""


def _render_html(card: dict[str, Any]) -> str:
    """The run card as one self-contained HTML page (inline CSS and SVG, no scripts, no URLs)."""
    outcome = str(card.get("outcome") or "")
    banner = outcome.split(":")[0]
    banner = banner if banner in {"promote", "keep", "reject"} else "other"
    delta, slices = _figures(card)
    title = f"Run card: {card.get('problem')}, evaluation {card.get('evaluation_id')}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{fmt(title)}</title><style>{CSS}</style></head><body>"
            f"{_nav(card)}"
            f"<h1>{fmt(title)}</h1><p>created {fmt(card.get('created_at'))}; "
            f"{fmt(_target_text(card))}</p>"
            f'<div class="outcome {banner}"><h2>{fmt(outcome)} (promote: '
            f"{fmt(card.get('promote'))})</h2><p>{fmt(card.get('reason'))}</p>"
            f"{_held_by(card)}</div>"
            f"{_model_section(card)}"
            f"<h3>Primary-metric delta</h3><figure>{delta}</figure>"
            f"<h3>Per-slice delta</h3><figure>{slices}</figure>{_tables(card)}</body></html>\n")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; the card is for other readers
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run_card(card: dict[str, Any], out_dir: Path) -> RunCard:
    """Write ``run_card.json`` and ``run_card.html`` into ``out_dir``, each atomically.

    Args:
        card: The evaluation step's card (values may be None or NaN where the schema allows).
        out_dir: Directory to write into (created if missing).

    Returns:
        The two paths and their combined size in bytes.

    Raises:
        ValueError: The two files together would exceed 1,000,000 bytes (nothing is written).
    """
    json_bytes = json.dumps(jsonable(card), indent=2, allow_nan=False, default=str).encode()
    html_bytes = _render_html(card).encode()
    size = len(json_bytes) + len(html_bytes)
    if size > MAX_BYTES:
        raise ValueError(f"run card is {size} bytes, over the {MAX_BYTES} byte limit")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "run_card.json", out_dir / "run_card.html"
    write_atomic(json_path, json_bytes)
    write_atomic(html_path, html_bytes)
    return RunCard(html_path=html_path, json_path=json_path, bytes=size)
