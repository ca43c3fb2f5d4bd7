"""Run card: ROC points; the HTML/JSON pair (size, atomic write, escaping, NaN, no champion)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from mlcore.runcard import RunCard, roc_points, write_run_card

ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")


def scores(n: int = 5000, seed: int = 0, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and continuous scores (all distinct, so the full ROC curve has ~n points)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.normal(shift * y, 1.0)


def model(version: int, algorithm: str, auc: float, seed: int) -> dict:
    return {"version": version, "algorithm": algorithm,
            "metrics": {"roc_auc": auc, "accuracy": 0.76, "log_loss": 0.47},
            "rows_per_second": 350000.0, "roc": roc_points(*scores(seed=seed))}


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


# --- write_run_card -------------------------------------------------------------------------------

def test_realistic_card_is_small_complete_and_atomic(card, tmp_path):
    out = tmp_path / "cards" / "eval-7"  # created, parents included
    written = write_run_card(card, out)
    assert isinstance(written, RunCard)
    assert sorted(p.name for p in out.iterdir()) == ["run_card.html", "run_card.json"]  # no temps
    sizes = written.html_path.stat().st_size + written.json_path.stat().st_size
    assert written.bytes == sizes < 200_000
    page = written.html_path.read_text()
    assert page.count("<svg") == 3
    assert "contender v3 (hist_gradient_boosting)" in page  # ROC legends
    assert "champion v2 (logistic_regression)" in page
    html_only = without_svg(page)
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
    monkeypatch.setattr("mlcore.runcard.os.replace", broken_replace)
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
    assert "<td>delta</td><td>NaN</td>" in page and "<td>log_loss</td><td>NaN</td>" in page
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
    assert page.count("<svg") == 3
    assert "ROC curve unavailable" in page and "no slices configured" in page
    assert '<div class="outcome other">' in page


def test_importing_the_module_stays_light():
    code = ("import sys, mlcore.runcard\n"
            "print(sorted({'matplotlib', 'sklearn', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"
