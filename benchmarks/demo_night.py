"""The demo-size night as `make demo` runs it: the uplift_nightly DAG through Airflow, task by task.

In a fresh project and Airflow home: `uplift generate` (the demo's defaults), `airflow db
migrate`, `airflow dags test uplift_nightly <run date>`; then each task's duration as Airflow
recorded it (task_instance.duration: the task's process, JVM and interpreter start included).
The target is their sum, the night's task time, under 60 s.

The settings are conf/base's, Spark Connect included: the first Spark task finds no server and
starts one (jobs/runtime/connect.py), so its start and the cold JVM are in the task time, as on a
machine's first night. Only the server's port is the bench's own (a free one, not a developer's
15002), and the server is stopped at the end.

    python -m benchmarks.demo_night      (part of `make bench`)

Writes benchmarks/results/demo-night-<date>-<commit>.json and prints it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

from benchmarks import publish
from benchmarks.nightly import free_port
from jobs.settings import DEMO_CONF

PROJECT = Path(__file__).resolve().parent.parent
RUN_DATE = "2026-10-30"
TARGET_TASK_S = 60


def run(command: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="uplift-demo-night-"))
    bin_dir = Path(sys.executable).parent
    overlay = home / "port.yml"
    overlay.write_text(yaml.safe_dump({"spark": {"remote": f"sc://localhost:{free_port()}"}}))
    env = {
        **os.environ,
        "UPLIFT_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[2]"}',
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": str(bin_dir) + os.pathsep + os.environ["PATH"],
    }
    env["UPLIFT_CONF"] = f"{DEMO_CONF}{os.pathsep}{overlay}"
    (home / "airflow").mkdir()
    try:
        walls = {
            "generate": run([str(bin_dir / "uplift"), "generate", "--last-day", RUN_DATE], env, home / "generate.log"),
            "db_migrate": run([str(bin_dir / "airflow"), "db", "migrate"], env, home / "migrate.log"),
            "dags_test": run(
                [str(bin_dir / "airflow"), "dags", "test", "uplift_nightly", RUN_DATE], env, home / "dags-test.log"
            ),
        }
    finally:
        subprocess.run([str(bin_dir / "uplift"), "spark-server", "stop"], env=env, check=False)
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, state, duration FROM task_instance WHERE dag_id = 'uplift_nightly' ORDER BY start_date"
        ).fetchall()
    tasks = {task: {"state": state, "seconds": round(duration or 0.0, 1)} for task, state, duration in rows}
    steps = {}
    for path in sorted((home / "var" / "reports" / f"run_date={RUN_DATE}" / "steps").glob("*.json")):
        record = json.loads(path.read_text())
        steps[record["step"]] = record["seconds"]
    total = round(sum(t["seconds"] for t in tasks.values()), 1)
    result = {
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.demo_night",
        "tasks": tasks,
        "task_seconds": total,
        "steps_own_clock": steps,
        "steps_own_clock_total": round(sum(steps.values()), 1),
        "walls": walls,
        "target": f"task time < {TARGET_TASK_S} s",
        "met": total < TARGET_TASK_S and all(t["state"] == "success" for t in tasks.values()),
    }
    publish("demo-night-", result, {"task_seconds": total, "dags_test_wall_s": walls.get("dags_test")})
    print(json.dumps(result, indent=2))
    shutil.rmtree(home)


if __name__ == "__main__":
    main()
