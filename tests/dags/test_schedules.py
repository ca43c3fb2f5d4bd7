"""First start and the retrain cron: Batchloop DAGs are created active (a paused consumer drops
asset events) unless ``BATCHLOOP_START_PAUSED`` says otherwise; the cron never starts a run for a
tick that passed while the DAG was paused or before it existed."""

from __future__ import annotations

from pathlib import Path

import pendulum
import pytest
from airflow.timetables.base import DataInterval, TimeRestriction
from airflow.timetables.trigger import CronTriggerTimetable

from batchloop_airflow.defaults import dag_kwargs, start_paused
from batchloop_airflow.timetables import GRACE, NextTickCron, retrain_timetable

ROOT = Path(__file__).resolve().parents[2]
WEEKLY = "0 6 * * 1"  # Mondays 06:00 UTC
EARLIEST = pendulum.datetime(2024, 1, 1, tz="UTC")


def test_dags_start_active_unless_asked(monkeypatch, spec):
    monkeypatch.delenv("BATCHLOOP_START_PAUSED", raising=False)
    assert dag_kwargs(spec.name, "score_batch", None)["is_paused_upon_creation"] is False
    for value, paused in (("true", True), ("1", True), ("false", False), ("", False)):
        monkeypatch.setenv("BATCHLOOP_START_PAUSED", value)
        assert start_paused() is paused
        assert dag_kwargs(spec.name, "score_batch", None)["is_paused_upon_creation"] is paused


def _next(timetable, now, last_tick=None):
    restriction = TimeRestriction(earliest=EARLIEST, latest=None, catchup=False)
    last = None if last_tick is None else DataInterval(last_tick, last_tick)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("airflow.sdk.timezone.utcnow", lambda: now)
        mp.setattr("airflow.timetables.trigger.utcnow", lambda: now, raising=False)
        info = timetable.next_dagrun_info(last_automated_data_interval=last,
                                          restriction=restriction)
    return info.run_after


@pytest.mark.parametrize("last_tick", [None, pendulum.datetime(2026, 11, 2, 6, tz="UTC")])
def test_a_tick_missed_while_paused_is_not_run_the_next_one_is(last_tick):
    now = pendulum.datetime(2026, 12, 2, 12, tz="UTC")  # a Wednesday: Monday's tick is missed
    ours = NextTickCron(WEEKLY, timezone="UTC")
    assert _next(ours, now, last_tick) == pendulum.datetime(2026, 12, 7, 6, tz="UTC")
    # Airflow's own timetable runs the missed Monday tick at once (what the spec may ask for)
    stock = CronTriggerTimetable(WEEKLY, timezone="UTC")
    assert _next(stock, now, last_tick) == pendulum.datetime(2026, 11, 30, 6, tz="UTC")


def test_a_tick_just_passed_still_runs():
    """The dag-processor recomputes the next run on every parse: a parse a few seconds after a
    tick must not skip the run the scheduler is about to create."""
    tick = pendulum.datetime(2026, 11, 30, 6, tz="UTC")
    ours = NextTickCron(WEEKLY, timezone="UTC")
    assert _next(ours, tick + pendulum.duration(seconds=20)) == tick
    assert _next(ours, tick + GRACE + pendulum.duration(seconds=1)) > tick
    # after that run, the next one is a week later
    assert _next(ours, tick + pendulum.duration(seconds=30), last_tick=tick) == tick.add(weeks=1)


def test_the_spec_can_ask_for_missed_ticks():
    assert type(retrain_timetable(WEEKLY)) is NextTickCron
    assert type(retrain_timetable(WEEKLY, run_missed=True)) is CronTriggerTimetable
    assert NextTickCron.deserialize(NextTickCron(WEEKLY, timezone="UTC").serialize()).summary \
        == CronTriggerTimetable(WEEKLY, timezone="UTC").summary


def test_the_retrain_dag_follows_the_spec(spec):
    from airflow.dag_processing.dagbag import DagBag

    from mlcore.problems import ProblemSpec

    bag = DagBag(dag_folder=str(ROOT / "dags" / "retrain_model.py"))
    timetable = bag.dags[f"{spec.name}__retrain_model"].timetable.timetable
    assert type(timetable) is NextTickCron and timetable.expression == spec.retrain.schedule
    asked = ProblemSpec.model_validate({**spec.model_dump(), "retrain": {
        **spec.retrain.model_dump(), "run_missed_schedule": True}})
    assert asked.retrain.run_missed_schedule is True
    assert type(retrain_timetable(asked.retrain.schedule, asked.retrain.run_missed_schedule)) \
        is CronTriggerTimetable
