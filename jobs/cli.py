"""`uplift`: every pipeline step as a command, exactly as the DAG runs it, plus model operations."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from jobs import steps
from jobs.names import AUDIENCE, EXPORT_STEP, STEPS
from jobs.settings import UserError, load_settings

app = typer.Typer(
    help="Nightly uplift targeting pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="The registered model: status, promotion, rollback.", no_args_is_help=True)
app.add_typer(model_app, name="model")
audience_app = typer.Typer(help="Read a run's audience: summary, send lists, what-if.", no_args_is_help=True)
app.add_typer(audience_app, name="audience")

RunDate = Annotated[datetime, typer.Option("--run-date", formats=["%Y-%m-%d"], help="Logical date ds (YYYY-MM-DD).")]


def _step_command(step: str):
    def command(run_date: RunDate) -> None:
        steps.run(step, run_date.date())
        if step == "results":  # and the table they make, as `uplift audience results` prints it
            from jobs.monitoring.results import show

            typer.echo(show(load_settings()))

    command.__doc__ = f"Run the `{step}` step for one run date."
    return command


for _step in STEPS:
    app.command(_step)(_step_command(_step))


spark_server_app = typer.Typer(
    help="The local Spark Connect server the steps run on (spark.remote; started by the first step).",
    no_args_is_help=True,
)
app.add_typer(spark_server_app, name="spark-server")


@spark_server_app.command("start")
def spark_server_start() -> None:
    """Start the local server `spark.remote` names, unless it runs already."""
    from jobs.runtime import connect

    settings = _remote_settings()
    connect.ensure_server(settings)
    print(json.dumps(connect.status(settings)))


@spark_server_app.command("stop")
def spark_server_stop() -> None:
    """Stop the local server `spark.remote` names (its JVM and Python workers)."""
    from jobs.runtime import connect

    print(json.dumps(connect.stop(_remote_settings())))


@spark_server_app.command("status")
def spark_server_status() -> None:
    """Whether the server `spark.remote` names listens, its pid and log."""
    from jobs.runtime import connect

    print(json.dumps(connect.status(_remote_settings())))


def _remote_settings():
    settings = load_settings()
    if not settings.spark.remote:
        raise typer.BadParameter("spark.remote is not set: the Spark steps run in their own process (spark-submit)")
    return settings


@app.command()
def deliveries(run_date: RunDate) -> None:
    """Whether the run date's daily deliveries have landed (what the DAG's first task waits for)."""
    from jobs.data.lake import MissingInputError, missing_deliveries

    missing = missing_deliveries(load_settings(), run_date.date())
    if missing:
        raise MissingInputError(f"deliveries for run_date={run_date.date()} not landed: {', '.join(missing)}")
    print(json.dumps({"run_date": run_date.date().isoformat(), "missing": []}))


@app.command("spark-history")
def spark_history(port: Annotated[int, typer.Option(help="The history server's port.")] = 18080) -> None:
    """Serve Spark's event log (spark.event_log_dir) with Spark's history server, until interrupted."""
    import os
    import subprocess

    from pyspark.find_spark_home import _find_spark_home

    folder = load_settings().spark.event_log_dir
    if not folder:
        raise UserError("spark.event_log_dir is null: no event log is written; set it to a folder")
    log_dir = folder if "://" in folder else Path(folder).as_uri()
    options = f"-Dspark.history.fs.logDirectory={log_dir} -Dspark.history.ui.port={port}"
    env = {**os.environ, "SPARK_HISTORY_OPTS": options, "SPARK_NO_DAEMONIZE": "1"}
    spark_class = Path(_find_spark_home()) / "bin" / "spark-class"
    typer.echo(f"Spark history server on http://localhost:{port} over {log_dir}", err=True)
    subprocess.run([str(spark_class), "org.apache.spark.deploy.history.HistoryServer"], env=env, check=False)


@app.command()
def nightly(run_date: RunDate) -> None:
    """Run every step in order for one run date, without Airflow (same code as the DAG tasks).

    With targeting.approval required, the send list is not exported: `uplift export` does it once approved."""
    settings = load_settings()
    for step in STEPS:
        if step == EXPORT_STEP and settings.targeting.approval == "required":
            typer.echo(f"the export awaits approval: `uplift export --run-date {run_date.date()}`", err=True)
            continue
        steps.run(step, run_date.date(), settings)


def _demo_data(customers: int, days: int, sends_per_day: int, seed: int) -> dict:
    """The generator's size and seed, as `generate` and `simulate` take them."""
    return {"customers": customers, "days": days, "sends_per_day": sends_per_day, "seed": seed}


@app.command()
def simulate(
    first_night: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="The first night of the loop.")],
    nights: Annotated[int, typer.Option(min=1, help="Nights of the loop, the first one included.")] = 5,
    customers: Annotated[int, typer.Option(min=10)] = 30_000,
    days: Annotated[int, typer.Option(min=1, help="Days of randomized history before the loop.")] = 30,
    sends_per_day: Annotated[int, typer.Option(min=1)] = 6_000,
    seed: int = 7,
) -> None:
    """Play the loop on the demo generator's truth: each night's audience is sent and learned from."""
    from jobs.demo.simulate import simulate as run_simulate

    data = _demo_data(customers, days, sends_per_day, seed)
    table = run_simulate(load_settings(demo=True), nights=nights, first_night=first_night.date(), **data)
    for line in table:
        typer.echo(json.dumps(line))


@app.command()
def generate(
    last_day: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="Last day of landed data.")],
    customers: Annotated[int, typer.Option(min=10)] = 30_000,
    days: Annotated[int, typer.Option(min=1)] = 30,
    sends_per_day: Annotated[int, typer.Option(min=1)] = 6_000,
    seed: int = 7,
    shift_on: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="From this day on, plant a population shift (30% of customers on a new e-mail domain, older).",
        ),
    ] = None,
) -> None:
    """Land a demo dataset (users, sends, responses) in the raw zone, and its ground truth apart."""
    from jobs.demo.generate import generate as run_generate

    result = run_generate(
        load_settings(demo=True),
        last_day=last_day.date(),
        shift_on=shift_on.date() if shift_on else None,
        **_demo_data(customers, days, sends_per_day, seed),
    )
    typer.echo(json.dumps(result.__dict__, default=str))


@app.command()
def summary(run_date: RunDate) -> None:
    """Print what a run produced: audience per arm, gate decision, champion, reports."""
    from jobs.monitoring.report import run_summary

    typer.echo(run_summary(load_settings(), run_date.date()))


@audience_app.command("results")
def audience_results(
    audiences: Annotated[int, typer.Option(min=1, help="The latest measured audience dates shown.")] = 30,
) -> None:
    """Realized vs expected lift of the sent audiences (the results step's tables), as on the Results page."""
    from jobs.monitoring.results import show

    typer.echo(show(load_settings(), audiences))


@audience_app.command("show")
def audience_show(
    run_date: RunDate,
    top: int = 10,
    version: Annotated[
        int | None, typer.Option(min=1, help="An earlier version a rerun kept (default: current).")
    ] = None,
) -> None:
    """Per-arm counts, expected lift and spend, and the top customers."""
    from jobs.targeting.audience import show

    typer.echo(show(load_settings(), run_date.date(), top, version))


@audience_app.command("export")
def audience_export(
    run_date: RunDate,
    arm: Annotated[
        str | None, typer.Option(help="One arm's rows (control: the holdout and explore-control); default: all.")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="CSV file (default: var/exports/...).")] = None,
    format: Annotated[str, typer.Option(help="Only csv for now.")] = "csv",
) -> None:
    """Write the send list for the e-mail tool: customer, campaign_id, assigned arm, assignment, propensity."""
    from jobs.targeting.audience import export_csv

    if format != "csv":
        raise typer.BadParameter("only --format csv is supported", param_hint="--format")
    settings = load_settings()
    day = run_date.date()
    target = output or settings.paths.reports.parent / "exports" / f"audience-{day}-{arm or 'all'}.csv"
    rows = export_csv(settings, day, arm, target)
    typer.echo(json.dumps({"rows": rows, "file": str(target)}))


@audience_app.command("what-if")
def audience_what_if(
    where: Annotated[
        str,
        typer.Option(
            help="SQL over the features, the audience and <attribute>_band columns, e.g. \"age_band = '25-34'\"."
        ),
    ],
    arm: Annotated[str, typer.Option(help="The message to try on the segment.")],
    run_date: Annotated[
        datetime | None,
        typer.Option("--run-date", formats=["%Y-%m-%d"], help="Audience date (default: the latest published)."),
    ] = None,
) -> None:
    """Expected response rate of a segment with and without a message."""
    from jobs.data.lake import MissingInputError, partition_dates
    from jobs.targeting.audience import what_if

    settings = load_settings()
    published = partition_dates(settings, AUDIENCE)
    if run_date is None and not published:
        raise MissingInputError("no audience published yet: run the pipeline first")
    day = run_date.date() if run_date else published[-1]
    result = what_if(settings, day, where, arm)
    typer.echo(json.dumps(result, indent=2))


@model_app.command("status")
def model_status() -> None:
    """Show the champion and previous versions."""
    from jobs.model.registry import status

    typer.echo(json.dumps(status(load_settings()), indent=2))


@model_app.command("promote")
def model_promote(version: Annotated[str, typer.Option(help="Model version to make champion.")]) -> None:
    """Make a version the champion by hand (the current champion becomes previous)."""
    from jobs.model.registry import promote

    typer.echo(json.dumps(promote(load_settings(), version), indent=2))


@model_app.command("rollback")
def model_rollback() -> None:
    """Restore the previous version as champion."""
    from jobs.model.registry import rollback

    typer.echo(json.dumps(rollback(load_settings()), indent=2))


DEBUG = {"traceback": False}


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error too.")] = False,
) -> None:
    DEBUG["traceback"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("great_expectations", "py4j", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    """`uplift`: an error of the user's making (jobs.settings.UserError: a wrong setting, a missing or
    refused input) prints its message, which says what, where and what to do, and exits with 2;
    `uplift --debug ...` shows the traceback too. Anything else is a bug and keeps its traceback."""
    try:
        app(prog_name="uplift")
    except UserError as err:
        if DEBUG["traceback"]:
            raise
        typer.echo(f"uplift: {err}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
