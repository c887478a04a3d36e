"""The Spark steps on a standalone cluster, submitted by the DAG's own tasks, the code shipped as a zip.

A master and one worker are started here with the pyspark wheel's launcher; their environment
holds nothing of this project. The DAG is parsed with `spark.py_files` pointing at the artifact
`make dist` builds and `spark_default` at the master; its scoring task then runs spark-submit in
client mode (scoring is the job whose executors run our code: they unpickle the champion's
boosters into `jobs.model.portable` classes). A probe submitted the same way shows where the
executors import `jobs` from. The audience must equal the local-mode run's. (The ETL's executors
run no Python; its cluster run would cost two more minutes and prove nothing the scoring run does not.)
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyspark
import pytest

from conftest import RUN_DATE, TEST_CONF, with_demo, write_overlay
from helpers import free_port
from jobs.data.lake import partition_dir

pytestmark = pytest.mark.slow  # a standalone Spark cluster

PROJECT = Path(__file__).resolve().parents[2]
SPARK_CLASS = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
PROBE = str(Path(__file__).resolve().parents[1] / "cluster_probe.py")
SPARK_TASKS = ("validate_raw", "etl", "validate_features", "score")


def _master_json(ui_port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as response:
            return json.load(response)
    except (OSError, ValueError):
        return {}


def _wait_for(condition, what: str, logs: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))
            raise TimeoutError(f"{what} not within {timeout} s\n{tails}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """spark://127.0.0.1:<port> with one registered worker (1 core, 2 GB); its work dir."""
    root = tmp_path_factory.mktemp("spark_cluster")
    port, ui = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLIFT_", "PYSPARK_", "PYTHONPATH"))}
    env["SPARK_LOCAL_DIRS"] = str(root / "local")
    env["SPARK_MASTER_OPTS"] = "-Dspark.master.rest.enabled=false"  # no fixed REST port 6066
    processes = []

    def start(name: str, *args: str) -> None:
        with open(root / f"{name}.log", "w") as log:
            processes.append(
                subprocess.Popen(
                    [SPARK_CLASS, *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    try:
        master = ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)]
        start("master", "org.apache.spark.deploy.master.Master", *master)
        _wait_for(lambda: _master_json(ui).get("status") == "ALIVE", "master", root)
        worker = ["--host", "127.0.0.1", "--cores", "1", "--memory", "2g", "--webui-port", str(free_port())]
        worker += ["--work-dir", str(root / "work")]
        start("worker", "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", *worker)
        _wait_for(lambda: _master_json(ui).get("aliveworkers") == 1, "worker registration", root)
        yield {"master": f"spark://127.0.0.1:{port}", "ui": ui, "work_dir": root / "work"}
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def cluster_run(settings, nightly, cluster, tmp_path_factory):
    """A project home with the session's scoring features and champion; the DAG's tasks run on the cluster."""
    from airflow.dag_processing.dagbag import DagBag

    root = tmp_path_factory.mktemp("cluster_project")
    # What `make dist` runs, from the checkout into this home's dist/.
    subprocess.run(
        [sys.executable, "-m", "jobs.runtime.dist", str(root / "dist" / "uplift_jobs.zip")], cwd=PROJECT, check=True
    )
    scoring = partition_dir(settings, "features/scoring", RUN_DATE)
    shutil.copytree(scoring, root / "var" / "lake" / "features" / "scoring" / scoring.name)
    overlay = {
        **TEST_CONF,
        "spark": {**TEST_CONF["spark"], "py_files": "dist/uplift_jobs.zip"},
        # Scoring reads the session's champion (nothing is written to that store).
        "mlflow": {"tracking_uri": settings.mlflow.tracking_uri, "artifact_root": settings.mlflow.artifact_root},
    }
    connection = {"conn_type": "spark", "host": cluster["master"], "extra": {"deploy-mode": "client"}}
    probe_out = root / "probe.json"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("UPLIFT_HOME", str(root))
        env.setenv("UPLIFT_CONF", with_demo(write_overlay(root, overlay)))
        env.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps(connection))
        env.delenv(settings.export.postgres_dsn_env, raising=False)  # no audience copy from here
        bag = DagBag(dag_folder=str(PROJECT / "dags"))
        assert bag.import_errors == {}
        dag = bag.dags["uplift_nightly"]
        py_files = {task_id: dag.get_task(task_id).py_files for task_id in SPARK_TASKS}
        task = dag.get_task("score")
        # What the DAG's first task, deliveries, pushes for the steps: the night's run date.
        pushed = SimpleNamespace(xcom_pull=lambda task_ids: RUN_DATE.isoformat() if task_ids == "deliveries" else None)
        task.render_template_fields({"ti": pushed})
        assert task.application_args == ["score", "--run-date", RUN_DATE.isoformat()]
        task.execute({})
        # The probe goes through the same operator, connection and settings as the real job.
        task.application, task.application_args, task._hook = PROBE, [str(probe_out)], None
        task.execute({})
    return {
        "root": root,
        "artifact": root / "dist" / "uplift_jobs.zip",
        "py_files": py_files,
        "probe": json.loads(probe_out.read_text()),
    }


def _rows(folder: Path, key: str, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    frame = pd.read_parquet(folder).drop(columns=list(drop))
    return frame.sort_values(key).reset_index(drop=True)[sorted(frame.columns)]


def test_every_spark_task_ships_the_configured_artifact(cluster_run):
    artifact = str(cluster_run["artifact"])
    assert cluster_run["py_files"] == dict.fromkeys(SPARK_TASKS, artifact)


def test_executors_import_the_jobs_from_the_shipped_zip(cluster_run, cluster):
    digest = hashlib.sha256(cluster_run["artifact"].read_bytes()).hexdigest()
    (executor,) = cluster_run["probe"]["executors"]
    assert executor["cwd"].startswith(str(cluster["work_dir"]) + os.sep), executor
    # Inside the executor's copy of the zip, not this checkout (importable there too).
    assert executor["jobs"] == os.path.join(executor["cwd"], "uplift_jobs.zip", "jobs", "__init__.py")
    assert executor["model"] == os.path.join(executor["cwd"], "uplift_jobs.zip", "jobs", "model", "portable.py")
    assert executor["zip_sha256"] == digest
    assert executor["python"] == sys.executable  # spark.pyspark.python from the DAG


def test_cluster_scoring_publishes_the_same_audience_as_local_mode(cluster_run, cluster, settings, nightly):
    finished = {(app["name"], app["state"]) for app in _master_json(cluster["ui"])["completedapps"]}
    assert ("uplift-score", "FINISHED") in finished, finished
    lake = cluster_run["root"] / "var" / "lake"
    local = _rows(partition_dir(settings, "audience", RUN_DATE), "customer_id", drop=("scored_at",))
    on_cluster = _rows(lake / "audience" / f"run_date={RUN_DATE}", "customer_id", drop=("scored_at",))
    # A campaign id carries the date's publication count in its home (`_v<n>` from the second):
    # the session's home republished the date in earlier tests, the cluster's home once.
    for rows in (local, on_cluster):
        rows["campaign_id"] = rows["campaign_id"].str.replace(r"_v\d+$", "", regex=True)
    assert len(local) > 1000
    pd.testing.assert_frame_equal(on_cluster, local)
