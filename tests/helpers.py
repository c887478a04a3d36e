"""Small helpers shared by tests: isolated copies of the settings and of a lake."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import requests
import yaml

import email_experiment
from conftest import TEST_CONF, write_overlay
from jobs.settings import Settings

PROJECT = Path(__file__).resolve().parent.parent
MARK = "<!-- own-data-overlay"


def settings_in(settings: Settings, root: Path, **sections) -> Settings:
    """The same settings with lake, reports, ground truth and MLflow under root (sections replaced)."""
    paths = settings.paths.model_copy(
        update={"lake": root / "lake", "reports": root / "reports", "ground_truth": root / "ground_truth"}
    )
    mlflow = settings.mlflow.model_copy(
        update={"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "mlartifacts")}
    )
    return settings.model_copy(update={"paths": paths, "mlflow": mlflow, **sections})


def copy_raw(source: Settings, target: Settings) -> None:
    shutil.copytree(source.paths.lake / "raw", target.paths.lake / "raw")


def on_server(project: dict, spark_connect: Path) -> dict:
    """project's UPLIFT_HOME / UPLIFT_CONF with its Spark steps on the suite's Connect server."""
    return {**project, "UPLIFT_CONF": f"{project['UPLIFT_CONF']}{os.pathsep}{spark_connect}"}


@contextlib.contextmanager
def serve_api(root: Path, project: dict, user: str, password: str):
    """`airflow api-server` on a free local port for a project home (UPLIFT_HOME / UPLIFT_CONF), with
    one viewer user; yields its URL and stops it after."""
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({user: password}))
    env = airflow_env(root, project)
    env |= {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    port = free_port()
    log = (root / "api-server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "api-server", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(
            f"{url}/api/v2/monitor/health", server, "airflow api-server", 180, (root / "api-server.log").read_text
        )
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def airflow_env(root: Path, project: dict) -> dict:
    """The environment of a project home run by Airflow itself (SQLite metadata under root, Spark local),
    migrated; project: its UPLIFT_HOME / UPLIFT_CONF."""
    env = {
        **os.environ,
        **project,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def readme_overlay() -> dict:
    """The YAML block that follows the own-data marker in README.md."""
    text = (PROJECT / "README.md").read_text()
    block = re.search(re.escape(MARK) + r".*?-->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "README.md lost its bring-your-own-data overlay block"
    return yaml.safe_load(block.group(1))


def own_home(root: Path, overlay: dict, users: pd.DataFrame | None = None, **experiment) -> dict:
    """A project home with the experiment's deliveries and the overlay; the environment to use it.

    experiment: arguments of email_experiment.write (effects, scale, seed).
    """
    email_experiment.write(root / "var" / "lake", **experiment)
    if users is not None:  # a changed snapshot, written where the simulator put its own
        users.to_csv(
            root / "var" / "lake" / "raw" / "users" / f"dt={email_experiment.SNAPSHOT_DAY}" / "users.csv", index=False
        )
    (root / "conf").mkdir(exist_ok=True)
    (root / "conf" / "own.yml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    speed = write_overlay(root, TEST_CONF)
    return {"UPLIFT_HOME": str(root), "UPLIFT_CONF": f"{root / 'conf' / 'own.yml'}{os.pathsep}{speed}"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, what: str, timeout: float, log=lambda: "") -> None:
    """Return once url answers 200; raise with the tail of log() when server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
            pass
        if server.poll() is not None:
            raise RuntimeError(f"{what} exited: {log()[-3000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer within {timeout} s: {log()[-3000:]}")
