"""The Airflow plugin of the Campaigns page: a navigation entry, and the FastAPI app of jobs.ui.pages.

Every Airflow process loads the entry-point plugins (scheduler, DAG processor, each task's
process), and only the API server mounts FastAPI apps. So this module imports nothing but
Airflow's plugin class: the app, with FastAPI, DuckDB and the page code, is imported when the
API server asks for `fastapi_apps`, and a task's start pays nothing for the page.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/campaigns"


class CampaignsPlugin(AirflowPlugin):
    name = "uplift_campaigns"
    external_views = [
        {
            "name": "Campaigns",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "campaigns",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/icon.svg",
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict]:
        from jobs.ui.pages import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "Campaigns"}]
