"""The retrain policy on SQLite and PostgreSQL: each trigger with its numbers, several at once
make one request, a pending request absorbs later ones, the cooldown holds back, concurrent
monitors file one request, and the single-flight lease."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from registry_stub import register_stub
from sqlalchemy import func, select, update

from mlcore.model.registry import move_alias
from mlcore.policy import (
    RetrainInFlight,
    acquire_lease,
    assess,
    close_retrain_requests,
    list_requests,
    release_lease,
    request_manual,
)
from mlcore.problems import ProblemSpec
from mlcore.store.models import (
    Batch,
    Evaluation,
    PerformanceReport,
    RetrainLease,
    RetrainRequest,
)
from mlcore.store.session import session_scope

P = "census_employment"


def year_end(year: int) -> datetime:
    return datetime(year, 12, 31, tzinfo=UTC)


def add_batch(url: str, batch_id: str, year: int, rows: int = 1000) -> None:
    with session_scope(url) as s:
        s.add(Batch(problem=P, batch_id=batch_id, source_uri="file:///x", sha256="e" * 64,
                    row_count=rows, schema_hash="c" * 64, schema={"employed": "int64"},
                    quarantine_count=0, state="published", event_time_min=year_end(year),
                    event_time_max=year_end(year)))


@pytest.fixture
def world(spec, settings):
    """Batches 2015 and 2016 published; champion v1 trained on 2015 with holdout AUC 0.85."""
    url = settings.db_url
    add_batch(url, "2015", 2015)
    add_batch(url, "2016", 2016)
    version = register_stub(spec, settings, algorithm="lr", artifact_uri="/x/m",
                            rows=(800, 200))
    with session_scope(url) as s:
        s.add(Evaluation(problem=P, contender_version=version, champion_version=None,
                         holdout_batch_ids=["2015"], holdout_hash="b" * 64, holdout_rows=200,
                         metric="roc_auc", contender_metrics={"roc_auc": 0.85},
                         champion_metrics=None, thresholds={}, promote=True, outcome="promote",
                         reason="first"))
    move_alias(P, expected=None, new=version, reason="first", url=url)
    return settings


def rule(spec, **retrain) -> ProblemSpec:
    """The spec with the given retrain knobs; by default only what a test turns on fires."""
    base = {"schedule": None, "new_data_rows": None, "cooldown_days": 7.0}
    return ProblemSpec.model_validate({**spec.model_dump(),
                                       "retrain": {**spec.retrain.model_dump(), **base,
                                                   **retrain}})


def drift(batch_id: str, share: float = 0.6) -> dict:
    return {"batch_id": batch_id, "dataset_drift": share >= 0.5, "prediction_drift": False,
            "drift_share": share, "drifted_columns": ["AGEP", "SCHL"]}


def count(url, state=None) -> int:
    with session_scope(url) as s:
        q = select(func.count()).select_from(RetrainRequest)
        return s.scalar(q if state is None else q.where(RetrainRequest.state == state))


def test_nothing_fires_without_evidence(spec, world):
    d = assess(rule(spec), "2016", world)
    assert (d.action, d.request_id, d.fired) == ("none", None, [])
    assert count(world.db_url) == 0


def test_the_schedule_fires_on_a_cron_tick_since_the_champions_data(spec, world):
    d = assess(rule(spec, schedule="0 6 * * 1"), "2016", world)
    assert d.action == "filed" and [t["name"] for t in d.fired] == ["schedule"]
    assert "was due at 2016-01-04 06:00 UTC" in d.reason  # first Monday after 2015-12-31
    # a yearly schedule whose next tick is after the batch: nothing
    assert not assess(rule(spec, schedule="0 0 1 1 *", cooldown_days=0), "2015", world).fired


def test_drift_fires_with_its_numbers(spec, world):
    d = assess(rule(spec), "2016", world, drift("2016", 0.6))
    assert d.action == "filed" and d.fired[0]["numbers"]["drift_share"] == 0.6
    assert "60% of features drifted (AGEP, SCHL)" in d.reason
    assert assess(rule(spec), "2016", world, drift("2016", 0.1)).action == "none"


@pytest.mark.parametrize("matured, fires", [(0.82, True), (0.84, False)])
def test_a_performance_drop_on_matured_labels_fires(spec, world, matured, fires):
    with session_scope(world.db_url) as s:
        s.add(PerformanceReport(problem=P, batch_id="2016", model_version=1, role="champion",
                                metric="roc_auc", value=matured, predicted_rows=1000,
                                matured_rows=1000, labelled_rows=900))
    d = assess(rule(spec, performance_drop=0.02), "2016", world)
    assert ([t["name"] for t in d.fired] == ["performance"]) is fires
    if fires:
        assert d.fired[0]["numbers"]["drop"] == pytest.approx(0.03)


@pytest.mark.parametrize("estimate, fires", [(0.80, True), (0.84, False)])
def test_an_estimated_drop_before_labels_fires_when_the_spec_asks(spec, world, estimate, fires):
    from mlcore.store.models import PerformanceEstimate

    with session_scope(world.db_url) as s:
        s.add(PerformanceEstimate(problem=P, batch_id="2016", model_version=1, role="champion",
                                  metric="roc_auc", estimate=estimate, ci_low=estimate - 0.01,
                                  ci_high=estimate + 0.01, rows=1000, method="cbpe"))
    assert not assess(rule(spec), "2016", world).fired  # off by default
    d = assess(rule(spec, estimated_performance_drop=0.02), "2016", world)
    assert ([t["name"] for t in d.fired] == ["estimate"]) is fires
    if fires:
        assert d.fired[0]["numbers"]["drop"] == pytest.approx(0.05)
        assert "estimated before labels on batch 2016 is 0.8000" in d.reason


def test_new_labelled_data_fires_over_its_threshold(spec, world):
    add_batch(world.db_url, "2017", 2017, rows=5000)
    assert not assess(rule(spec, new_data_rows=7000), "2017", world).fired
    d = assess(rule(spec, new_data_rows=6000), "2017", world)
    assert d.fired[0]["name"] == "new_data" and d.fired[0]["numbers"]["rows"] == 6000


def test_two_triggers_at_once_make_one_request_and_later_ones_merge(spec, world):
    url = world.db_url
    both = rule(spec, schedule="0 6 * * 1")
    first = assess(both, "2016", world, drift("2016"))
    assert first.action == "filed" and [t["name"] for t in first.fired] == ["schedule", "drift"]
    add_batch(url, "2017", 2017)
    again = assess(both, "2017", world, drift("2017"))
    assert (again.action, again.request_id) == ("merged", first.request_id)
    [request] = list_requests(P, url)
    assert request["triggers"] == ["schedule", "drift"] and "batch 2017" in request["reason"]
    assert count(url) == 1


def test_the_cooldown_holds_back_a_new_request(spec, world):
    url = world.db_url
    add_batch(url, "2016b", 2016)  # same data time as 2016
    first = assess(rule(spec), "2016", world, drift("2016"))
    with session_scope(url) as s:  # the retrain answered it
        s.execute(update(RetrainRequest).values(state="trained", resolved_by_version=1))
    held = assess(rule(spec), "2016b", world, drift("2016b"))
    assert held.action == "cooldown" and held.request_id is None
    assert f"request #{first.request_id}" in held.reason
    assert count(url) == 1
    add_batch(url, "2017", 2017)
    assert assess(rule(spec), "2017", world, drift("2017")).action == "filed"
    assert count(url) == 2


def test_the_cooldown_measures_the_gap_when_data_arrives_out_of_order(spec, world):
    """A request for 2017's data, then a late batch: a year earlier is a year apart (filed),
    not "less than 7 days before"; a late batch 3 days earlier is within the cooldown."""
    url = world.db_url
    add_batch(url, "2017", 2017)
    first = assess(rule(spec), "2017", world, drift("2017"))
    with session_scope(url) as s:
        s.execute(update(RetrainRequest).values(state="trained", resolved_by_version=1))
    with session_scope(url) as s:
        s.add(Batch(problem=P, batch_id="late3", source_uri="file:///x", sha256="e" * 64,
                    row_count=10, schema_hash="c" * 64, schema={"employed": "int64"},
                    quarantine_count=0, state="published",
                    event_time_min=year_end(2017) - timedelta(days=3),
                    event_time_max=year_end(2017) - timedelta(days=3)))
    held = assess(rule(spec), "late3", world, drift("late3"))
    assert held.action == "cooldown" and f"request #{first.request_id}" in held.reason
    assert "3.0 days from this batch's" in held.reason
    late = assess(rule(spec), "2016", world, drift("2016"))  # 365 days before 2017's data
    assert late.action == "filed"


def test_new_data_counts_late_batches_the_champion_did_not_train_on(spec, world):
    add_batch(world.db_url, "2014", 2014, rows=3000)  # older than the champion's data
    d = assess(rule(spec, new_data_rows=3000), "2014", world)
    assert d.fired[0]["name"] == "new_data" and d.fired[0]["numbers"]["rows"] == 3000
    assert "did not train on" in d.fired[0]["reason"]


def test_concurrent_monitors_file_exactly_one_request(spec, world):
    url, errors, actions = world.db_url, [], []
    for i in range(8):
        add_batch(url, f"c{i}", 2016)

    def monitor(batch_id: str) -> None:
        try:
            actions.append(assess(rule(spec), batch_id, world, drift(batch_id)).action)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=monitor, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(actions).count("filed") == 1 and len(actions) == 8
    assert count(url, "pending") == 1


def test_the_lease_is_single_flight_renewable_and_expires(world):
    url = world.db_url
    acquire_lease(P, "run-a", url, hours=1)
    with pytest.raises(RetrainInFlight, match="run-a"):
        acquire_lease(P, "run-b", url, hours=1)
    acquire_lease(P, "run-a", url, hours=1)  # a retry of the same run renews
    assert release_lease(P, "run-b", url) is False
    with session_scope(url) as s:  # run-a crashed long ago
        s.execute(update(RetrainLease).values(expires_at=datetime.now(UTC) - timedelta(hours=1)))
    acquire_lease(P, "run-b", url, hours=1)
    assert release_lease(P, "run-b", url) is True
    acquire_lease(P, "run-c", url, hours=1)


def test_concurrent_lease_takers_get_exactly_one(world):
    url, won, lost = world.db_url, [], []

    def take(i: int) -> None:
        try:
            acquire_lease(P, f"run-{i}", url, hours=1)
            won.append(i)
        except RetrainInFlight:
            lost.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7


def test_assessing_the_same_batch_again_adds_no_second_reason(spec, world):
    first = assess(rule(spec), "2016", world, drift("2016"))
    again = assess(rule(spec), "2016", world, drift("2016"))  # e.g. after its labels arrived
    assert (again.action, again.request_id) == ("merged", first.request_id)
    [request] = list_requests(P, world.db_url)
    assert request["reason"] == first.reason


def test_filing_the_same_manual_request_twice_keeps_one_reason(world):
    first = request_manual(P, "new features", world.db_url)
    assert request_manual(P, "new features", world.db_url) == first
    assert request_manual(P, "bad labels", world.db_url) == first
    [request] = list_requests(P, world.db_url)
    assert request["reason"] == "manual: new features | manual: bad labels"


def test_a_failed_drift_check_holds_promotion(world):
    from mlcore.policy import promotion_hold
    from mlcore.store.models import DriftReport, Prediction

    url = world.db_url
    assert promotion_hold(P, url) is None  # nothing scored yet
    with session_scope(url) as s:
        s.add(Prediction(problem=P, batch_id="2016", entity_key="1", model_version=1,
                         score=0.5))
    hold = promotion_hold(P, url)
    assert hold and "batch 2016" in hold and "v1" in hold  # scored, drift check missing
    with session_scope(url) as s:
        s.add(DriftReport(problem=P, batch_id="2016", model_version=1, drift_share=0.0,
                          drifted_columns=[], dataset_drift=False, json_uri="j", html_uri="h"))
    assert promotion_hold(P, url) is None


def test_close_retrain_requests_answers_the_pending_one(spec, sqlite_settings):
    """At most one request per problem is pending (the store enforces it)."""
    with session_scope(sqlite_settings.db_url) as s:
        s.add_all([RetrainRequest(problem=spec.name, trigger="drift", reason="a"),
                   RetrainRequest(problem=spec.name, trigger="manual", reason="b", state="taken"),
                   RetrainRequest(problem="other", trigger="drift", reason="c")])
    assert close_retrain_requests(spec.name, 4, sqlite_settings.db_url) == 1
    with session_scope(sqlite_settings.db_url) as s:
        rows = {r.reason: (r.state, r.resolved_by_version) for r in s.scalars(
            select(RetrainRequest))}
    assert rows == {"a": ("trained", 4), "b": ("taken", None), "c": ("pending", None)}
    assert close_retrain_requests(spec.name, 5, sqlite_settings.db_url) == 0
