"""The `uplift` command: every step is there, and the read-only commands answer from real outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from conftest import RUN_DATE, with_demo
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


UPLIFT = str(Path(sys.executable).with_name("uplift"))


def _uplift(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The installed `uplift` command, as a user types it."""
    return subprocess.run([UPLIFT, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def _typo(tmp_path: Path) -> str:
    overlay = tmp_path / "typo.yml"
    overlay.write_text("features:\n  attributes:\n    age: {kind: numerc}\n")
    return with_demo(overlay)


def test_a_wrong_setting_is_one_line_naming_the_key_the_value_and_the_file(home, tmp_path):
    done = _uplift("model", "status", UPLIFT_CONF=_typo(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "features.attributes.age.kind" in line and "'numerc'" in line and "typo.yml" in line


def test_debug_shows_the_traceback_of_a_user_error(home, tmp_path):
    done = _uplift("--debug", "model", "status", UPLIFT_CONF=_typo(tmp_path))
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "SettingsError" in done.stderr


def test_without_an_experiment_the_error_says_what_to_declare(home):
    done = _uplift("model", "status", UPLIFT_CONF="")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("uplift: no experiment declared") and "conf/examples/demo.yml" in line


def test_a_missing_input_is_its_message_and_exit_2(home):
    done = _uplift("audience", "show", "--run-date", "1999-01-01")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("uplift: no audience for run_date=1999-01-01")
