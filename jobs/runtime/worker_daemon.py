"""The Python daemon of the local Spark Connect server: pyspark's own, which quits once idle.

Spark forks a session's Python workers from a daemon of that session (its workers carry the
session's artifacts), and Spark 4.3 stops a daemon only with the server (SPARK-54055): a
long-lived server kept one daemon, 36 MB of its own memory, for every session that had run
Python (every night's scoring, every backfilled date), measured 2026-12-04. This daemon exits
once it has had no worker for IDLE_S (Spark ends a worker idle for a minute); should its session
run Python again, Spark starts it a new one ("Assuming that daemon unexpectedly quit" in the
server log) and the job runs.

Run by the server as `python -m jobs.runtime.worker_daemon` (`spark.python.daemon.module`, jobs.runtime.connect).
"""

from __future__ import annotations

import os
import signal
import time

import psutil
from pyspark import daemon

# How long without a worker before the daemon exits; the environment variable is for tests.
IDLE_S = float(os.environ.get("UPLIFT_PYTHON_DAEMON_IDLE_S", 600))


def exit_when_idle(idle_s: float = IDLE_S) -> None:
    """Check for workers every 30 s at most (SIGALRM, in the daemon's own loop); exit after idle_s without one.

    The exit is pyspark's own shutdown (its manager's `finally`), with no worker to end. Forked
    workers reset the handler: a worker must never run this check.
    """
    check_s = max(1, int(min(idle_s, 30)))
    idle_since: float | None = None
    me = psutil.Process()

    def check(signum, frame) -> None:
        nonlocal idle_since
        if me.children():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_s:
            raise SystemExit(0)
        signal.alarm(check_s)

    signal.signal(signal.SIGALRM, check)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGALRM, signal.SIG_DFL))
    signal.alarm(check_s)


if __name__ == "__main__":
    exit_when_idle()
    daemon.manager()
