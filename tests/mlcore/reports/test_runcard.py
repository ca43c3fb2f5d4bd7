"""Run card: the plot data of each target kind (ROC and PR points, confusion matrix and per-class
metrics, predicted-against-actual sample and residual histogram); the HTML/JSON pair of each kind
(sections, size, atomic write, escaping, NaN, no champion, cards written before target kinds)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from mlcore.model.metrics import compute_metrics
from mlcore.reports.html import jsonable
from mlcore.reports.runcard import MAX_BYTES, RunCard, write_run_card
from mlcore.reports.runcard_data import (
    MAX_CLASSES,
    MAX_SCATTER,
    RESIDUAL_BINS,
    model_curves,
    pr_points,
    roc_points,
)
from mlcore.spec_rules import DEFAULT_METRIC, METRICS_BY_KIND

ROOT = Path(__file__).resolve().parents[3]
NAN = float("nan")
BINARY_CLASSES = ["not employed", "employed"]


def scores(n: int = 5000, seed: int = 0, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and continuous scores (all distinct, so the full ROC curve has ~n points)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.normal(shift * y, 1.0)


def model(version: int, algorithm: str, auc: float, seed: int) -> dict:
    return {"version": version, "algorithm": algorithm,
            "metrics": {"roc_auc": auc, "pr_auc": 0.71, "accuracy": 0.76, "log_loss": 0.47},
            "rows_per_second": 350000.0,
            "curves": model_curves("binary", *scores(seed=seed), BINARY_CLASSES)}


def outputs(kind: str, n: int, k: int, seed: int, y: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Encoded labels (drawn unless given) and informative model outputs of ``kind``."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        y = rng.integers(0, 2, n) if y is None else y
        return y, 1 / (1 + np.exp(-rng.normal(1.5 * (2 * y - 1), 1.0)))
    if kind == "multiclass":
        y = rng.integers(0, k, n) if y is None else y
        logits = rng.normal(size=(n, k))
        logits[np.arange(n), y] += 1.5
        e = np.exp(logits)
        return y, e / e.sum(axis=1, keepdims=True)
    y = rng.normal(50.0, 10.0, n) if y is None else y
    return y, y + rng.normal(0.0, 3.0 + seed, n)


def retarget(card: dict, kind: str, n: int, k: int = 0) -> dict:
    """The card as ``mlcore.evaluation`` builds it for ``kind``: both models scored on the same
    ``n`` synthetic rows (``k`` classes), metrics of the kind, curves from ``model_curves``."""
    classes = {"binary": BINARY_CLASSES, "multiclass": [f"class_{i}" for i in range(k)],
               "regression": []}[kind]
    y, _ = outputs(kind, n, k, seed=0)
    card["target"] = {"kind": kind, "classes": classes}
    name = DEFAULT_METRIC[kind]
    card["metric"] = {"name": name, "direction": METRICS_BY_KIND[kind][name]}
    for seed, role in enumerate(("contender", "champion"), start=1):
        _, p = outputs(kind, n, k, seed, y=y)
        card[role].update(metrics=jsonable(compute_metrics(y, p, kind)),
                          curves=model_curves(kind, y, p, classes))
    return card


def slice_row(column: str, value: str, delta: float, bound: float = 0.01) -> dict:
    return {"column": column, "value": value, "rows": 3000, "contender": 0.83 + delta,
            "champion": 0.83, "delta": delta, "bound": bound, "ok": delta >= -bound, "note": ""}


@pytest.fixture
def card() -> dict:
    """A realistic card: 2 slice columns with 11 values, two 200-point ROC curves."""
    slices = [slice_row("SEX", "1", 0.002), slice_row("SEX", "2", -0.03)]
    slices += [slice_row("AGEP_BIN", f"{a}-{a + 9}", 0.001 * (a % 7 - 3)) for a in range(16, 88, 8)]
    slices[-1].update(champion=None, delta=None, ok=None, note="too few rows (12 < 200)")
    return {
        "problem": "census_employment", "evaluation_id": 7,
        "target": {"kind": "binary", "classes": BINARY_CLASSES},
        "created_at": "2026-11-21T10:00:00+00:00", "outcome": "reject: failed guardrail",
        "promote": False, "reason": "slice SEX=2 dropped 0.03 > 0.01",
        "metric": {"name": "roc_auc", "direction": "maximize"},
        "contender": model(3, "hist_gradient_boosting", 0.83, seed=1),
        "champion": model(2, "logistic_regression", 0.82, seed=2),
        "delta": 0.0102, "ci": [0.0051, 0.0149], "confidence": 0.95, "bootstrap_samples": 1000,
        "thresholds": {"min_metric": 0.75, "min_improvement": 0.002,
                       "non_inferiority_margin": 0.005, "slice_min_rows": 200},
        "holdout": {"batches": ["2018"], "rows": 69000, "hash": "ab" * 32,
                    "method": "newest_batch"},
        "slices": slices,
        "throughput": {"contender": 350000.0, "champion": 400000.0, "ratio": 0.875,
                       "max_drop": 0.5, "ok": True},
        "guardrails": [{"name": f"slice {s['column']}={s['value']}", "ok": s["ok"],
                        "detail": s["note"]} for s in slices],
    }


def without_svg(page: str) -> str:
    """The page's own HTML (plots removed), to check tables and banners without plot text."""
    return re.sub(r"<svg.*?</svg>", "", page, flags=re.S)


def strict_json(text: str) -> dict:
    """Parse JSON, failing on NaN/Infinity tokens that ``json.loads`` would otherwise accept."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


# --- roc_points -----------------------------------------------------------------------------------

def test_roc_points_without_downsampling_is_sklearns_curve():
    y, p = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    fpr, tpr, _ = roc_curve(y, p)
    got = roc_points(y, p)
    assert got["fpr"] == [round(float(v), 5) for v in fpr]
    assert got["tpr"] == [round(float(v), 5) for v in tpr]


def test_roc_points_downsamples_onto_the_full_curve():
    y, p = scores(n=20_000)
    fpr, tpr, _ = roc_curve(y, p)
    assert fpr.size > 1000  # the downsampling really has work to do
    got = roc_points(y, p, max_points=200)
    assert len(got["fpr"]) == len(got["tpr"]) == 200
    assert (got["fpr"][0], got["tpr"][0]) == (0.0, 0.0)
    assert (got["fpr"][-1], got["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(got["fpr"]) >= 0) and np.all(np.diff(got["tpr"]) >= 0)
    for i in (1, 57, 150):  # interior points are points of sklearn's curve, 5 decimals
        j = int(np.argmin(np.abs(fpr - got["fpr"][i]) + np.abs(tpr - got["tpr"][i])))
        assert got["fpr"][i] == pytest.approx(fpr[j], abs=5e-6)
        assert got["tpr"][i] == pytest.approx(tpr[j], abs=5e-6)


@pytest.mark.parametrize("y, p", [
    ([0, 1, 1], [0.2, NAN, 0.7]),
    ([0, 1, 1], [0.2, float("inf"), 0.7]),
    ([1, 1, 1], [0.2, 0.5, 0.7]),
    ([], []),
])
def test_roc_points_degenerate_input_gives_empty_curve(y, p):
    assert roc_points(np.array(y), np.array(p)) == {"fpr": [], "tpr": []}


def test_roc_points_rejects_fewer_than_two_points():
    with pytest.raises(ValueError, match="max_points"):
        roc_points(*scores(n=100), max_points=1)


def test_roc_points_non_finite_labels_give_empty_curve():
    assert roc_points(np.array([0, NAN, 1]), np.array([0.2, 0.5, 0.7])) == {"fpr": [], "tpr": []}


# --- pr_points ------------------------------------------------------------------------------------

def test_pr_points_of_a_perfect_ranking_reach_full_precision_at_full_recall():
    got = pr_points(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert got == {"recall": [0.0, 0.5, 1.0, 1.0, 1.0],
                   "precision": [1.0, 1.0, 1.0, 0.66667, 0.5], "prevalence": 0.5}


def test_pr_points_of_an_interleaved_ranking():
    # thresholds 0.9, 0.8, 0.7, 0.6 flag 1, 2, 3, 4 rows of which 1, 1, 2, 2 are positive
    got = pr_points(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6]))
    assert got == {"recall": [0.0, 0.5, 0.5, 1.0, 1.0],
                   "precision": [1.0, 1.0, 0.5, 0.66667, 0.5], "prevalence": 0.5}


def test_pr_points_downsample_onto_the_full_curve():
    y, p = scores(n=20_000)
    precision, recall, _ = precision_recall_curve(y, p)
    got = pr_points(y, p, max_points=200)
    assert len(got["recall"]) == len(got["precision"]) == 200
    assert (got["recall"][0], got["precision"][0]) == (0.0, 1.0)
    assert got["recall"][-1] == 1.0  # lowest threshold: every row flagged, precision = prevalence
    assert got["precision"][-1] == got["prevalence"] == round(float(y.mean()), 5)
    assert np.all(np.diff(got["recall"]) >= 0)
    for i in (1, 57, 150):
        j = int(np.argmin(np.abs(recall - got["recall"][i])
                          + np.abs(precision - got["precision"][i])))
        assert got["precision"][i] == pytest.approx(precision[j], abs=5e-6)
    # the step-wise area under the sampled points is close to sklearn's average precision
    area = np.sum(np.diff(got["recall"]) * np.array(got["precision"][1:]))
    assert area == pytest.approx(average_precision_score(y, p), abs=0.01)


@pytest.mark.parametrize("y, p", [
    ([0, 1, 1], [0.2, NAN, 0.7]),
    ([0, NAN, 1], [0.2, 0.5, 0.7]),
    ([0, 0, 0], [0.2, 0.5, 0.7]),
    ([], []),
])
def test_pr_points_degenerate_input_gives_empty_curve(y, p):
    assert pr_points(np.array(y), np.array(p)) == {"recall": [], "precision": [],
                                                   "prevalence": None}


# --- model_curves ---------------------------------------------------------------------------------

def test_model_curves_binary_is_roc_and_pr_points():
    y, p = scores(n=3000)
    assert model_curves("binary", y, p, BINARY_CLASSES) == {"roc": roc_points(y, p),
                                                            "pr": pr_points(y, p)}


# rows 0..6: actual a a b b c c c, argmax a b b b c a c
MC_Y = np.array([0, 0, 1, 1, 2, 2, 2])
MC_P = np.eye(3)[[0, 1, 1, 1, 2, 0, 2]] * 0.8 + 0.05


def test_model_curves_multiclass_confusion_and_per_class_metrics():
    got = model_curves("multiclass", MC_Y, MC_P, ["a", "b", "c"])
    assert got["labels"] == ["a", "b", "c"] and got["omitted"] == 0
    assert got["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    # a: 1 of 2 predicted a is right, 1 of 2 actual a found. OvR AUC of column a: the two a rows
    # score 0.85 and 0.05 against b b c c c scoring 0.05 0.05 0.05 0.85 0.05 -> (4.5 + 2) / 10
    assert got["per_class"] == [
        {"class": "a", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "roc_auc": 0.65},
        {"class": "b", "precision": 0.66667, "recall": 1.0, "f1": 0.8, "support": 2,
         "roc_auc": 0.9},
        {"class": "c", "precision": 1.0, "recall": 0.66667, "f1": 0.8, "support": 3,
         "roc_auc": 0.83333},
    ]


def test_model_curves_multiclass_absent_class_has_undefined_ratios():
    y, p = np.array([0, 0, 1]), np.eye(3)[[0, 1, 1]]  # class 2 neither actual nor predicted
    got = model_curves("multiclass", y, p, ["a", "b", "c"])
    assert got["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert got["per_class"][2] == {"class": "c", "precision": None, "recall": None, "f1": None,
                                   "support": 0, "roc_auc": None}


def test_model_curves_multiclass_names_classes_by_index_when_the_list_does_not_fit():
    got = model_curves("multiclass", MC_Y, MC_P, ["a", "b"])
    assert got["labels"] == ["0", "1", "2"]
    assert [r["class"] for r in got["per_class"]] == ["0", "1", "2"]


def test_model_curves_multiclass_sums_rare_classes_into_other():
    k = MAX_CLASSES + 5
    y = np.repeat(np.arange(k), np.arange(1, k + 1))  # class c has c + 1 rows
    got = model_curves("multiclass", y, np.eye(k)[y], [f"c{i}" for i in range(k)])
    rare = k - (MAX_CLASSES - 1)  # classes 0..rare-1 are the least frequent
    assert got["omitted"] == rare
    assert got["labels"] == [f"c{i}" for i in range(rare, k)] + [f"other ({rare} classes)"]
    matrix = np.array(got["confusion"])
    assert matrix.shape == (MAX_CLASSES, MAX_CLASSES) and matrix.sum() == y.size
    assert np.array_equal(np.diag(matrix), np.r_[np.arange(rare, k) + 1, rare * (rare + 1) // 2])
    assert matrix.sum() == np.trace(matrix)  # perfect predictions: nothing off the diagonal
    assert [r["class"] for r in got["per_class"]] == got["labels"][:-1]
    assert all(r["precision"] == r["recall"] == r["roc_auc"] == 1.0 for r in got["per_class"])


@pytest.mark.parametrize("y, p", [
    (MC_Y, np.where(np.arange(21).reshape(7, 3) == 4, NAN, MC_P)),
    (np.array([0, 0, 1, 1, 2, 2, NAN]), MC_P),
    (np.array([0, 0, 1, 1, 2, 2, 3]), MC_P),  # label outside the 3 classes
    (np.array([0, 0, 1, 1, 2, 2, 1.5]), MC_P),
    (MC_Y, MC_P[:, 0]),  # not a matrix
    (np.array([]), np.empty((0, 3))),
])
def test_model_curves_multiclass_bad_input_gives_empty_tables(y, p):
    assert model_curves("multiclass", y, p, ["a", "b", "c"]) == {
        "labels": [], "confusion": [], "per_class": [], "omitted": 0}


def test_model_curves_regression_small_input_keeps_every_row():
    got = model_curves("regression", np.array([1.0, 2.0, 3.0, 4.0]),
                       np.array([1.5, 2.0, 2.0, 4.0]), [])
    assert got["scatter"] == {"actual": [1.0, 2.0, 3.0, 4.0], "predicted": [1.5, 2.0, 2.0, 4.0]}
    hist = got["residuals"]  # residuals -0.5, 0, 1, 0 over [-0.5, 1] in 30 bins of 0.05
    assert hist["edges"] == [round(-0.5 + 0.05 * i, 6) for i in range(RESIDUAL_BINS + 1)]
    assert hist["counts"] == [1] + [0] * 9 + [2] + [0] * 18 + [1]
    assert hist["clipped"] == 0


def test_model_curves_regression_samples_the_same_rows_deterministically():
    y, p_new = outputs("regression", 100_000, 0, seed=1)
    _, p_old = outputs("regression", 100_000, 0, seed=2, y=y)
    new, old = (model_curves("regression", y, p, []) for p in (p_new, p_old))
    assert new == model_curves("regression", y, p_new, [])
    assert len(new["scatter"]["actual"]) == len(new["scatter"]["predicted"]) == MAX_SCATTER
    assert new["scatter"]["actual"] == old["scatter"]["actual"]  # same rows for both models
    pairs = {(float(f"{a:.6g}"), float(f"{b:.6g}")) for a, b in zip(y, p_new, strict=True)}
    assert set(zip(new["scatter"]["actual"], new["scatter"]["predicted"], strict=True)) <= pairs
    assert np.mean(new["scatter"]["actual"]) == pytest.approx(50.0, abs=1.5)  # not one end only
    assert sum(new["residuals"]["counts"]) == 100_000


def test_model_curves_regression_outliers_land_in_the_end_bins():
    y = np.linspace(-1.0, 1.0, 1000)
    p = np.zeros(1000)
    p[0] = -1e6  # one residual of about +1e6
    hist = model_curves("regression", y, p, [])["residuals"]
    assert hist["clipped"] == 1 and sum(hist["counts"]) == 1000
    assert hist["edges"][0] == pytest.approx(y[1])  # the lowest residual
    assert 1.0 < hist["edges"][-1] < 2.0  # the outlier (row 0) does not set the range
    assert hist["counts"][-1] >= 1


@pytest.mark.parametrize("y, p", [
    ([1.0, NAN, 3.0], [1.0, 2.0, 3.0]),
    ([1.0, 2.0, 3.0], [1.0, float("-inf"), 3.0]),
    ([], []),
])
def test_model_curves_regression_non_finite_input_gives_empty_plots(y, p):
    assert model_curves("regression", np.array(y), np.array(p), []) == {
        "scatter": {"actual": [], "predicted": []},
        "residuals": {"edges": [], "counts": [], "clipped": 0}}


@pytest.mark.parametrize("kind, k", [("binary", 2), ("multiclass", 20), ("regression", 0)])
def test_model_curves_are_strict_json_and_small_at_100k_rows(kind, k):
    y, p = outputs(kind, 100_000, k, seed=1)
    classes = [f"class_{i}" for i in range(k)]
    text = json.dumps(model_curves(kind, y, p, classes), allow_nan=False)
    assert len(text) < 30_000


def test_model_curves_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown target kind 'ranking'"):
        model_curves("ranking", np.array([1.0]), np.array([1.0]), [])


# --- write_run_card -------------------------------------------------------------------------------

def test_realistic_card_is_small_complete_and_atomic(card, tmp_path):
    out = tmp_path / "cards" / "eval-7"  # created, parents included
    written = write_run_card(card, out)
    assert isinstance(written, RunCard)
    assert sorted(p.name for p in out.iterdir()) == ["run_card.html", "run_card.json"]  # no temps
    sizes = written.html_path.stat().st_size + written.json_path.stat().st_size
    assert written.bytes == sizes < 250_000
    page = written.html_path.read_text()
    assert page.count("<svg") == 4  # ROC, precision-recall, delta, slices
    plots = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert "contender v3 (hist_gradient_boosting), AUC 0.83" in plots[0]  # ROC legends
    assert "champion v2 (logistic_regression), AUC 0.82" in plots[0]
    assert "contender v3 (hist_gradient_boosting), PR AUC 0.71" in plots[1]  # PR legends
    assert "no skill (prevalence 0." in plots[1]
    html_only = without_svg(page)
    assert "<h3>ROC curves</h3>" in html_only
    assert "<h3>Precision-recall curves (positive class: employed)</h3>" in html_only
    assert "target: binary; classes: not employed, employed" in html_only
    assert "<td>roc_auc (primary)</td><td>higher</td><td>0.83</td><td>0.82</td>" in html_only
    assert "<td>log_loss</td><td>lower</td><td>0.47</td>" in html_only
    assert '<div class="outcome reject"><h2>reject: failed guardrail' in html_only
    assert "<td>bootstrap samples</td><td>1000</td>" in html_only
    assert "<td>slice_min_rows</td><td>200</td>" in html_only
    assert "<td>hash</td><td>" + "ab" * 32 in html_only
    assert html_only.count('<tr class="fail">') == 2  # SEX=2 in the slice and guardrail tables
    assert "too few rows (12 &lt; 200)" in html_only
    assert strict_json(written.json_path.read_text()) == card


def test_page_is_offline_only(card, tmp_path):
    page = write_run_card(card, tmp_path).html_path.read_text()
    assert "<script" not in page and "<link" not in page and "src=" not in page
    urls = set(re.findall(r"https?://[^\"' <>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}  # namespaces


def test_rewriting_replaces_the_files_with_identical_bytes(card, tmp_path):
    first = write_run_card(card, tmp_path)
    before = (first.html_path.read_bytes(), first.json_path.read_bytes())
    second = write_run_card(card, tmp_path)
    assert (second.html_path.read_bytes(), second.json_path.read_bytes()) == before
    assert len(list(tmp_path.iterdir())) == 2


def test_a_failed_write_keeps_the_old_card_and_leaves_no_temp_file(card, tmp_path, monkeypatch):
    old = write_run_card(card, tmp_path)
    before = old.json_path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")
    monkeypatch.setattr("mlcore.reports.html.os.replace", broken_replace)
    card["reason"] = "a new reason"
    with pytest.raises(OSError, match="disk full"):
        write_run_card(card, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_card.html", "run_card.json"]
    assert old.json_path.read_bytes() == before


def test_text_values_are_escaped(card, tmp_path):
    card["reason"] = "delta <script>alert('x')</script> & more"
    card["slices"][0]["value"] = "<b>$50k-$100k</b>"  # also: '$' must not trigger mathtext
    page = write_run_card(card, tmp_path).html_path.read_text()
    assert "<script" not in page and "<b>" not in page
    assert "delta &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<td>&lt;b&gt;$50k-$100k&lt;/b&gt;</td>" in page
    plots = "".join(re.findall(r"<svg.*?</svg>", page, flags=re.S))
    assert ">SEX=&lt;b&gt;$50k-$100k&lt;/b&gt;</text>" in plots  # literal text, not mathtext


def test_nan_values_are_null_in_json_and_nan_in_html(card, tmp_path):
    card.update(delta=NAN, ci=[NAN, NAN])
    card["contender"]["metrics"]["log_loss"] = NAN
    card["throughput"]["ratio"] = float("inf")
    written = write_run_card(card, tmp_path)
    data = strict_json(written.json_path.read_text())
    assert data["delta"] is None and data["ci"] == [None, None]
    assert data["contender"]["metrics"]["log_loss"] is None and data["throughput"]["ratio"] is None
    page = written.html_path.read_text()
    assert "<td>delta</td><td>NaN</td>" in page
    assert "<td>log_loss</td><td>lower</td><td>NaN</td>" in page
    assert "metric delta unavailable (NaN)" in page


def test_no_champion_card(card, tmp_path):
    card.update(champion=None, delta=None, ci=None, outcome="promote", promote=True,
                reason="first model: roc_auc 0.83 >= floor 0.75")
    for s in card["slices"]:
        s.update(champion=None, delta=None, ok=None, note="no champion")
    card["throughput"].update(champion=None, ratio=None, ok=None)
    card["guardrails"] = []
    written = write_run_card(card, tmp_path)
    page = written.html_path.read_text()
    assert "contender v3 (hist_gradient_boosting)" in page and "champion v2" not in page
    assert "no champion: judged by the absolute floor alone" in page
    assert '<div class="outcome promote"><h2>promote (promote: yes)' in page
    assert strict_json(written.json_path.read_text())["champion"] is None


def test_card_over_the_size_limit_is_refused_and_nothing_is_written(card, tmp_path):
    card["reason"] = "x" * 600_000  # lands in both files
    out = tmp_path / "card"
    with pytest.raises(ValueError, match="1000000 byte limit"):
        write_run_card(card, out)
    assert not out.exists()


def test_sparse_card_renders(tmp_path):
    """Every optional part missing or None: still a page, with the messages in place of plots."""
    card = {"problem": "p", "evaluation_id": None, "outcome": None, "reason": None,
            "contender": {"version": 1, "roc": {"fpr": [], "tpr": []}, "metrics": {}},
            "champion": None, "slices": [], "throughput": None, "guardrails": None}
    page = write_run_card(card, tmp_path).html_path.read_text()
    assert page.count("<svg") == 4
    assert "ROC curve unavailable" in page and "no slices configured" in page
    assert "precision-recall curve unavailable" in page
    assert '<div class="outcome other">' in page


def test_importing_the_module_stays_light():
    code = ("import sys, mlcore.reports.runcard\n"
            "print(sorted({'matplotlib', 'sklearn', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


# --- cards of each target kind --------------------------------------------------------------------

def test_card_written_before_target_kinds_is_binary_with_its_roc_entry(card, tmp_path):
    del card["target"]
    for seed, role in enumerate(("contender", "champion"), start=1):
        card[role]["roc"] = roc_points(*scores(seed=seed))
        del card[role]["curves"]
    page = write_run_card(card, tmp_path).html_path.read_text()
    plots = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert "contender v3 (hist_gradient_boosting), AUC 0.83" in plots[0]
    assert "champion v2 (logistic_regression), AUC 0.82" in plots[0]
    assert "precision-recall curve unavailable" in plots[1]
    assert "<h3>Precision-recall curves</h3>" in page and "target: binary</p>" in page


def test_multiclass_card_shows_confusion_matrices_and_per_class_tables(card, tmp_path):
    retarget(card, "multiclass", n=3000, k=4)
    page = write_run_card(card, tmp_path).html_path.read_text()
    html_only = without_svg(page)
    assert page.count("<svg") == 2  # delta and slices: the model plots are tables
    for label in ("contender v3 (hist_gradient_boosting)", "champion v2 (logistic_regression)"):
        assert f"<h3>Confusion matrix: {label}</h3>" in html_only
        assert f"<h3>Per-class metrics: {label}</h3>" in html_only
    head = "<tr><th>actual \\ predicted</th>" + "".join(f"<th>class_{i}</th>" for i in range(4))
    assert html_only.count(head) == 2
    assert html_only.count("<tr><th>class_3</th><td") == 2  # a matrix row per model
    assert "target: multiclass; classes: class_0, class_1, class_2, class_3" in html_only
    assert "<td>log_loss (primary)</td><td>lower</td>" in html_only
    assert "<td>f1_macro</td><td>higher</td>" in html_only
    assert "<td>roc_auc_ovr</td><td>higher</td>" in html_only
    assert "<td>roc_auc" + "</td>" not in html_only and "ROC curves" not in html_only
    assert strict_json((tmp_path / "run_card.json").read_text()) == jsonable(card)


def test_multiclass_card_numbers_on_a_hand_computed_case(card, tmp_path):
    card["target"] = {"kind": "multiclass", "classes": ["a", "<b>", "c"]}
    card["contender"]["curves"] = model_curves("multiclass", MC_Y, MC_P, ["a", "<b>", "c"])
    card["champion"] = None
    html_only = without_svg(write_run_card(card, tmp_path).html_path.read_text())
    shade = '<td style="background:rgba(31,119,180,{})">{}</td>'
    assert ("<tr><th>a</th>" + shade.format("0.30", 1) * 2 + "<td>0</td></tr>") in html_only
    assert ("<tr><th>&lt;b&gt;</th><td>0</td>" + shade.format("0.60", 2) + "<td>0</td></tr>"
            in html_only)
    assert "<tr><td>a</td><td>2</td><td>0.5</td><td>0.5</td><td>0.5</td><td>0.65</td></tr>" \
        in html_only
    assert "<tr><td>c</td><td>3</td><td>1</td><td>0.66667</td><td>0.8</td><td>0.83333</td>" \
        in html_only
    assert "<b>" not in html_only and "Confusion matrix: champion" not in html_only


def test_multiclass_card_with_non_finite_outputs_says_so(card, tmp_path):
    retarget(card, "multiclass", n=500, k=3)
    card["contender"]["curves"] = model_curves("multiclass", MC_Y, np.full((7, 3), NAN), [])
    html_only = without_svg(write_run_card(card, tmp_path).html_path.read_text())
    assert html_only.count("confusion matrix unavailable") == 1  # the champion's is shown
    assert html_only.count("per-class metrics unavailable") == 1
    assert html_only.count("<tr><th>class_2</th><td") == 1


def test_regression_card_shows_scatter_and_residuals(card, tmp_path):
    retarget(card, "regression", n=3000)
    page = write_run_card(card, tmp_path).html_path.read_text()
    html_only = without_svg(page)
    plots = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(plots) == 5  # two scatters, residuals, delta, slices
    assert "<h3>Predicted against actual</h3>" in html_only and "<h3>Residuals</h3>" in html_only
    assert f"contender v3 (hist_gradient_boosting), {MAX_SCATTER} sampled rows" in plots[0]
    assert f"champion v2 (logistic_regression), {MAX_SCATTER} sampled rows" in plots[1]
    assert "y = x" in plots[0] and "y = x" in plots[1]
    assert "residual (actual - predicted)" in plots[2]
    assert "contender v3" in plots[2] and "champion v2" in plots[2]
    assert "target: regression</p>" in html_only
    assert "<td>rmse (primary)</td><td>lower</td>" in html_only
    assert "<td>r2</td><td>higher</td>" in html_only and "<td>mape</td><td>lower</td>" in html_only
    assert "roc_auc" not in html_only and "ROC curves" not in html_only
    assert strict_json((tmp_path / "run_card.json").read_text()) == jsonable(card)


def test_regression_card_without_champion_and_with_non_finite_outputs(card, tmp_path):
    retarget(card, "regression", n=1000)
    card["champion"] = None
    card["contender"]["curves"] = model_curves("regression", np.array([1.0, 2.0]),
                                               np.array([NAN, 2.0]), [])
    page = write_run_card(card, tmp_path).html_path.read_text()
    assert page.count("<svg") == 4  # one scatter (a message), residuals (a message), delta, slices
    assert "contender: predicted against actual unavailable (non-finite values)" in page
    assert "residuals unavailable (non-finite values)" in page and "champion v2" not in page


def test_card_of_an_unknown_kind_still_renders(card, tmp_path):
    card["target"] = {"kind": "ranking", "classes": []}
    page = write_run_card(card, tmp_path).html_path.read_text()
    assert "no model plots for target kind ranking" in page and page.count("<svg") == 2


@pytest.mark.parametrize("kind, k, n", [
    ("binary", 2, 100_000), ("multiclass", 20, 100_000), ("regression", 0, 100_000),
    ("multiclass", 200, 20_000),  # the size grows with classes (capped), not with rows
])
def test_cards_stay_small_at_100k_rows(card, tmp_path, kind, k, n):
    retarget(card, kind, n=n, k=k)
    written = write_run_card(card, tmp_path)
    assert written.bytes < MAX_BYTES // 2
    page = written.html_path.read_text()
    if kind == "multiclass":
        labels = card["contender"]["curves"]["labels"]
        assert len(labels) == min(k, MAX_CLASSES) and f"<th>{labels[0]}</th>" in page
        assert (f"other ({k - MAX_CLASSES + 1} classes)" in page) == (k > MAX_CLASSES)


def test_the_card_links_back_to_the_view_and_the_airflow_run(card, tmp_path):
    """A card under <home>/reports/problem=<p>/evaluation=<n>/: three levels up is the view."""
    from mlcore.reports.html import links

    env = {"AIRFLOW_CTX_DAG_ID": f"{card['problem']}__retrain_model",
           "AIRFLOW_CTX_DAG_RUN_ID": "manual__2"}
    page = write_run_card({**card, "links": links(card["problem"], env)},
                          tmp_path).html_path.read_text()
    assert (f"<nav><a href='../../../problems/{card['problem']}'>← {card['problem']} in the "
            "Batchloop view</a> · <a href='../../../../dags/") in page
    assert "runs/manual__2'>Airflow run manual__2</a></nav>" in page
    assert "<nav>" not in write_run_card(card, tmp_path / "bare").html_path.read_text()
