"""Airflow plugin: registers Batchloop's timetables (``batchloop_airflow.timetables``), so the
scheduler and the api-server can deserialize the DAGs that use them."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from batchloop_airflow.timetables import NextTickCron


class BatchloopTimetablesPlugin(AirflowPlugin):
    """The retrain cron that does not run a tick missed while paused."""

    name = "batchloop_timetables"
    timetables = [NextTickCron]
