"""A drift check that cannot reach a verdict fails loudly and records nothing: mismatched
reference/current columns, a tampered reference profile, Evidently raising, the budget spent.
Never "no drift". Versions trained before profiles existed fall back to their training batches.

Runs in the shared ``loop`` home, under its own batch IDs (``dfault_*``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from sqlalchemy import select

import mlcore.model.drift as drift
import mlcore.monitoring as monitoring
from mlcore.data.curation import curate
from mlcore.ingestion import ingest_batch
from mlcore.model.drift import DriftCheckFailed, check_columns, stattests
from mlcore.model.reference import profile_path
from mlcore.monitoring import DriftBudgetExceeded, detect_drift, measure_drift
from mlcore.store.models import DriftReport
from mlcore.store.session import session_scope

DATA = Path(__file__).resolve().parents[2] / "data" / "census_ma_employment"
BATCH = "dfault_batch"


@pytest.fixture(scope="module")
def home(spec, loop, tmp_path_factory):
    """Two batches of further real 2015 rows (ids unseen by the loop) in the loop home."""
    folder = tmp_path_factory.mktemp("drift_faults")
    raw = pd.read_parquet(DATA / "employment_2015.parquet").drop(columns=["employed"])
    for batch_id, start in ((BATCH, 4500), ("dfault_fallback", 6000)):
        path = folder / f"{batch_id}.parquet"
        raw.iloc[start:start + 1500].to_parquet(path, index=False)
        ingest_batch(spec, str(path), batch_id, loop.settings)
    return loop.settings


def nothing_recorded(settings, batch_id: str = BATCH) -> bool:
    with session_scope(settings.db_url) as s:
        return s.scalar(select(DriftReport).where(DriftReport.batch_id == batch_id)) is None


@pytest.fixture
def champion_with(monkeypatch, tmp_path):
    """Make the champion look as if its record held ``profile`` (a frame written to a temp
    file, with its real hash unless ``sha`` is given), or no profile at all (``None``)."""
    real = monitoring.get_version

    def install(profile: pd.DataFrame | None, sha: str | None = None) -> None:
        def fake(problem, version, url):
            mv = real(problem, version, url)
            record = {k: v for k, v in mv.reproducibility.items() if k != "reference_profile"}
            if profile is not None:
                path = tmp_path / "reference.parquet"
                profile.to_parquet(path, index=False)
                real_sha = hashlib.sha256(path.read_bytes()).hexdigest()
                record["reference_profile"] = {"uri": str(path), "sha256": sha or real_sha}
            return SimpleNamespace(
                problem=mv.problem, version=mv.version, artifact_uri=mv.artifact_uri,
                artifact_sha256=mv.artifact_sha256, training_batch_ids=mv.training_batch_ids,
                reproducibility=record)

        monkeypatch.setattr(monitoring, "get_version", fake)

    return install


@pytest.fixture(scope="module")
def profile(spec, loop):
    from mlcore.model.registry import get_version

    mv = get_version(spec.name, loop.contender.version, loop.settings.db_url)
    return pd.read_parquet(profile_path(mv, mv.reproducibility["reference_profile"]))


def test_a_reference_missing_a_column_raises_instead_of_no_drift(spec, home, profile,
                                                                champion_with):
    champion_with(profile.drop(columns=["MAR"]))
    with pytest.raises(DriftCheckFailed, match=rf"batch '{BATCH}'.*MAR missing from the "
                                               "reference.*no drift verdict"):
        detect_drift(spec, BATCH, home)
    assert nothing_recorded(home)


def test_a_dtype_kind_mismatch_raises(spec, home, profile, champion_with):
    # (categories compare as text on both sides; a numeric column stored as text cannot)
    champion_with(profile.assign(AGEP=profile["AGEP"].astype(str)))
    with pytest.raises(DriftCheckFailed, match=rf"batch '{BATCH}'.*AGEP is object in the "
                                               "reference but float64 now"):
        detect_drift(spec, BATCH, home)
    assert nothing_recorded(home)


def test_a_tampered_reference_profile_is_refused(spec, home, profile, champion_with):
    champion_with(profile, sha="0" * 64)
    with pytest.raises(DriftCheckFailed, match=rf"batch '{BATCH}': .*reference profile .* does "
                                               "not match its recorded SHA-256"):
        detect_drift(spec, BATCH, home)
    assert nothing_recorded(home)


@pytest.mark.parametrize("change, message", [
    (lambda r, c: (r, c.drop(columns=["AGEP"])), "AGEP missing from the current batch"),
    (lambda r, c: (r.drop(columns=["prediction"]), c), "prediction missing from the reference"),
    (lambda r, c: (r, c.assign(MAR=c["MAR"].astype(float))), "MAR is int64 in the reference "
                                                              "but float64 now"),
    (lambda r, c: (r.assign(AGEP="x"), c.assign(AGEP="y")), "AGEP must be numeric"),
])
def test_column_mismatches_name_the_batch_and_columns(spec, slices, change, message):
    frame = curate(pd.read_parquet(slices[2015]), spec).assign(prediction=0.5)
    reference, current = change(frame, frame.copy())
    with pytest.raises(DriftCheckFailed, match=rf"batch 'b7'.*{message}"):
        check_columns(reference, current, stattests(spec), "b7")


def test_a_numeric_column_may_be_int_on_one_side(spec, slices):
    frame = curate(pd.read_parquet(slices[2015]), spec).assign(prediction=0.5)
    check_columns(frame, frame.assign(AGEP=frame["AGEP"].astype("int64")), stattests(spec), "b")


def test_evidently_failing_fails_the_check(spec, home, monkeypatch):
    from evidently.core.report import Report

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated Evidently crash")

    monkeypatch.setattr(Report, "run", broken)
    with pytest.raises(DriftCheckFailed, match=rf"batch '{BATCH}': Evidently failed "
                                               r"\(RuntimeError: simulated Evidently crash\)"):
        detect_drift(spec, BATCH, home)
    assert nothing_recorded(home)


def test_evidently_giving_no_score_fails_the_check(spec, home, monkeypatch):
    real = drift.json.loads

    def no_scores(text, *args, **kwargs):
        raw = real(text, *args, **kwargs)
        for m in raw.get("metrics", []):
            m["value"] = float("nan")
        return raw

    monkeypatch.setattr(drift.json, "loads", no_scores)
    with pytest.raises(DriftCheckFailed, match=rf"batch '{BATCH}': .*no finite drift score"):
        detect_drift(spec, BATCH, home)
    assert nothing_recorded(home)


def test_over_budget_fails_the_check(spec, home):
    tight = spec.model_copy(update={"drift": spec.drift.model_copy(
        update={"budget_seconds": 0.001})})
    with pytest.raises(DriftBudgetExceeded, match=rf"batch '{BATCH}': drift check over its "
                                                  r"budget \(.* > 0.001 s"):
        detect_drift(tight, BATCH, home)
    assert issubclass(DriftBudgetExceeded, DriftCheckFailed)
    assert nothing_recorded(home)


def test_the_budget_is_checked_after_every_evidently_run(spec, slices):
    frame = curate(pd.read_parquet(slices[2015]), spec).assign(prediction=0.5)
    stages: list[str] = []
    measure_drift(frame, frame.copy(), spec, stages.append)
    assert stages == ["all columns", "segment SEX=1", "segment SEX=2"]


def test_a_version_without_a_profile_falls_back_to_its_training_batches(spec, home,
                                                                       champion_with):
    champion_with(None)
    result = detect_drift(spec, "dfault_fallback", home)
    assert result.details["reference"] == {"source": "training_batches",  # 2017's early rows
                                           "batches": ["2015", "2016", "2017"]}
    assert result.details["rows"]["reference"] == 4500
    assert not result.dataset_drift and not result.prediction_drift
    assert not nothing_recorded(home, "dfault_fallback")
