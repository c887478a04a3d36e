"""The SparkSession every Spark job uses: one place for its settings.

With `spark.remote` (the embedded default), a session on a Spark Connect server (jobs/runtime/connect.py).
Without it, a session in this process: under `spark-submit` (the DAG on a cluster) the master and
resources come from the submit; run by hand from the CLI or the tests, from `spark:` in conf/.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

from jobs.runtime.conf import CONNECT_ENV, SESSION_CONF, driver_java_options, event_log_conf
from jobs.settings import Settings

if TYPE_CHECKING:  # importing this module does not load Spark
    from pyspark.sql import DataFrame, SparkSession


def get_spark(settings: Settings, app_name: str = "uplift") -> SparkSession:
    """Return the active session, or start one as configured (UI off, UTC, venv Python); with
    `spark.remote`, a session on that Spark Connect server."""
    from pyspark.sql import SparkSession

    if settings.spark.remote:
        from jobs.runtime.connect import ensure_server

        ensure_server(settings)
        return _connect(settings)

    # Workers must run this interpreter, or every UDF dies without pandas/lightgbm.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .config(map=SESSION_CONF)
        .config("spark.sql.shuffle.partitions", settings.spark.shuffle_partitions)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config(map=event_log_conf(settings))
    )
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if not launched_by_spark_submit:
        builder = builder.master(settings.spark.master).config("spark.driver.memory", settings.spark.driver_memory)
        builder = builder.config("spark.driver.extraJavaOptions", driver_java_options(settings))
    builder = builder.config("spark.executor.extraJavaOptions", settings.spark.java_options)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _connect(settings: Settings, session_id: str | None = None) -> SparkSession:
    """A session on the Spark Connect server of `spark.remote` (jobs/runtime/connect.py; the caller has
    started it if it is local and was down): a new one, or the one session_id names (created by
    the first client that names it)."""
    from pyspark.sql import SparkSession

    remote = settings.spark.remote
    if session_id is not None:
        base = remote if ";" in remote else f"{remote.rstrip('/')}/"  # sc://host:port/;param=value;...
        remote = f"{base};session_id={session_id}"
    spark = SparkSession.builder.remote(remote).getOrCreate()
    # The server's static settings (master, memory, JVM options) come from its start; these are
    # the session's, the same as get_spark gives an in-process session.
    for key, value in SESSION_CONF.items():
        spark.conf.set(key, str(value))
    spark.conf.set("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
    if session_id is not None:
        # The server keeps each session's resolved plans by their protobuf, a read with its file
        # listing; a later step sends the same protobuf for the same path (its plan ids restart
        # in every process) and would read the files the folder held then (a republished date).
        spark.conf.set("spark.connect.session.planCache.enabled", "false")
    return spark


def _shared_session(settings: Settings) -> SparkSession | None:
    """The session the nightly's steps share on the local server (jobs.runtime.connect.shared_session);
    when the server refuses it (released by a failed step, or expired unused), a new one. None
    where there is none to share: a remote host, or a server started by code from before sharing."""
    from jobs.runtime.connect import ensure_server, renew_session, shared_session

    ensure_server(settings)
    session_id = shared_session(settings)
    if session_id is None:
        return None
    try:
        return _connect(settings, session_id)
    except Exception as error:  # pyspark's SparkConnectGrpcException, named by its error class
        if "SESSION_CLOSED" not in str(error) and "SESSION_NOT_FOUND" not in str(error):
            raise
        _forget_session()
        return _connect(settings, renew_session(settings, session_id))


def _forget_session() -> None:
    """Drop this process's Connect session without releasing it on the server (what the next
    getOrCreate would otherwise return)."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    active = ConnectSession.getActiveSession()
    if active is not None:
        active.release_session_on_close = False
        active.stop()


@contextmanager
def step_session(settings: Settings, app_name: str, shared: bool = False) -> Iterator[SparkSession]:
    """The session of one step. On a Connect server it is released after the step, with what it
    cached: the server outlives the step. An in-process session stays for whoever runs next.

    shared: the nightly's steps on a local Connect server share one session from step to step and
    night to night (jobs.runtime.connect: Spark's generated classes are kept per session). A step clears
    the session's cache after it, and releases the session when it fails, so that the server
    stops what it was running for it (the next step gets a new session). The DAG runs one step
    at a time (max_active_runs=1); a step run by hand beside it would share the session: it
    could lose its cache to the other's end, and its running query to the other's failure (the
    release), never its results."""
    spark = _shared_session(settings) if shared and settings.spark.remote else None
    shared = spark is not None
    if not shared:  # a session of the step's own, released after it
        spark = get_spark(settings, app_name)
    failed = True
    try:
        yield spark
        failed = False
    finally:
        if settings.spark.remote:
            spark.catalog.clearCache()
            # pyspark calls this attribute "testing only": it is what leaves a session open on close.
            spark.release_session_on_close = not shared or failed
            spark.stop()
            for name in CONNECT_ENV:  # what runs next in this process (or its children) is classic
                os.environ.pop(name, None)


def start_python_workers(frame: DataFrame, modules: tuple[str, ...]) -> Future:
    """Start the Python workers of frame's session now, with modules imported, in the background.

    A job over frame (one task per partition, the partitions a job over frame will have) whose
    workers import modules and return nothing. Workers are reused within a session, so the
    job after it starts with warm ones: a step starts this before driver-side work of its own
    (resolving a model in MLflow), which then overlaps the workers' start and imports. The
    future's result is None; it raises what the job raised.
    """

    def imported(batches):
        for name in modules:
            importlib.import_module(name)
        for batch in batches:
            yield batch.iloc[:0]

    job = frame.mapInPandas(imported, frame.schema)
    pool = ThreadPoolExecutor(1, thread_name_prefix="python-workers")
    future = pool.submit(lambda: job.write.format("noop").mode("overwrite").save())
    pool.shutdown(wait=False)
    return future
