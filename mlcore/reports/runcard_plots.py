"""Run card plots: matplotlib drawings of a card's data (ROC, precision-recall, predicted against
actual, residuals, the primary-metric delta with its CI, per-slice deltas), each ``plot(ax, card)``
for ``mlcore.reports.html.figures``. Deltas are oriented so that positive means "contender is
better"; a slice fails when its delta falls below ``-bound``. matplotlib is imported by
``figures``, never here. The card readers the page shares (``card_kind``, ``model_data``,
``model_label``) are here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlcore.reports.html import as_text, finite, message, tex_safe

ROLES = ("contender", "champion")
COLORS = {"contender": "#1f77b4", "champion": "#7f7f7f", "ok": "#4c72b0", "fail": "#c44e52",
          "skip": "#bbbbbb"}


def card_kind(card: dict[str, Any]) -> str:
    """The card's target kind (``binary`` for cards written before target kinds)."""
    return str((card.get("target") or {}).get("kind") or "binary")


def model_data(model: dict[str, Any] | None) -> dict[str, Any]:
    """A model's plot data: ``curves``, or the ``roc`` entry of a card before target kinds."""
    model = model or {}
    if model.get("curves") is None and model.get("roc") is not None:
        return {"roc": model["roc"]}
    return model.get("curves") or {}


def model_label(role: str, model: dict[str, Any]) -> str:
    """``contender v3 (hist_gradient_boosting)``: how plots and headings name a model."""
    return f"{role} v{model.get('version')} ({model.get('algorithm')})"


def plot_roc(ax: Any, card: dict[str, Any]) -> None:
    """ROC curves of the contender and (when present) the champion, with the chance diagonal."""
    drawn = 0
    for role in ROLES:
        model = card.get(role) or {}
        roc = model_data(model).get("roc") or {}
        if roc.get("fpr"):
            auc = as_text((model.get("metrics") or {}).get("roc_auc"))
            ax.plot(roc["fpr"], roc["tpr"], color=COLORS[role],
                    label=tex_safe(f"{model_label(role, model)}, AUC {auc}"))
            drawn += 1
    if not drawn:
        return message(ax, "ROC curve unavailable (single class or non-finite scores)")
    ax.plot([0, 1], [0, 1], color="#cccccc", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           aspect="equal")
    ax.legend(loc="lower right", fontsize="small")


def plot_pr(ax: Any, card: dict[str, Any]) -> None:
    """Precision-recall curves of both models, with the no-skill line at the prevalence."""
    prevalence = None
    for role in ROLES:
        model = card.get(role) or {}
        pr = model_data(model).get("pr") or {}
        if pr.get("recall"):
            ap = as_text((model.get("metrics") or {}).get("pr_auc"))
            ax.plot(pr["recall"], pr["precision"], color=COLORS[role],
                    label=tex_safe(f"{model_label(role, model)}, PR AUC {ap}"))
            prevalence = finite(pr.get("prevalence")) if prevalence is None else prevalence
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
              for v in (model_data(card.get(role)).get("scatter") or {}).get(key) or []]
    lo, hi = min(values), max(values)
    pad = 0.03 * (hi - lo) or 0.5
    return lo - pad, hi + pad


def plot_scatter(ax: Any, card: dict[str, Any], role: str) -> None:
    """One model's sampled predictions against the actual values, with the y = x line."""
    model = card.get(role) or {}
    scatter = model_data(model).get("scatter") or {}
    if not scatter.get("actual"):
        return message(ax, f"{role}: predicted against actual unavailable (non-finite values)")
    lo, hi = _scatter_limits(card)
    ax.plot([lo, hi], [lo, hi], color="#999999", linestyle=":", linewidth=1, label="y = x")
    ax.scatter(scatter["actual"], scatter["predicted"], s=6, alpha=0.5, linewidths=0,
               color=COLORS[role])
    ax.set(xlabel="actual", ylabel="predicted", xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
    ax.set_title(tex_safe(f"{model_label(role, model)}, {len(scatter['actual'])} sampled rows"),
                 fontsize="small")
    ax.legend(loc="upper left", fontsize="small")


def plot_residuals(ax: Any, card: dict[str, Any]) -> None:
    """Residual histograms (actual - predicted) of both models as overlaid step lines."""
    for role in ROLES:
        model = card.get(role) or {}
        hist = model_data(model).get("residuals") or {}
        if hist.get("counts"):
            clipped = f", {hist['clipped']} outliers in the end bins" if hist.get("clipped") else ""
            ax.stairs(hist["counts"], hist["edges"], color=COLORS[role],
                      label=tex_safe(f"{model_label(role, model)}{clipped}"))
    if not ax.patches:
        return message(ax, "residuals unavailable (non-finite values)")
    ax.axvline(0, color="black", linewidth=1)
    ax.set(xlabel="residual (actual - predicted)", ylabel="rows")
    ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))


def plot_delta(ax: Any, card: dict[str, Any]) -> None:
    """Primary-metric delta with its CI and the decision's reference lines."""
    delta, ci = finite(card.get("delta")), card.get("ci") or [None, None]
    if card.get("champion") is None:
        return message(ax, "no champion: judged by the absolute floor alone")
    if delta is None:
        return message(ax, "metric delta unavailable (NaN)")
    low, high = finite(ci[0]), finite(ci[1])
    if low is not None and high is not None:  # a segment, not error bars: CI need not hold delta
        ax.plot([low, high], [0, 0], marker="|", markersize=16, color=COLORS["contender"],
                label=f"{as_text(card.get('confidence'))} CI [{low:.4g}, {high:.4g}]")
    ax.plot([delta], [0], "o", color=COLORS["contender"], label=f"delta {delta:+.4g}")
    thresholds = card.get("thresholds") or {}
    ax.axvline(0, color="black", linewidth=1)
    lines = [("min_improvement", 1.0, "#2e7d32", "--"),
             ("non_inferiority_margin", -1.0, "#c62828", ":")]
    for key, sign, color, style in lines:
        if (value := finite(thresholds.get(key))) is not None:
            ax.axvline(sign * value, color=color, linestyle=style,
                       label=f"{'+' if sign > 0 else '-'}{key} ({value:g})")
    metric = (card.get("metric") or {}).get("name", "metric")
    ax.set(yticks=[], xlabel=tex_safe(f"{metric} delta (positive = contender better)"))
    ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1))


def plot_slices(ax: Any, card: dict[str, Any]) -> None:
    """Per-slice delta bars, the allowed drop (-bound) as a tick, failing slices in red."""
    slices = card.get("slices") or []
    if not slices:
        return message(ax, "no slices configured")
    if card.get("champion") is None:
        return message(ax, "no champion: no slice deltas")
    pos = np.arange(len(slices))
    status = ["skip" if s.get("ok") is None else "ok" if s.get("ok") else "fail" for s in slices]
    ax.barh(pos, [finite(s.get("delta")) or 0.0 for s in slices],
            color=[COLORS[k] for k in status])
    bounds = [(i, -b) for i, s in enumerate(slices) if (b := finite(s.get("bound"))) is not None]
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

