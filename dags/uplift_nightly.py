"""uplift_nightly: validate -> ETL -> validate -> train -> gate -> promote -> score -> drift, per night.

Wiring only: every task runs `jobs.steps` for its logical date `ds`, the same code as
`uplift <step> --run-date ds`. With `spark.remote` (the embedded default) the Spark steps are
tasks like the others, clients of that Spark Connect server (jobs/runtime/connect.py). Without it they
go through spark-submit on the `spark_default` connection (for a cluster, the connection plus
`spark.py_files`, the job code shipped to the executors).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset, task
from airflow.timetables.interval import CronDataIntervalTimetable

import jobs
from jobs.names import SPARK_STEPS, STEPS
from jobs.runtime.conf import submit_conf
from jobs.settings import load_settings

settings = load_settings()
SPARK_JOB = str(Path(jobs.__file__).parent / "bin" / "spark_job.py")
# Downstream DAGs can be scheduled on each new audience partition.
AUDIENCE = Asset(name="uplift_audience", uri=f"file://{settings.paths.lake / 'audience'}")


def on_failure(context) -> None:
    from datetime import date

    from jobs.steps import record_failure

    step = context["ti"].task_id.replace("_", "-")
    record_failure(step, date.fromisoformat(context["ds"]), context.get("exception"))


def spark_step(step: str) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=step.replace("-", "_"),
        application=SPARK_JOB,
        application_args=[step, "--run-date", "{{ ds }}"],
        py_files=settings.spark.py_files,
        conn_id="spark_default",
        outlets=[AUDIENCE] if step == "score" else [],
        name=f"uplift-{step}",
        driver_memory=settings.spark.driver_memory,
        conf=submit_conf(settings),
    )


def python_step(step: str):
    @task(task_id=step.replace("-", "_"), outlets=[AUDIENCE] if step == "score" else [])
    def run_step(ds: str | None = None) -> dict:
        from datetime import date

        from jobs import steps

        return steps.run(step, date.fromisoformat(ds))

    return run_step()


with DAG(
    dag_id="uplift_nightly",
    description="Nightly uplift targeting: who gets which message, and the lift we expect.",
    schedule=CronDataIntervalTimetable(settings.schedule.cron, timezone=settings.schedule.timezone),
    start_date=datetime.combine(settings.schedule.start_date, datetime.min.time()),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": settings.schedule.retries,
        "retry_delay": timedelta(minutes=settings.schedule.retry_delay_minutes),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=settings.schedule.task_timeout_minutes),
        "on_failure_callback": on_failure,
    },
    tags=["uplift"],
    doc_md=__doc__,
):
    submitted = () if settings.spark.remote else SPARK_STEPS
    tasks = [spark_step(step) if step in submitted else python_step(step) for step in STEPS]
    for upstream, downstream in pairwise(tasks):
        upstream >> downstream
