"""The retrain cron without surprise runs: a tick missed while the DAG was paused (or before it
first existed) is not run when it is unpaused; the next tick is.

Airflow 3.3's ``CronTriggerTimetable`` with ``catchup=False`` always schedules the most recent
past tick: unpausing ``retrain_model`` after a weekly tick passed starts a retrain at once, and so
does a freshly created, unpaused DAG (``run_immediately`` has no effect once a ``start_date`` is
set). ``NextTickCron`` schedules the next tick instead, except for a tick less than ``GRACE`` ago
(the dag-processor recomputes the next run on every parse, and must not skip a tick the scheduler
is about to run). A spec that wants the missed tick run (``retrain.run_missed_schedule``) gets
Airflow's own timetable. Registered by ``plugins/batchloop_timetables_plugin.py`` so the
scheduler can deserialize it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import timezone
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.trigger import CronTriggerTimetable

GRACE = timedelta(minutes=5)


class NextTickCron(CronTriggerTimetable):
    """``CronTriggerTimetable`` that never starts a run for a tick missed longer than ``GRACE``
    ago when catchup is off."""

    @property
    def expression(self) -> str:
        """The cron expression (as the SDK's timetable names it)."""
        return str(self._expression)

    def next_dagrun_info(self, *, last_automated_data_interval: DataInterval | None,
                         restriction: TimeRestriction) -> DagRunInfo | None:
        """The next tick after the last run and after now (a tick just passed still counts)."""
        if restriction.catchup:
            return super().next_dagrun_info(
                last_automated_data_interval=last_automated_data_interval,
                restriction=restriction)
        now = timezone.coerce_datetime(timezone.utcnow())
        previous = self._align_to_prev(now)
        candidates = [previous if now - previous <= GRACE else self._align_to_next(now)]
        if last_automated_data_interval is not None:
            candidates.append(self._get_next(last_automated_data_interval.end))
        if restriction.earliest is not None:
            candidates.append(self._align_to_next(restriction.earliest))
        start = max(candidates)
        if restriction.latest is not None and restriction.latest < start:
            return None
        return DagRunInfo.interval(timezone.coerce_datetime(start - self._interval), start)


def retrain_timetable(cron: str, run_missed: bool = False) -> Any:
    """The retrain DAG's cron timetable (UTC): ``NextTickCron``, or Airflow's own when the spec
    asks for missed ticks to run."""
    kind = CronTriggerTimetable if run_missed else NextTickCron
    return kind(cron, timezone="UTC")
