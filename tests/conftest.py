"""Shared fixtures: one isolated project home, one Spark session, one small generated dataset.

Every test run works under its own temporary UPLIFT_HOME (lake, reports, MLflow store), so
nothing depends on what an earlier run or `make demo` left behind.
"""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

RUN_DATE = date(2026, 10, 30)
DEMO = {"customers": 16000, "days": 30, "sends_per_day": 6000, "seed": 11}
TEST_CONF = {
    # In process: the suite's one session (the `spark` fixture). Runs in other processes (Airflow,
    # the CLI) add the overlay of the `spark_connect` fixture, the suite's Connect server.
    "spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "2g", "remote": None},
    "gate": {"bootstrap_rounds": 60},
    "drift": {"sample_rows": 5000},
    "schedule": {"retries": 0},
}


def with_demo(*overlays: Path) -> str:
    """UPLIFT_CONF for the demo's experiment (conf/examples/demo.yml) with these overlays on top."""
    from jobs.settings import DEMO_CONF

    return os.pathsep.join(str(p) for p in (DEMO_CONF, *overlays))


def write_overlay(home: Path, overlay: dict) -> Path:
    path = home / "conf.yml"
    path.write_text(yaml.safe_dump(overlay))
    return path


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("uplift_home")
    os.environ["UPLIFT_HOME"] = str(home)
    os.environ["UPLIFT_CONF"] = with_demo(write_overlay(home, TEST_CONF))
    os.environ["AIRFLOW_HOME"] = str(home / "airflow")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    venv_bin = str(Path(sys.executable).parent)
    os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    return home


@pytest.fixture(scope="session")
def settings(home):
    from jobs.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def spark(settings):
    from jobs.runtime.spark import get_spark

    session = get_spark(settings, "uplift-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_connect(settings, home) -> Path:
    """The suite's Spark Connect server (jobs/runtime/connect.py, on a port of its own, not a developer's
    15002); the overlay that points a project's runs at it. Stopped at the end of the session."""
    from helpers import free_port
    from jobs.runtime import connect

    port = free_port()
    remote = {"remote": f"sc://localhost:{port}"}
    pid = connect.start(settings.model_copy(update={"spark": settings.spark.model_copy(update=remote)}), port)
    overlay = home / "spark_connect.yml"
    overlay.write_text(yaml.safe_dump({"spark": remote}))
    yield overlay
    connect.stop_pid(pid)


@pytest.fixture(scope="session")
def generated(settings):
    from jobs.demo.generate import generate

    return generate(settings, last_day=RUN_DATE, **DEMO)


@pytest.fixture(scope="session")
def nightly(settings, spark, generated):
    """Every step of one nightly run, in process, on the generated data; their summaries."""
    from jobs import steps
    from jobs.names import STEPS

    return {step: steps.run(step, RUN_DATE, settings) for step in STEPS}


@pytest.fixture
def own_settings(monkeypatch, tmp_path):
    """Settings of a fresh home holding tests/email_experiment.py's data, configured by the README's
    own-data overlay with `changes` (section -> keys) on top; experiment: its effects, scale, seed."""
    from helpers import own_home, readme_overlay
    from jobs.settings import load_settings

    def make(changes=None, users=None, **experiment):
        overlay = readme_overlay()
        for section, values in (changes or {}).items():
            overlay.setdefault(section, {}).update(values)
        for name, value in own_home(tmp_path, overlay, users, **experiment).items():
            monkeypatch.setenv(name, value)
        return load_settings()

    return make


# The fast tier (`make test-fast`, `pytest -m "not slow"`): units and small-frame tests. Slow:
# whole nightly runs (in process or by Airflow), marked here by the fixtures they use; and, marked
# in their modules (`pytestmark`, or per test), live stacks, clusters and servers, the loop, the
# variants of a whole step over the generated data (data/test_bad_deliveries), several steps end
# to end (data/test_etl, model/test_train), a spark-submit of its own (runtime/test_class_archive)
# and Spark Connect servers of their own (runtime/test_connect).
SLOW_FIXTURES = {"nightly", "airflow_run", "airflow_home", "successful_run", "spark_connect"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
