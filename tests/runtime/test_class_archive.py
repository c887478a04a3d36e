"""The Spark drivers' class-data archive: built by `make setup`, valid for this environment's jars."""

import pytest

from jobs.runtime.class_archive import check
from jobs.runtime.conf import class_archive, driver_java_options


@pytest.mark.slow  # a spark-submit of its own; the archive changes with the environment, not the code
def test_a_driver_maps_the_archive_setup_built(settings):
    assert class_archive().exists(), f"no class-data archive at {class_archive()}: `make setup` builds it"
    options = driver_java_options(settings)
    assert f"-XX:SharedArchiveFile={class_archive()}" in options
    assert settings.spark.java_options in options
    check(options)  # raises, with the driver's log, when the JVM cannot map it


def test_without_an_archive_the_driver_runs_the_configured_options(settings, monkeypatch, tmp_path):
    monkeypatch.setattr("jobs.runtime.conf.class_archive", lambda: tmp_path / "none.jsa")
    assert driver_java_options(settings) == settings.spark.java_options
