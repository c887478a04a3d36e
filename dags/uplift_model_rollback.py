"""uplift_model_rollback: put the `previous` model version back as `champion` (trigger by hand).

Wiring only: the task runs `jobs.model.registry.rollback`, the same code as `uplift model rollback`.
The next nightly run scores with the restored champion.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

with DAG(
    dag_id="uplift_model_rollback",
    description="Restore the previous uplift model version as champion.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["uplift"],
    doc_md=__doc__,
):

    @task
    def rollback() -> dict:
        from jobs.model.registry import rollback as restore_previous
        from jobs.settings import load_settings

        return restore_previous(load_settings())

    rollback()
