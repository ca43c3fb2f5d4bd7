"""No batch left behind (``mlcore.backlog``), on SQLite and PostgreSQL: what each stage is
missing, what a run triggered by events does (skip what is done, catch up what is missing), and
which batches are stalled past the spec's deadline. The real-scheduler version (paused consumers,
lost events, the sweep) is ``tests/e2e/test_scheduler.py``."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from mlcore.backlog import CATCH_UP_PER_RUN, batches_to_run, missing, stalled
from mlcore.data.io import read_curated
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.preprocessing import build_pipeline
from mlcore.model.registry import move_alias, register_version
from mlcore.model.splits import DatasetRef
from mlcore.monitoring import detect_drift
from mlcore.scoring import score_batch
from mlcore.store.catalog import get_batch
from mlcore.training import save_artifact


def _ids(found) -> list[str]:
    return [m.batch_id for m in found]


def _ingest(spec, settings, source, batch_id: str, tmp_path, offset: int) -> None:
    """``source``'s rows under new keys (no key shared with another batch)."""
    frame = pd.read_parquet(source)
    frame["id"] = frame["id"] + offset
    path = tmp_path / f"{batch_id}.parquet"
    frame.to_parquet(path, index=False)
    ingest_batch(spec, str(path), batch_id, settings)


def _champion(spec, settings, batch_id: str) -> int:
    curated = read_curated(get_batch(spec.name, batch_id, settings.db_url))
    pipe = build_pipeline(spec, "logistic_regression", 0, {}).fit(
        curated[spec.feature_names], curated[spec.target.name])
    uri, sha = save_artifact(pipe, settings, spec.name)
    version = register_version(
        spec, settings, algorithm="logistic_regression", artifact_uri=uri, artifact_sha256=sha,
        hyperparameters={}, train_rows=len(curated), validation={}, timings={},
        dataset=DatasetRef("d" * 16, "/x/t.parquet", "/x/h.parquet", [batch_id], [batch_id],
                           "entity_hash", 1, 1, "a" * 64, "b" * 64))
    move_alias(spec.name, expected=None, new=version, reason="t", url=settings.db_url,
               settings=settings)
    return version


def test_each_stage_sees_what_it_is_missing_and_events_never_redo(spec, slices, settings,
                                                                  tmp_path):
    url = settings.db_url
    _ingest(spec, settings, slices[2015], "old", tmp_path, 0)
    materialize_batch(spec, "old", settings)
    assert [missing(spec.name, s, url) for s in ("materialize", "score", "monitor")] == [[], [], []]

    _ingest(spec, settings, slices[2016], "b1", tmp_path, 10_000_000)
    _ingest(spec, settings, slices[2017], "b2", tmp_path, 20_000_000)
    assert _ids(missing(spec.name, "materialize", url)) == ["b1", "b2"]  # oldest event first
    # a run triggered by b2's event takes b1 up too (its event was lost)
    assert batches_to_run(spec.name, "materialize", ["b2"], url) == (["b2", "b1"], [], ["b1"])
    for b in ("b1", "b2"):
        materialize_batch(spec, b, settings)
    # b1's own event comes later: already done, nothing missing -> nothing to run
    assert batches_to_run(spec.name, "materialize", ["b1"], url) == ([], ["b1"], [])

    # no champion yet: nothing can be scored; a champion that appears later does not make the
    # batches materialized before it "missing" (a backfill scores those)
    assert missing(spec.name, "score", url) == []
    champion = _champion(spec, settings, "old")
    assert missing(spec.name, "score", url) == []
    _ingest(spec, settings, slices[2018], "b3", tmp_path, 30_000_000)
    materialize_batch(spec, "b3", settings)
    assert _ids(missing(spec.name, "score", url)) == ["b3"]
    score_batch(spec, "b3", settings)
    assert missing(spec.name, "score", url) == []
    assert batches_to_run(spec.name, "score", ["b3"], url) == ([], ["b3"], [])
    # scored by the champion, not drift-checked against it: monitoring is what it misses
    assert _ids(missing(spec.name, "monitor", url)) == ["b3"]
    detect_drift(spec, "b3", settings)
    assert missing(spec.name, "monitor", url) == []
    assert champion > 0


def test_a_run_catches_up_a_bounded_number_oldest_first(spec, slices, settings, tmp_path):
    url = settings.db_url
    n = CATCH_UP_PER_RUN + 2
    for i in range(n):
        _ingest(spec, settings, slices[2015], f"c{i:02d}", tmp_path, 1_000_000 * (i + 1))
    run, done, extra = batches_to_run(spec.name, "materialize", ["c05"], url)
    assert run[0] == "c05" and done == [] and len(extra) == CATCH_UP_PER_RUN
    assert "c05" not in extra and extra == sorted(extra)


def test_stalled_batches_are_those_past_the_stage_deadline(spec, slices, settings, tmp_path):
    _ingest(spec, settings, slices[2015], "s1", tmp_path, 0)
    [waiting] = missing(spec.name, "materialize", settings.db_url)
    tight = spec.model_copy(update={"alerts": spec.alerts.model_copy(
        update={"deadline_minutes": {"materialize_features": 30}})})
    assert stalled(tight, settings.db_url, now=waiting.ready_since + timedelta(minutes=29)) == []
    late = stalled(tight, settings.db_url, now=waiting.ready_since + timedelta(minutes=31))
    assert [(m.batch_id, m.stage) for m in late] == [("s1", "materialize")]
    no_deadline = spec.model_copy(update={"alerts": spec.alerts.model_copy(
        update={"deadline_minutes": {}})})
    assert stalled(no_deadline, settings.db_url,
                   now=waiting.ready_since + timedelta(days=30)) == []


def test_an_unknown_stage_is_refused(spec, settings):
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        missing(spec.name, "train", settings.db_url)
