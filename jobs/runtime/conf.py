"""What every Spark JVM this project starts is given: the session settings, the driver's options
(with the class-data archive), the spark-submit settings of the DAG's tasks and of the Connect
server, and the environment variables that mark a process as a Connect client."""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.settings import Settings

# Set by pyspark in a process that opened a Spark Connect session, and left set: while they are,
# that process's and its children's sessions are Connect sessions.
CONNECT_ENV = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")

# What every session sets, in process or on a Connect server.
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Scoring's Arrow batches: LightGBM's per-call cost spread over 50k rows, not 10k (-10%).
    "spark.sql.execution.arrow.maxRecordsPerBatch": 50_000,
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # Splits of at most 16 MB: a day's delivery is a few files, and Spark's default (the input
    # over the cores, up to 128 MB) gives 2 or 3 tasks on 2 cores, one of which runs alone.
    "spark.sql.files.maxPartitionBytes": "16m",
    # A step's cache lives for the step and is read a few times: building it uncompressed costs
    # less than compressing it (the training set at M: 2.5 s instead of 5.9 s, and faster reads).
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
}


def class_archive() -> Path:
    """This environment's Spark class-data archive (built by `make setup`: jobs/runtime/class_archive.py)."""
    return Path(sys.prefix) / "spark-classes.jsa"


def driver_java_options(settings: Settings) -> str:
    """The driver JVM's options: `spark.java_options`, and the class-data archive when there is one.

    The driver runs where it is launched (local mode, or client mode on a cluster), next to this
    environment's jars; executors on a cluster have jars of their own, so only the driver uses it.
    """
    archive = class_archive()
    extra = f" -XX:SharedArchiveFile={archive}" if archive.exists() else ""
    return (settings.spark.java_options + extra).strip()


def event_log_conf(settings: Settings) -> dict[str, str]:
    """Spark's event log in `spark.event_log_dir` (created when a local path), for the history
    server to show each application's jobs, stages and SQL plans; none when that is null."""
    folder = settings.spark.event_log_dir
    if not folder:
        return {}
    if "://" not in folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        folder = Path(folder).as_uri()
    return {"spark.eventLog.enabled": "true", "spark.eventLog.dir": folder}


def submit_conf(settings: Settings) -> dict[str, str]:
    """What every driver this project launches is submitted with: the DAG's spark-submit tasks and
    the Spark Connect server (this environment's Python for the workers, the JVM options)."""
    return {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.driver.extraJavaOptions": driver_java_options(settings),
        "spark.executor.extraJavaOptions": settings.spark.java_options,
        **event_log_conf(settings),
    }
