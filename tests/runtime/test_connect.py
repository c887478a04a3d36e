"""The local Spark Connect server (jobs/runtime/connect.py): started on demand by a step, once, on
127.0.0.1 only, never shared with another checkout, stopped by `uplift spark-server stop`; a
server that cannot start is named with its log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from helpers import free_port
from jobs.runtime import connect

UPLIFT = str(Path(sys.executable).parent / "uplift")


def on_port(settings, port: int, **spark):
    return settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"remote": f"sc://localhost:{port}", **spark})}
    )


def uplift(env: dict, *args: str) -> dict:
    done = subprocess.run([UPLIFT, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def other_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_the_first_step_starts_one_server_that_listens_on_loopback_only(settings, tmp_path):
    port = free_port()
    env = {**os.environ, "UPLIFT_CONF": f"{os.environ['UPLIFT_CONF']}{os.pathsep}{tmp_path / 'remote.yml'}"}
    (tmp_path / "remote.yml").write_text(f"spark:\n  remote: sc://localhost:{port}\n")
    try:
        # Two clients finding no server at once: one server between them.
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: connect.ensure_server(on_port(settings, port)), range(2)))
        status = uplift(env, "spark-server", "status")
        assert status["listening"] and status["pid"]
        assert "Spark Connect server started at: 127.0.0.1:" in Path(status["log"]).read_text()
        servers = subprocess.run(["pgrep", "-f", f"grpc.binding.port={port}"], capture_output=True, text=True)
        assert len(servers.stdout.split()) == 1, servers.stdout
        if (address := other_address()) is not None:
            assert not connect.listening(address, port), f"the server answers on {address}"
        # A server another checkout started runs that checkout's code: refused by name.
        record = connect.state_dir(port) / "server.json"
        started = record.read_text()
        record.write_text(started.replace(json.dumps(str(connect.PROJECT_ROOT)), '"/srv/other-checkout"'))
        with pytest.raises(connect.ServerError, match="runs /srv/other-checkout .*not this checkout"):
            connect.ensure_server(on_port(settings, port))
        record.write_text(started)
        assert uplift(env, "spark-server", "stop") == {"port": port, "stopped": status["pid"]}
        assert not connect.listening("127.0.0.1", port)
        assert uplift(env, "spark-server", "status")["pid"] is None
    finally:
        connect.stop(on_port(settings, port))


# A step's process, as Airflow runs it: a query hours long on 2 cores, then the task's
# execution_timeout (an exception) while the query runs; the server's CPU before and after.
FAILING_STEP = """
import json, os, threading, time
import psutil
from jobs.runtime import connect
from jobs.settings import load_settings
from jobs.runtime.spark import step_session

settings = load_settings()
seen = {}

def long_query(spark):
    try:
        spark.range(0, 10**13, 1, 4).selectExpr("sum(id % 7)").collect()
        seen["query"] = "finished"
    except Exception as error:
        seen["query"] = type(error).__name__

try:
    with step_session(settings, "uplift-test-cancel", shared=SHARED) as spark:
        seen["session"] = spark.session_id
        query = threading.Thread(target=long_query, args=(spark,))
        query.start()
        time.sleep(5)
        server = psutil.Process(connect.server_pid(connect.address(settings.spark.remote)[1]))
        server.cpu_percent(None)
        time.sleep(1)
        seen["cpu_while_running"] = server.cpu_percent(None)
        raise TimeoutError("the task's execution_timeout")
except TimeoutError:
    query.join(60)
    seen["query_alive"] = query.is_alive()
    server.cpu_percent(None)
    time.sleep(2)
    seen["cpu_after"] = server.cpu_percent(None)
    seen["connect_env_left"] = sorted({"SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"} & set(os.environ))
    with step_session(settings, "uplift-test-next", shared=SHARED) as spark:
        seen["next_session"], seen["next_rows"] = spark.session_id, spark.range(5).count()
print(json.dumps(seen))
os._exit(0)  # a query thread left running must not hold the process
"""


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["own session", "shared session"])
def test_a_step_that_fails_mid_query_cancels_the_query_on_the_server(settings, tmp_path, shared):
    """A failing or timed-out step (an exception in its process) releases its session, and with
    it what the server was running for it: the next step finds the server idle, and runs (in a
    new session: a released one is gone). And the process is left classic: pyspark would leave
    it in Connect mode."""
    port = free_port()
    (tmp_path / "remote.yml").write_text(f"spark:\n  remote: sc://localhost:{port}\n")
    env = {**os.environ, "UPLIFT_CONF": f"{os.environ['UPLIFT_CONF']}{os.pathsep}{tmp_path / 'remote.yml'}"}
    try:
        step = [sys.executable, "-c", f"SHARED = {shared}\n" + FAILING_STEP]
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["cpu_while_running"] > 100, f"the query was not running: {seen}"
        assert not seen["query_alive"] and seen["query"] != "finished", seen
        assert seen["cpu_after"] < 50, f"the server still runs the failed step's query: {seen}"
        assert seen["connect_env_left"] == [], seen
        assert seen["next_rows"] == 5 and seen["next_session"] != seen["session"], seen
    finally:
        connect.stop(on_port(settings, port))


# One step of a night on the shared session: a query whose classes Spark generates and compiles.
SHARED_STEP = """
import json, sys
from jobs.settings import load_settings
from jobs.runtime.spark import step_session

with step_session(load_settings(), "uplift-test-shared", shared=sys.argv[2] == "shared") as spark:
    frame = spark.range(10_000).selectExpr("id % 7 AS k", "id * 3 AS v").groupBy("k").sum("v")
    cached_before = frame.storageLevel.useMemory  # left by the step before?
    frame.cache().count()
    rows = spark.read.parquet(sys.argv[1]).count()  # a folder whose files change between the steps
    print(json.dumps({"session": spark.session_id, "cached_before": cached_before, "rows": rows}))
"""

# Attach to a session by its id: a released one the server refuses for good.
REATTACH = """
import sys
from jobs.settings import load_settings
from jobs.runtime.spark import _connect

try:
    _connect(load_settings(), sys.argv[1]).range(1).count()
    print("open")
except Exception as error:
    print("refused" if "SESSION_CLOSED" in str(error) else f"failed: {error}")
"""


@pytest.mark.slow
def test_the_nightly_steps_share_a_session_and_the_classes_spark_compiled_for_it(settings, tmp_path):
    """Spark keeps the classes it generates for a query per Connect session: a step in a session
    of its own compiled the same classes again every night. The nightly's steps share one
    session on the local server, so a step run again compiles (almost) nothing; a step that
    leaves nothing cached behind for the next one, and reads a folder as it is now (a date
    republished between two steps); a step outside the night (what-if) keeps a session of its own."""
    port = free_port()
    (tmp_path / "remote.yml").write_text(f"spark:\n  remote: sc://localhost:{port}\n")
    env = {**os.environ, "UPLIFT_CONF": f"{os.environ['UPLIFT_CONF']}{os.pathsep}{tmp_path / 'remote.yml'}"}
    log = connect.state_dir(port) / "server.log"

    folder = tmp_path / "published"
    folder.mkdir()
    pd.DataFrame({"x": range(5)}).to_parquet(folder / "part-a.parquet")

    def step(rows: int, session: str = "shared") -> tuple[str, int]:
        before = log.read_text().count("Code generated in") if log.exists() else 0
        command = [sys.executable, "-c", SHARED_STEP, str(folder), session]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert not seen["cached_before"], "the step before left its cache in the shared session"
        assert seen["rows"] == rows, f"read {seen['rows']} rows of the folder, not the {rows} it holds"
        return seen["session"], log.read_text().count("Code generated in") - before

    try:
        first, compiled = step(5)
        (folder / "part-a.parquet").unlink()  # republished: other files, other rows
        pd.DataFrame({"x": range(7)}).to_parquet(folder / "part-b.parquet")
        second, compiled_again = step(7)
        assert first == second == connect.shared_session(on_port(settings, port))
        assert compiled >= 3 and compiled_again < compiled / 2, (compiled, compiled_again)
        own, _ = step(7, session="own")  # a step outside the night
        assert own != first
        # A server that names no session to share (started by code from before sharing): the
        # night's step runs in a session of its own, and releases it like any other.
        record = connect.state_dir(port) / "server.json"
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "session"}))
        unshared, _ = step(7)
        assert unshared != first
        done = subprocess.run([sys.executable, "-c", REATTACH, unshared], env=env, capture_output=True, text=True)
        assert done.stdout.strip().splitlines()[-1:] == ["refused"], done.stdout + done.stderr[-3000:]
    finally:
        connect.stop(on_port(settings, port))


# A session that runs Python, stays open while its daemon goes idle, then runs Python again.
IDLE_SESSION = """
import json, time
import psutil
from jobs.runtime import connect
from jobs.settings import load_settings
from jobs.runtime.spark import start_python_workers, step_session

settings = load_settings()
server = psutil.Process(connect.server_pid(connect.address(settings.spark.remote)[1]))

def daemons():
    # the server's Python daemons, not their workers (forked from them, with the same command)
    found = []
    for process in server.children(recursive=True):
        try:
            daemon = "jobs.runtime.worker_daemon"
            if daemon in process.cmdline() and daemon not in process.parent().cmdline():
                found.append(process.pid)
        except psutil.Error:  # gone, or a zombie the JVM has not collected
            pass
    return found

seen = {}
with step_session(settings, "uplift-test-idle") as spark:
    frame = spark.range(4).selectExpr("cast(id as string) AS customer_id")
    start_python_workers(frame, ("jobs.model.portable",)).result()
    seen["daemons_after_python"] = len(daemons())
    started = time.monotonic()
    while daemons() and time.monotonic() - started < 240:
        time.sleep(2)
    seen["daemons_once_idle"], seen["idle_s"] = len(daemons()), round(time.monotonic() - started)
    start_python_workers(frame, ("jobs.model.portable",)).result()
    seen["daemons_after_python_again"] = len(daemons())
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_the_python_daemon_of_an_idle_session_exits_and_the_session_still_runs_python(settings, tmp_path):
    """Spark keeps a Python daemon per Connect session until the server stops: a server that runs
    for months would keep one per night. Ours exits once idle (jobs.runtime.worker_daemon), and a session
    that runs Python after that gets a new one."""
    port = free_port()
    (tmp_path / "remote.yml").write_text(f"spark:\n  remote: sc://localhost:{port}\n")
    env = {
        **os.environ,
        "UPLIFT_CONF": f"{os.environ['UPLIFT_CONF']}{os.pathsep}{tmp_path / 'remote.yml'}",
        "UPLIFT_PYTHON_DAEMON_IDLE_S": "3",  # the server's environment, so its daemons'
    }
    try:
        step = [sys.executable, "-c", IDLE_SESSION]
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["daemons_after_python"] == 1, seen
        assert seen["daemons_once_idle"] == 0, f"the idle daemon is still there: {seen}"
        assert seen["daemons_after_python_again"] == 1, seen
    finally:
        connect.stop(on_port(settings, port))


@pytest.mark.slow
def test_a_server_that_cannot_start_is_named_with_its_log(settings):
    port = free_port()
    with pytest.raises(connect.ServerError, match=rf"did not start; .*uplift-spark-connect-{port}/server.log"):
        connect.ensure_server(on_port(settings, port, driver_memory="lots"))
    assert not connect.listening("127.0.0.1", port)


def test_only_a_server_on_this_machine_is_started_from_here(settings):
    assert connect.is_local("sc://localhost:15002") and connect.is_local("sc://127.0.0.1:1/;token=x")
    assert not connect.is_local("sc://spark-connect:15002")
    assert connect.address("sc://spark-connect") == ("spark-connect", connect.DEFAULT_PORT)
    with pytest.raises(connect.ServerError, match="sc://host:port"):
        connect.address("spark://master:7077")
