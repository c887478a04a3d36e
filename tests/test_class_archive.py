"""The Spark drivers' class-data archive: built by `make setup`, valid for this environment's jars."""

import subprocess
import sys
from pathlib import Path

from jobs.spark import class_archive, driver_java_options

JOB = "from pyspark.sql import SparkSession; print('rows', SparkSession.builder.getOrCreate().range(7).count())"


def test_a_driver_maps_the_archive_setup_built(settings, tmp_path):
    assert class_archive().exists(), f"no class-data archive at {class_archive()}: `make setup` builds it"
    options = driver_java_options(settings)
    assert f"-XX:SharedArchiveFile={class_archive()}" in options
    assert settings.spark.java_options in options
    job = tmp_path / "job.py"
    job.write_text(JOB)
    # -Xshare:on turns "cannot use the archive" (other jars, another JVM) from a warning into an error.
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "spark-submit"),
            "--master",
            "local[1]",
            "--conf",
            f"spark.driver.extraJavaOptions=-Xshare:on {options}",
            str(job),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rows 7" in done.stdout


def test_without_an_archive_the_driver_runs_the_configured_options(settings, monkeypatch, tmp_path):
    monkeypatch.setattr("jobs.spark.class_archive", lambda: tmp_path / "none.jsa")
    assert driver_java_options(settings) == settings.spark.java_options
