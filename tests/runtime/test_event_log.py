"""Spark's event log: every application the pipeline starts writes it, and `uplift spark-history` serves it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from helpers import free_port, wait_for_http


def test_spark_writes_its_event_log_for_the_history_server(spark, settings):
    """The suite's session (local, as the CLI's) logs its application where spark.event_log_dir says."""
    assert spark.conf.get("spark.eventLog.enabled") == "true"
    spark.range(10).count()
    logged = [p.name for p in Path(settings.spark.event_log_dir).iterdir()]
    assert any(spark.sparkContext.applicationId in name for name in logged), logged


@pytest.mark.slow  # a history server JVM of its own
def test_uplift_spark_history_lists_the_suites_application(spark, settings, tmp_path):
    spark.range(10).count()
    port = free_port()
    log = tmp_path / "history.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "uplift"), "spark-history", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/applications"
        wait_for_http(api, server, "the history server", 120, log.read_text)
        listed = requests.get(api, timeout=10).json()
        assert spark.sparkContext.applicationId in {app["id"] for app in listed}, listed
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
