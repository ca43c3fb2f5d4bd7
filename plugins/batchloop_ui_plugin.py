"""Airflow plugin: the Batchloop view (problems, models, aliases, batches, lineage, run cards).

Mounts ``batchloop_airflow.ui.app``'s app on the api-server under ``/batchloop`` and adds a
"Batchloop" entry to the UI's Browse menu that shows it in a frame. The plugin class lives only
here: Airflow imports every ``.py`` under the plugins folder as its own module, so defining it in
``batchloop_airflow/ui/app.py`` too would register it twice.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from batchloop_airflow.ui.app import URL_PREFIX, LazyApp


class BatchloopUIPlugin(AirflowPlugin):
    """The Batchloop view in the Airflow UI, behind Airflow's auth."""

    name = "batchloop"
    fastapi_apps = [{"name": "batchloop", "app": LazyApp(), "url_prefix": URL_PREFIX}]
    external_views = [{
        "name": "Batchloop",
        "href": URL_PREFIX.lstrip("/") + "/",  # relative: works under a base_url sub-path too
        "url_route": "batchloop",
        "destination": "nav",
        "category": "browse",
    }]
