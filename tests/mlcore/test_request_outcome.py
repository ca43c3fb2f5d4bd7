"""A retrain request is answered even by failure (SQLite and PostgreSQL): the run that takes it
records itself; a failed or timed-out run fails it with the error and the run; a failed request
absorbs no trigger and holds no cooldown, so the next trigger files a new one."""

from __future__ import annotations

import test_policy
from sqlalchemy import select
from test_policy import P, add_batch, drift, rule

from mlcore.policy import (
    acquire_lease,
    assess,
    claim_trained,
    fail_requests,
    list_requests,
    release_lease,
    request_manual,
    take_requests,
)
from mlcore.store.models import RetrainLease
from mlcore.store.session import session_scope

world = test_policy.world  # the policy tests' fixture: batches 2015, 2016 and champion v1
RUN, HOLDER = "manual__2026-12-06T00:00:00+00:00", f"{P}__retrain_model/manual__2026-12-06"


def by_id(url: str) -> dict[int, dict]:
    return {r["id"]: r for r in list_requests(P, url)}


def test_a_failed_run_fails_its_request_and_the_next_trigger_files_a_new_one(spec, world):
    url, spec = world.db_url, rule(spec, cooldown_days=7.0)
    add_batch(url, "2016b", 2016)  # the same data time: well within the cooldown
    first = assess(spec, "2016", world, drift=drift("2016"))
    [taken] = take_requests(P, HOLDER, RUN, url)
    assert (taken["id"], taken["state"], taken["run_id"]) == (first.request_id, "pending", RUN)
    # While the run trains, a trigger still merges into the request it answers.
    assert assess(spec, "2016b", world, drift=drift("2016b")).action == "merged"

    assert fail_requests(P, RUN, "build_dataset: NotEnoughData: too few rows", url) == [
        first.request_id]

    failed = by_id(url)[first.request_id]
    assert (failed["state"], failed["run_id"]) == ("failed", RUN)
    assert failed["error"] == "build_dataset: NotEnoughData: too few rows"
    assert failed["resolved_at"] is not None
    again = assess(spec, "2016b", world, drift=drift("2016b"))
    assert again.action == "filed" and again.request_id != first.request_id  # no cooldown
    assert by_id(url)[again.request_id]["state"] == "pending"
    # The next trigger merges into the new request, never into the failed one.
    assert assess(spec, "2016", world, drift=drift("2016")).request_id == again.request_id


def test_the_first_error_stays_and_other_runs_requests_are_untouched(world):
    url = world.db_url
    mine = request_manual(P, "try it", url)
    take_requests(P, HOLDER, RUN, url)
    assert fail_requests(P, RUN, "train_contender: ValueError: boom", url) == [mine]
    assert fail_requests(P, RUN, "run failed (task_failure)", url) == []  # the sweep, later
    assert by_id(url)[mine]["error"] == "train_contender: ValueError: boom"

    other = request_manual(P, "again", url)  # filed after the run: not its request
    assert fail_requests(P, RUN, "late", url) == []
    assert by_id(url)[other]["state"] == "pending" and by_id(url)[other]["run_id"] is None


def test_a_run_that_fails_after_training_fails_what_its_training_closed(world):
    from mlcore.policy import close_retrain_requests

    url = world.db_url
    taken = request_manual(P, "taken at start", url)
    take_requests(P, HOLDER, RUN, url)
    close_retrain_requests(P, 2, url)  # training registered v2 and closed it ...
    late = request_manual(P, "filed while training", url)
    close_retrain_requests(P, 2, url)  # ... (a request filed mid-run is closed too)
    assert claim_trained(P, RUN, 2, url) == 1  # the DAG records its run on the late one

    assert sorted(fail_requests(P, RUN, "evaluate_contender: boom", url)) == [taken, late]
    rows = by_id(url)
    assert {rows[i]["state"] for i in (taken, late)} == {"failed"}
    assert rows[taken]["resolved_by_version"] == 2  # what it trained is kept for the record


def test_a_long_error_is_clipped(world):
    url = world.db_url
    request_manual(P, "x", url)
    take_requests(P, HOLDER, RUN, url)
    fail_requests(P, RUN, "E" * 5000, url)
    [row] = list_requests(P, url)
    assert len(row["error"]) == 2000 and row["error"].endswith("…")


def test_a_request_left_by_a_crashed_run_is_taken_by_the_next(world):
    url = world.db_url
    request_id = request_manual(P, "x", url)
    take_requests(P, HOLDER, RUN, url)  # its run vanished without any callback
    [taken] = take_requests(P, "other/holder", "manual__next", url)
    assert (taken["id"], taken["run_id"], taken["taken_by"]) == (
        request_id, "manual__next", "other/holder")


def test_the_lease_of_a_failed_run_is_released_by_its_holder_only(world):
    url = world.db_url
    acquire_lease(P, HOLDER, url, hours=6)
    assert release_lease(P, "someone/else", url) is False
    assert release_lease(P, HOLDER, url) is True
    with session_scope(url) as s:
        assert s.scalars(select(RetrainLease)).all() == []


def test_reports_show_a_failed_request_with_its_error_and_run(world):
    from mlcore.reporting import format_summary, summary
    from mlcore.reports.monitoring_data import collect

    url = world.db_url
    request_id = request_manual(P, "by hand", url)
    take_requests(P, HOLDER, RUN, url)
    fail_requests(P, RUN, "build_dataset: NotEnoughData: no rows", url)

    text = format_summary(summary(P, world))
    assert f"#{request_id:<3}" in text and " failed" in text
    assert f"failed in run {RUN}: build_dataset: NotEnoughData: no rows" in text
    [decision] = [d for d in collect(P, world)["decisions"] if d["source"] == "retrain_request"]
    assert decision["what"] == (f"retrain request (manual): failed (run {RUN}): "
                                "build_dataset: NotEnoughData: no rows")
    assert (decision["state"], decision["run_id"]) == ("failed", RUN)
