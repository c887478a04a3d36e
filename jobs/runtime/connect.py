"""The Spark Connect server the steps run on when `spark.remote` is set (the embedded default).

Each Spark step used to start its own JVM through spark-submit: at demo size that start and
the cold JIT were half of every step. With `spark.remote`, the steps are thin clients of one
long-lived server whose JVM stays warm between the tasks of a night and between nights.

A server on this machine (`sc://localhost:<port>`) is started on demand by the first step that
needs it, runs detached from that step (so an Airflow task ending does not end it), and keeps
running until `uplift spark-server stop`. It is started from `spark:` in conf (master, driver
memory, JVM options) and listens on 127.0.0.1 only: a Connect server runs whatever code a client
sends. A remote host (a server in front of a cluster) is never started from here.

The server's Python workers import `jobs` from the checkout that started it, once per worker:
after changing the code, `uplift spark-server stop` (the next step starts a fresh server). Their
daemon, one per session that runs Python, exits once idle (jobs.runtime.worker_daemon).

The nightly's Spark steps share one session on a local server (`shared_session`), from night to
night: Spark keeps the classes it generates for a query per session (their class loader is the
session's), so a step in a session of its own compiled its ~300 classes again every night. A
step that fails releases the shared session, and with it what the server runs for it; the next
step gets a new one (`renew_session`), as it does when the session expired unused
(SESSION_TIMEOUT).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse

from jobs.runtime.conf import CONNECT_ENV, submit_conf
from jobs.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
DEFAULT_PORT = 15002
START_TIMEOUT_S = 180
# How long the server keeps a session no client has used: the steps' shared session must outlive
# the day between two nights (a weekly cadence gets a new one, and compiles again).
SESSION_TIMEOUT = "48h"
# Generated classes kept (Spark's default, 100, is a third of what one night generates).
CODEGEN_CACHE_ENTRIES = 1000


class ServerError(RuntimeError):
    """The local Spark Connect server could not be started or reached."""


def address(remote: str) -> tuple[str, int]:
    """Host and port of a Spark Connect URL (`sc://host:port/;params`)."""
    parsed = urlparse(remote)
    if parsed.scheme != "sc" or not parsed.hostname:
        raise ServerError(f"spark.remote must look like sc://host:port, not {remote!r}")
    return parsed.hostname, parsed.port or DEFAULT_PORT


def is_local(remote: str) -> bool:
    return address(remote)[0] in LOCAL_HOSTS


def listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def state_dir(port: int) -> Path:
    """Pid, log and start lock of the server on port (one per machine and port, like the port itself)."""
    path = Path(tempfile.gettempdir()) / f"uplift-spark-connect-{port}"
    path.mkdir(exist_ok=True)
    return path


def server_command(settings: Settings, port: int) -> list[str]:
    """spark-submit of the Connect server, with what the DAG's spark-submit tasks are submitted with."""
    spark = settings.spark
    conf = {
        **submit_conf(settings),
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": port,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.connect.session.manager.defaultSessionTimeout": SESSION_TIMEOUT,
        "spark.sql.codegen.cache.maxEntries": CODEGEN_CACHE_ENTRIES,
        # pyspark's daemon, exiting once idle: Spark keeps a daemon per session until the server stops.
        "spark.python.daemon.module": "jobs.runtime.worker_daemon",
    }
    command = [str(Path(sys.executable).parent / "spark-submit"), "--class", SERVER_CLASS, "--name", "uplift-connect"]
    command += ["--master", spark.master, "--driver-memory", spark.driver_memory]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return command


def _record(port: int) -> dict | None:
    """What the server on port was started from (pid, checkout, interpreter), if it still runs."""
    try:
        record = json.loads((state_dir(port) / "server.json").read_text())
        os.kill(record["pid"], 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError):
        return None
    return record


def server_pid(port: int) -> int | None:
    """The pid of the local server on port, if one runs (started from here)."""
    record = _record(port)
    return record["pid"] if record else None


def _check_same_code(port: int) -> None:
    """A server runs the `jobs` of the checkout that started it (its Python workers import it):
    another checkout's would score with other code."""
    record = _record(port)
    ours = {"project": str(PROJECT_ROOT), "python": sys.executable}
    if record and {k: record.get(k) for k in ours} != ours:
        raise ServerError(
            f"the Spark Connect server on port {port} (pid {record['pid']}) runs {record.get('project')} with "
            f"{record.get('python')}, not this checkout: stop it (`uplift spark-server stop` there) or set "
            "spark.remote to another port"
        )


@contextmanager
def _start_lock(port: int):
    """Two steps finding no server at once start one between them."""
    with (state_dir(port) / "start.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(settings: Settings, port: int) -> int:
    """Start the server on 127.0.0.1:port, detached; wait until it listens. Its pid."""
    folder = state_dir(port)
    logfile = folder / "server.log"
    env = {
        **{k: v for k, v in os.environ.items() if k not in CONNECT_ENV},
        "PYSPARK_PYTHON": sys.executable,
        # The Python workers unpickle scoring's functions by reference into this checkout's `jobs`.
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    env.pop("PYSPARK_GATEWAY_PORT", None)
    started = time.perf_counter()
    with logfile.open("w") as out:
        process = subprocess.Popen(
            server_command(settings, port),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            start_new_session=True,  # outlives the step (and the Airflow task) that started it
        )
    record = {"pid": process.pid, "project": str(PROJECT_ROOT), "python": sys.executable, "session": _new_session()}
    (folder / "server.json").write_text(json.dumps(record))
    while not listening("127.0.0.1", port):
        if process.poll() is not None or time.perf_counter() - started > START_TIMEOUT_S:
            stop_pid(process.pid)
            tail = "\n".join(logfile.read_text().splitlines()[-30:])
            raise ServerError(f"the Spark Connect server on port {port} did not start; {logfile}:\n{tail}")
        time.sleep(0.2)
    log.info(
        "started a Spark Connect server on 127.0.0.1:%d (pid %d) in %.1f s; log %s (`uplift spark-server stop`)",
        port,
        process.pid,
        time.perf_counter() - started,
        logfile,
    )
    return process.pid


def ensure_server(settings: Settings) -> None:
    """Start the local server `spark.remote` names unless one listens there already."""
    host, port = address(settings.spark.remote)
    if not is_local(settings.spark.remote):
        return
    with _start_lock(port):
        if listening(host, port):
            _check_same_code(port)
        else:
            start(settings, port)


def _new_session() -> str:
    return str(uuid.uuid4())


def shared_session(settings: Settings) -> str | None:
    """The id of the session the nightly's steps share on the local server of `spark.remote`
    (None for a remote host, or a server not started from here)."""
    if not is_local(settings.spark.remote):
        return None
    record = _record(address(settings.spark.remote)[1])
    return record.get("session") if record else None


def renew_session(settings: Settings, stale: str) -> str:
    """Replace the shared session `stale` (released or expired: the server refuses its id for
    good) with a new one, unless another step did already; the id to use."""
    port = address(settings.spark.remote)[1]
    with _start_lock(port):
        path = state_dir(port) / "server.json"
        record = json.loads(path.read_text())
        if record.get("session") in (None, stale):
            record["session"] = _new_session()
            path.write_text(json.dumps(record))
        return record["session"]


def stop_pid(pid: int, timeout_s: float = 60) -> None:
    """SIGTERM to the server's process group (its JVM and Python workers); SIGKILL if it lingers.
    Returns once every process of the group has exited (the JVM, which holds the port, may outlive
    the process that launched it)."""
    import psutil

    try:
        group = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        group = []
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def running(process: psutil.Process) -> bool:
        try:
            return process.status() != psutil.STATUS_ZOMBIE  # a zombie has exited; its parent collects it
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # A server this process started is its child: collect it, or it stays a zombie.
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not any(running(p) for p in group):
            return
        time.sleep(0.2)
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def stop(settings: Settings) -> dict:
    """Stop the local server of `spark.remote` (started by any step of this machine)."""
    _, port = address(settings.spark.remote)
    pid = server_pid(port)
    if pid is not None:
        stop_pid(pid)
        (state_dir(port) / "server.json").unlink(missing_ok=True)
    return {"port": port, "stopped": pid}


def status(settings: Settings) -> dict:
    host, port = address(settings.spark.remote)
    return {
        "remote": settings.spark.remote,
        "listening": listening(host, port),
        "pid": server_pid(port) if is_local(settings.spark.remote) else None,
        "log": str(state_dir(port) / "server.log") if is_local(settings.spark.remote) else None,
    }
