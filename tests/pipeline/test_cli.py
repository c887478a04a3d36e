"""The `uplift` command: every step is there, and the read-only commands answer from real outputs."""

import json

from typer.testing import CliRunner

from conftest import RUN_DATE
from jobs.cli import app
from jobs.names import STEPS

runner = CliRunner()


def test_every_step_is_a_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for step in (*STEPS, "nightly", "generate", "summary", "model"):
        assert step in result.output


def test_summary_and_model_status_after_a_run(nightly, settings):
    summary = runner.invoke(app, ["summary", "--run-date", RUN_DATE.isoformat()])
    assert summary.exit_code == 0, summary.output
    assert "customers scored" in summary.output and "Top 5 customers" in summary.output
    assert f"{settings.mlflow.registered_model} v" in summary.output
    assert "drift.html" in summary.output
    assert "rows/s" in summary.output and "validate-raw" in summary.output
    status = runner.invoke(app, ["model", "status"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["champion"]["version"]


def test_what_if_defaults_to_the_latest_audience(nightly):
    result = runner.invoke(app, ["audience", "what-if", "--where", "age_band = '60+'", "--arm", "subject_1"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["customers"] > 0 and answer["expected_uplift"] < 0


def test_a_bad_run_date_is_refused():
    result = runner.invoke(app, ["etl", "--run-date", "30/10/2026"])
    assert result.exit_code != 0
    assert "run-date" in result.output
