"""uplift_nightly: deliveries -> validate -> ETL -> validate -> train -> gate -> promote -> score -> results
-> drift -> report, per night; score -> [approve ->] export hands the send list to the e-mail tool.

Wiring only: every task runs `jobs.steps` for the night's run date, the same code as
`uplift <step> --run-date D`. With `spark.remote` (the embedded default) the Spark steps are
tasks like the others, clients of that Spark Connect server (jobs/runtime/connect.py). Without it they
go through spark-submit on the `spark_default` connection (for a cluster, the connection plus
`spark.py_files`, the job code shipped to the executors).

- **Run date**: the `run_date` param when given, else the run's logical date (`ds`). A manual run
  without a logical date must give the param.
- **Deliveries**: the first task waits (reschedule mode: no worker slot held) for the run date's
  daily deliveries until `schedule.delivery_wait_minutes` after the run started, then fails the
  night naming the missing folders.
- **Failures**: an error of the user's making (`jobs.settings.UserError`: refused input, drift, a
  model that cannot serve, wrong settings) fails its task at once; anything else is retried
  (`schedule.retries`). Every failure writes its one-line reason to the night's reports and, with
  `schedule.notify_email`, is e-mailed through the Airflow SMTP connection `schedule.smtp_conn_id`.
- **Addresses**: the Airflow connections `uplift_spark_connect`, `uplift_mlflow` and
  `uplift_audience_postgres`, when defined, replace the Spark Connect, MLflow and audience export
  addresses of the YAML for every step.
- **Approval** (`targeting.approval: required`): `approve` (Airflow's human-in-the-loop approval)
  shows the night's send list in the UI; approved, `export` publishes it; rejected, or unanswered
  within `targeting.approval_timeout_hours`, the previous export stays. results, drift and report
  do not wait for it.
- **Asset**: `score` emits an `uplift_audience` event whose extra holds the run date, policy,
  model version, rows and sends.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Asset, Param, PokeReturnValue, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

import jobs
from jobs.names import EXPORT_STEP, SPARK_STEPS, STEPS
from jobs.runtime.conf import submit_conf
from jobs.settings import load_settings

log = logging.getLogger(__name__)
settings = load_settings()
SPARK_JOB = str(Path(jobs.__file__).parent / "bin" / "spark_job.py")
# Downstream DAGs can be scheduled on each new audience partition.
AUDIENCE = Asset(name="uplift_audience", uri=f"file://{settings.paths.lake / 'audience'}")
DELIVERIES = "deliveries"
RUN_DATE = "{{ ti.xcom_pull(task_ids='" + DELIVERIES + "') }}"
# Airflow connection -> the environment variable it sets for the steps (jobs.settings.ADDRESS_ENV).
CONNECTIONS = {
    "uplift_spark_connect": "UPLIFT_SPARK_REMOTE",
    "uplift_mlflow": "UPLIFT_MLFLOW_TRACKING_URI",
    "uplift_audience_postgres": settings.export.postgres_dsn_env,
}


def run_date_of(context) -> date | None:
    """The `run_date` param, else the logical date; None for a run without either."""
    given = (context.get("params") or {}).get("run_date")
    if given:
        return date.fromisoformat(str(given))
    ds = context.get("ds")
    return date.fromisoformat(ds) if ds else None


def _address(conn_id: str, conn) -> str:
    if conn_id == "uplift_spark_connect":
        from airflow.providers.apache.spark.hooks.spark_connect import SparkConnectHook

        url = SparkConnectHook(conn_id).get_connection_url()
        return url.removesuffix("/")  # sc://host:port, as spark.remote is written
    if conn_id == "uplift_mlflow":
        scheme = conn.conn_type if conn.conn_type in ("http", "https") else conn.extra_dejson.get("scheme", "http")
        port = f":{conn.port}" if conn.port else ""
        return f"{scheme}://{conn.host}{port}" + (f"/{conn.schema}" if conn.schema else "")
    return conn.get_uri().replace("postgres://", "postgresql://", 1)


def connection_env() -> dict[str, str]:
    """The addresses the defined connections give, as the environment variables the steps read."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    env = {}
    for conn_id, variable in CONNECTIONS.items():
        if not variable:
            continue
        try:
            conn = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            continue
        env[variable] = _address(conn_id, conn)
    return env


def on_failure(context) -> None:
    """Record the failure's one-line reason in the night's reports and e-mail it (schedule.notify_email)."""
    from jobs.steps import record_failure

    step = context["ti"].task_id.replace("_", "-")
    run_date = run_date_of(context)
    reason = (
        record_failure(step, run_date, context.get("exception"))
        if run_date
        else f"{step} failed: {context.get('exception')}"
    )
    if settings.schedule.notify_email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        dag_run = context["dag_run"]
        SmtpNotifier(
            to=settings.schedule.notify_email,
            from_email=None,
            smtp_conn_id=settings.schedule.smtp_conn_id,
            subject=f"uplift_nightly {run_date or dag_run.run_id}: {step} failed",
            html_content=f"<p>{html.escape(reason)}</p><p>run {dag_run.run_id}, task {context['ti'].task_id}</p>",
        )(context)


def audience_event(run_date: str, result: dict) -> dict:
    """The extra of the night's uplift_audience asset event: what was published."""
    assignments = result.get("assignments", {})
    return {
        "run_date": run_date,
        "policy": result.get("policy"),
        "model_version": result.get("model_version"),
        "campaign_id": result.get("campaign_id"),
        "rows": result.get("rows"),
        "sends": sum(n for route, n in assignments.items() if route != "none"),
        "assignments": assignments,
    }


@task.sensor(
    task_id=DELIVERIES,
    mode="reschedule",
    poke_interval=settings.schedule.delivery_poke_seconds,
    timeout=(settings.schedule.delivery_wait_minutes * 60 + 2 * settings.schedule.delivery_poke_seconds),
    retries=0,
)
def deliveries() -> PokeReturnValue:
    """Done with the run date (its XCom) once every daily delivery of it has landed."""
    from jobs.data.lake import missing_deliveries

    context = get_current_context()
    run_date = run_date_of(context)
    if run_date is None:
        raise AirflowFailException("this run has no logical date: give the run_date param (YYYY-MM-DD)")
    missing = missing_deliveries(load_settings(), run_date)
    if not missing:
        return PokeReturnValue(is_done=True, xcom_value=run_date.isoformat())
    wait = settings.schedule.delivery_wait_minutes
    deadline = context["dag_run"].start_date + timedelta(minutes=wait)
    if datetime.now(UTC) >= deadline:
        raise AirflowFailException(
            f"deliveries for run_date={run_date} not landed by the deadline {deadline:%Y-%m-%d %H:%M} UTC "
            f"(schedule.delivery_wait_minutes={wait:g} after the run started): {', '.join(missing)}"
        )
    log.info("waiting until %s for %s", deadline, ", ".join(missing))
    return PokeReturnValue(is_done=False)


class SparkStep(SparkSubmitOperator):
    """A step through spark-submit: the connections' addresses in its environment, a user's error
    (`uplift` exits with 2) fails it without a retry, `score` emits the audience event."""

    def __init__(self, *, step: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step = step

    def execute(self, context) -> None:
        self.env_vars = {**(self.env_vars or {}), **connection_env()}
        try:
            super().execute(context)
        except AirflowException as err:
            if "Error code is: 2." in str(err):
                raise AirflowFailException(f"{self.step} refused its input or settings (see the log)") from err
            raise
        if self.step == "score" and "outlet_events" in context:
            import json

            from jobs.settings import report_dir

            run_date = self.application_args[-1]  # rendered: the run date the deliveries task pushed
            record = json.loads(
                (report_dir(load_settings(), date.fromisoformat(run_date)) / "steps" / "score.json").read_text()
            )
            context["outlet_events"][AUDIENCE].extra = audience_event(run_date, record)


def spark_step(step: str) -> SparkSubmitOperator:
    return SparkStep(
        step=step,
        task_id=step.replace("-", "_"),
        application=SPARK_JOB,
        application_args=[step, "--run-date", RUN_DATE],
        py_files=settings.spark.py_files,
        conn_id="spark_default",
        outlets=[AUDIENCE] if step == "score" else [],
        name=f"uplift-{step}",
        driver_memory=settings.spark.driver_memory,
        conf=submit_conf(settings),
    )


def python_step(step: str):
    @task(task_id=step.replace("-", "_"), outlets=[AUDIENCE] if step == "score" else [])
    def run_step() -> dict:
        import os

        from jobs import steps
        from jobs.settings import UserError

        context = get_current_context()
        run_date = context["ti"].xcom_pull(task_ids=DELIVERIES)
        os.environ.update(connection_env())
        try:
            result = steps.run(step, date.fromisoformat(run_date))
        except UserError as err:
            raise AirflowFailException(str(err)) from err
        if step == "score":
            context["outlet_events"][AUDIENCE].extra = audience_event(run_date, result)
        return result

    return run_step


def approval_summary(run_date: str) -> str:
    """The approval's body: the night's send list in a few lines (a macro of the DAG's templates)."""
    from jobs.targeting.audience import approval_summary as summary

    return summary(load_settings(), date.fromisoformat(run_date))


def approve() -> ApprovalOperator:
    return ApprovalOperator(
        task_id="approve",
        subject="uplift_nightly: export the send list of " + RUN_DATE + "?",
        body="{{ approval_summary(" + RUN_DATE.removeprefix("{{ ").removesuffix(" }}") + ") }}",
        defaults=ApprovalOperator.REJECT,
        response_timeout=timedelta(hours=settings.targeting.approval_timeout_hours),
        retries=0,
    )


with DAG(
    dag_id="uplift_nightly",
    description="Nightly uplift targeting: who gets which message, and the lift we expect.",
    schedule=CronDataIntervalTimetable(settings.schedule.cron, timezone=settings.schedule.timezone),
    start_date=datetime.combine(settings.schedule.start_date, datetime.min.time()),
    catchup=False,
    max_active_runs=1,
    params={
        "run_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="The night to run (YYYY-MM-DD). Empty: the run's logical date.",
        )
    },
    default_args={
        "retries": settings.schedule.retries,
        "retry_delay": timedelta(minutes=settings.schedule.retry_delay_minutes),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=settings.schedule.task_timeout_minutes),
        "on_failure_callback": on_failure,
    },
    user_defined_macros={"approval_summary": approval_summary},
    tags=["uplift"],
    doc_md=__doc__,
):
    submitted = () if settings.spark.remote else SPARK_STEPS
    made = {step: spark_step(step) if step in submitted else python_step(step)() for step in STEPS}
    chain = [deliveries()] + [task for step, task in made.items() if step != EXPORT_STEP]
    for upstream, downstream in pairwise(chain):
        upstream >> downstream
    if settings.targeting.approval == "required":
        made["score"] >> approve() >> made[EXPORT_STEP]
    else:
        made["score"] >> made[EXPORT_STEP]
