"""Airflow glue for Batchloop: DAG defaults, assets, the stage call, task helpers, settings.

Light at import (stdlib + ``airflow.sdk`` only) because every DAG file imports it at parse time.
"""

from batchloop_airflow.assets import stage_asset
from batchloop_airflow.connections import settings
from batchloop_airflow.defaults import dag_kwargs, problem_specs
from batchloop_airflow.stage import run_stage
from batchloop_airflow.tasks import batch_id_param, publish_monitoring_page, resolve_batches

__all__ = ["batch_id_param", "dag_kwargs", "problem_specs", "publish_monitoring_page",
           "resolve_batches", "run_stage", "settings", "stage_asset"]
