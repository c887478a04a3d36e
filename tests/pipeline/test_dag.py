"""The uplift_nightly DAG: it imports cleanly, wires the steps in order, and runs through Airflow."""

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from itertools import pairwise
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import RUN_DATE, TEST_CONF, with_demo, write_overlay
from helpers import airflow_env, on_server

PROJECT = Path(__file__).resolve().parents[2]
ORDER = [
    "deliveries",
    "validate_raw",
    "etl",
    "validate_features",
    "train",
    "gate",
    "promote",
    "score",
    "results",
    "drift",
    "report",
]


@pytest.fixture(scope="module")
def bag(home):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="module")
def dag(bag):
    return bag.dags["uplift_nightly"]


def test_dag_folder_holds_the_nightly_and_the_rollback(bag):
    assert set(bag.dag_ids) == {"uplift_nightly", "uplift_model_rollback"}
    rollback = bag.dags["uplift_model_rollback"]
    assert [t.task_id for t in rollback.tasks] == ["rollback"]
    assert type(rollback.timetable).__name__ == "NullTimetable", "runs only when triggered"


def test_tasks_run_in_pipeline_order(dag):
    """One chain of steps; the export hangs off score, so results, drift and report never wait for it."""
    assert {t.task_id for t in dag.tasks} == {*ORDER, "export"}
    for upstream, downstream in pairwise(ORDER):
        expected = {downstream, "export"} if upstream == "score" else {downstream}
        assert dag.get_task(upstream).downstream_task_ids == expected
    assert dag.get_task("export").downstream_task_ids == set()


def test_with_approval_required_the_export_waits_for_a_campaign_manager(home, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    overlay = write_overlay(tmp_path, {"targeting": {"approval": "required", "approval_timeout_hours": 9}})
    monkeypatch.setenv("UPLIFT_CONF", f"{os.environ['UPLIFT_CONF']}{os.pathsep}{overlay}")
    dag = DagBag(dag_folder=str(PROJECT / "dags")).dags["uplift_nightly"]
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)
    assert dag.get_task("score").downstream_task_ids == {"results", "approve"}
    assert approve.downstream_task_ids == {"export"} and approve.upstream_task_ids == {"score"}
    assert approve.defaults == ["Reject"] and approve.response_timeout.total_seconds() == 9 * 3600


def test_spark_steps_are_submitted_to_spark_default(dag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    spark_tasks = {t.task_id for t in dag.tasks if isinstance(t, SparkSubmitOperator)}
    assert spark_tasks == {"validate_raw", "etl", "validate_features", "score", "results"}
    etl = dag.get_task("etl")
    assert etl._conn_id == "spark_default"
    assert etl.application.endswith("jobs/bin/spark_job.py")
    assert etl.application_args == ["etl", "--run-date", "{{ ti.xcom_pull(task_ids='deliveries') }}"]


def test_with_a_connect_server_the_spark_steps_are_its_clients(home, monkeypatch, tmp_path):
    """spark.remote set (conf/base's default): no spark-submit, every step a Python task, the
    audience still published as the asset."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    overlay = write_overlay(tmp_path, {"spark": {"remote": "sc://localhost:15999"}})
    monkeypatch.setenv("UPLIFT_CONF", f"{os.environ['UPLIFT_CONF']}{os.pathsep}{overlay}")
    dag = DagBag(dag_folder=str(PROJECT / "dags")).dags["uplift_nightly"]
    assert not [t.task_id for t in dag.tasks if isinstance(t, SparkSubmitOperator)]
    assert [t.task_id for t in dag.topological_sort() if t.task_id != "export"] == ORDER
    python_tasks = {t.task_id for t in dag.tasks if t.task_type == "_PythonDecoratedOperator"}
    assert python_tasks == {*ORDER[1:], "export"}
    assert [a.name for a in dag.get_task("score").outlets] == ["uplift_audience"]


def test_audience_is_published_as_an_asset(dag):
    outlets = dag.get_task("score").outlets
    assert [a.name for a in outlets] == ["uplift_audience"]
    assert outlets[0].uri.endswith("/var/lake/audience")


def nightly_module():
    """dags/uplift_nightly.py imported as a module, for its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("uplift_nightly_dag", PROJECT / "dags" / "uplift_nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_run_date_is_the_param_else_the_logical_date(dag):
    module = nightly_module()
    assert dag.params["run_date"] is None
    assert module.run_date_of({"params": {"run_date": "2026-10-30"}}) == date(2026, 10, 30)
    assert module.run_date_of({"params": {"run_date": None}, "ds": "2026-10-29"}) == date(2026, 10, 29)
    assert module.run_date_of({"params": {"run_date": "2026-10-30"}, "ds": "2026-10-29"}) == date(2026, 10, 30)
    assert module.run_date_of({"params": {}}) is None  # a manual run without a logical date or the param
    deliveries = dag.get_task("deliveries")
    assert deliveries.mode == "reschedule" and deliveries.retries == 0


def test_airflow_connections_give_the_steps_their_addresses(home, monkeypatch):
    """AIRFLOW_CONN_* (or any secrets backend) connections become the variables jobs.settings reads."""
    from jobs.settings import load_settings

    monkeypatch.setenv(
        "AIRFLOW_CONN_UPLIFT_SPARK_CONNECT",
        json.dumps({"conn_type": "spark_connect", "host": "sparkhost", "port": 15010}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_UPLIFT_MLFLOW", "https://mlflow.example:5443")
    monkeypatch.setenv("AIRFLOW_CONN_UPLIFT_AUDIENCE_POSTGRES", "postgres://uplift:secret@db.example:5432/campaigns")
    env = nightly_module().connection_env()
    assert env == {
        "UPLIFT_SPARK_REMOTE": "sc://sparkhost:15010",
        "UPLIFT_MLFLOW_TRACKING_URI": "https://mlflow.example:5443",
        "UPLIFT_AUDIENCE_PG_DSN": "postgresql://uplift:secret@db.example:5432/campaigns",
    }
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = load_settings()
    assert settings.spark.remote == "sc://sparkhost:15010"
    assert settings.mlflow.tracking_uri == "https://mlflow.example:5443"


def test_without_connections_the_yaml_addresses_stay(home, monkeypatch):
    for conn in ("UPLIFT_SPARK_CONNECT", "UPLIFT_MLFLOW", "UPLIFT_AUDIENCE_POSTGRES"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{conn}", raising=False)
    assert nightly_module().connection_env() == {}


def test_schedule_is_nightly_by_data_interval(dag):
    from airflow.timetables.interval import CronDataIntervalTimetable

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.max_active_runs == 1 and dag.catchup is False


# --- the DAG run by Airflow itself -------------------------------------------------------


@pytest.fixture(scope="module")
def airflow_home(settings, generated, spark_connect, tmp_path_factory):
    """A separate project home (lake, MLflow, Airflow on SQLite) holding the generated raw data,
    its Spark steps on a Connect server as `make demo`'s."""
    root = tmp_path_factory.mktemp("airflow_project")
    shutil.copytree(settings.paths.lake / "raw", root / "var" / "lake" / "raw")
    project = {"UPLIFT_HOME": str(root), "UPLIFT_CONF": with_demo(write_overlay(root, TEST_CONF))}
    env = airflow_env(root, on_server(project, spark_connect))
    return root, env


def dags_test(env) -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run(
        [airflow, "dags", "test", "uplift_nightly", RUN_DATE.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def champion_version(root: Path):
    uri = f"sqlite:///{root}/var/mlflow/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.get_model_version_by_alias("uplift_t_learner", "champion")


@pytest.fixture(scope="module")
def successful_run(airflow_home):
    root, env = airflow_home
    result = dags_test(env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "state=success" in result.stdout + result.stderr
    return root


def test_airflow_run_publishes_audience_champion_and_reports(successful_run):
    root = successful_run
    users = pd.read_parquet(root / "var" / "lake" / "raw" / "users" / f"dt={RUN_DATE}")
    audience = pd.read_parquet(root / "var" / "lake" / "audience" / f"run_date={RUN_DATE}")
    assert set(audience["customer_id"]) == set(users.loc[users["age"] >= 18, "customer_id"])
    champion = champion_version(root)
    assert champion.tags["run_date"] == RUN_DATE.isoformat()
    assert (audience["model_version"] == str(champion.version)).all()
    reports = root / "var" / "reports" / f"run_date={RUN_DATE}"
    assert json.loads((reports / "validation" / "raw.json").read_text())["success"]
    assert json.loads((reports / "validation" / "features.json").read_text())["success"]
    assert json.loads((reports / "gate.json").read_text())["decision"] == "promote"
    assert (reports / "drift.html").exists() and (reports / "drift.json").exists()


def test_bad_delivery_fails_the_run_and_keeps_previous_outputs(successful_run, airflow_home):
    root, env = airflow_home
    lake = root / "var" / "lake"
    audience_dir = lake / "audience" / f"run_date={RUN_DATE}"
    before = {p.name: p.stat().st_mtime_ns for p in audience_dir.iterdir()}
    training_before = (lake / "features" / "training" / f"run_date={RUN_DATE}").stat().st_mtime_ns
    champion_before = champion_version(root).version

    folder = lake / "raw" / "sends" / f"dt={RUN_DATE}"
    sends = pd.read_parquet(folder)
    sends.loc[sends.index[:4], "arm"] = "subject_9"
    for f in folder.iterdir():
        f.unlink()
    sends.to_parquet(folder / "part-0.parquet", index=False)

    result = dags_test(env)
    log = result.stdout + result.stderr
    assert "state=failed" in log
    assert "input 'raw/sends" in log and "subject_9" in log and "expect_column_values_to_be_in_set" in log
    assert {p.name: p.stat().st_mtime_ns for p in audience_dir.iterdir()} == before
    assert (lake / "features" / "training" / f"run_date={RUN_DATE}").stat().st_mtime_ns == training_before
    assert champion_version(root).version == champion_before
    reason = (root / "var" / "reports" / f"run_date={RUN_DATE}" / "failure.txt").read_text()
    assert reason.startswith(f"validate-raw failed for run_date={RUN_DATE}: raw/sends")
    assert "expect_column_values_to_be_in_set" in reason and "subject_9" in reason
