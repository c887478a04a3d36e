"""Publishing is atomic: a scoring job killed while it writes leaves the previous audience whole."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from conftest import RUN_DATE
from jobs import steps
from jobs.data.lake import partition_dir, table_dir


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_killed_while_writing_keeps_the_previous_partition(settings, nightly):
    audience = partition_dir(settings, "audience", RUN_DATE)
    before_files, before = _files(audience), pd.read_parquet(audience)
    job = subprocess.Popen(
        [str(Path(sys.executable).parent / "uplift"), "score", "--run-date", RUN_DATE.isoformat()],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pattern = f".staging-{RUN_DATE}-*"
    deadline = time.monotonic() + 300
    while not list(table_dir(settings, "audience").glob(pattern)):
        assert job.poll() is None, "the job ended before it started writing"
        assert time.monotonic() < deadline, "the job never started writing"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the CLI and its Spark JVM, mid-write
    job.wait(timeout=60)

    assert _files(audience) == before_files
    after = pd.read_parquet(audience)
    pd.testing.assert_frame_equal(after, before)
    table = pd.read_parquet(table_dir(settings, "audience"))  # a reader of the whole table
    assert table[table["run_date"].astype(str) == str(RUN_DATE)]["customer_id"].is_unique, "no half partition seen"

    steps.run("score", RUN_DATE, settings)  # the retry replaces the partition and clears the debris
    assert not list(table_dir(settings, "audience").glob(pattern))
    assert len(pd.read_parquet(audience)) == len(before)
