"""uplift_nightly run by Airflow's own processes on localhost: REST API with login, backfill, clearing a task.

No mocks and no `airflow dags test`: `airflow api-server`, `airflow scheduler` and `airflow
dag-processor` run with the LocalExecutor on a temporary AIRFLOW_HOME, in one project home
shared by the whole module. First on SQLite, where 2026-10-30 is triggered through the REST API
with a simple-auth-manager login; then on a fresh PostgreSQL metadata database, where a
scheduler-driven `airflow backfill create` runs two earlier nights, one after the other, and one
run's `score` is cleared through the REST API and rerun by the scheduler.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import requests
from test_dag import champion_version

from conftest import RUN_DATE, TEST_CONF, write_overlay
from helpers import free_port, on_server

PROJECT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "uplift_nightly"
BACKFILL_DATES = [RUN_DATE - timedelta(days=d) for d in (2, 1)]  # 2026-10-28 and 2026-10-29
# The nightly's cron is 03:00 UTC: that is the time of every logical date it schedules.
NIGHTLY_TIME = "T03:00:00+00:00"
ADMIN = "admin"
PG = "host=127.0.0.1 port=5432 user=postgres"

# A whole DAG run takes 1.5-3 min on the 2-core machine, longer when other tests run alongside.
pytestmark = pytest.mark.timeout(5400)


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else ["<missing>"]
    return f"--- {path} (last {lines} lines)\n" + "\n".join(text[-lines:])


def partition(root: Path, table: str, day: date) -> Path:
    return root / "var" / "lake" / table / f"run_date={day}"


def fingerprint(folder: Path) -> dict[str, tuple[int, str]]:
    """mtime and content hash of every file under folder."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def eligible_customers(root: Path, day: date) -> set[str]:
    users = pd.read_parquet(root / "var" / "lake" / "raw" / "users" / f"dt={day}")
    return set(users.loc[users["age"] >= 18, "customer_id"])


class Stack:
    """api-server, scheduler and dag-processor on one AIRFLOW_HOME, driven through the REST API."""

    def __init__(self, env: dict[str, str], home: Path, port: int):
        self.env, self.home, self.url = env, home, f"http://127.0.0.1:{port}"
        self.port = port
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    def start(self) -> None:
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
        }
        for name, args in commands.items():
            with open(self.home / f"{name}.log", "w") as log:
                self.procs[name] = subprocess.Popen(
                    [AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        self.wait(self._api_up, 240, "the api-server answering /api/v2/monitor/health")
        self.token = self.login(ADMIN, self.password()).json()["access_token"]
        self.wait(lambda: self.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 240, f"{DAG_ID} parsed")

    def stop(self) -> None:
        """SIGTERM each process group, SIGKILL what is left (task processes, Spark JVMs) after a grace period."""
        for proc in self.procs.values():
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            self._signal(proc, signal.SIGKILL)
            proc.wait()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def logs(self) -> str:
        return "\n".join(tail(self.home / f"{name}.log") for name in self.procs)

    def password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())[ADMIN]

    def _api_up(self) -> bool:
        try:
            return requests.get(self.url + "/api/v2/monitor/health", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
            assert not dead, f"Airflow processes exited {dead} while waiting for {what}\n{self.logs()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s\n{self.logs()}"
            time.sleep(3)

    def login(self, username: str, password: str) -> requests.Response:
        """POST /auth/token of the simple auth manager: 201 with {"access_token": <JWT>} on success."""
        return requests.post(self.url + "/auth/token", json={"username": username, "password": password}, timeout=30)

    def request(self, method: str, path: str, token: str | None = "own", **kwargs) -> requests.Response:
        token = self.token if token == "own" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def ok(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def unpause(self) -> None:
        assert self.ok("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False

    def runs(self) -> list[dict]:
        return self.ok("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]

    def task(self, run_id: str, task_id: str) -> dict:
        return self.ok("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")

    def run_state(self, run_id: str) -> str:
        return self.ok("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]

    def wait_for_success(self, run_ids: list[str], timeout: float) -> None:
        def finished() -> bool:
            states = {run_id: self.run_state(run_id) for run_id in run_ids}
            failed = [run_id for run_id, state in states.items() if state == "failed"]
            assert not failed, self.failure_report(failed[0])
            return set(states.values()) == {"success"}

        self.wait(finished, timeout, f"success of {run_ids}")

    def failure_report(self, run_id: str) -> str:
        """Task states of a failed run and the tail of each failed task's log."""
        tis = self.ok("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        states = {ti["task_id"]: ti["state"] for ti in tis}
        logs = [
            tail(log, 60)
            for ti in tis
            if ti["state"] == "failed"
            for log in sorted((self.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}").rglob("*.log"))
            if f"task_id={ti['task_id']}" in str(log)
        ]
        return f"run {run_id} failed: {states}\n" + "\n".join(logs) + "\n" + self.logs()


@pytest.fixture(scope="module")
def project(settings, generated, spark_connect, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A project home (lake, MLflow, reports) with the generated raw data, shared by both stacks;
    its Spark steps on the suite's Connect server."""
    root = tmp_path_factory.mktemp("airflow_live")
    shutil.copytree(settings.paths.lake / "raw", root / "var" / "lake" / "raw")
    env = {
        **os.environ,
        **on_server({"UPLIFT_HOME": str(root), "UPLIFT_CONF": str(write_overlay(root, TEST_CONF))}, spark_connect),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        # Today is past the test's dates: without this, unpausing would also schedule the
        # latest night, which has no data. Triggered runs and backfills still run.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "300",
    }
    env.pop("UPLIFT_AUDIENCE_PG_DSN", None)
    return root, env


@contextmanager
def airflow_stack(project, name: str, sql_alchemy_conn: str | None = None) -> Iterator[Stack]:
    """Migrate the metadata DB of a new AIRFLOW_HOME, start the processes, stop them (whole groups) after."""
    root, base_env = project
    home = root / "airflow" / name
    home.mkdir(parents=True)
    port = free_port()
    env = {
        **base_env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Every component must sign and check the same tokens.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        # Not the default 8793: another scheduler on this machine may hold it.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
    }
    if sql_alchemy_conn:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = sql_alchemy_conn
        # Airflow derives the async URL as postgresql+asyncpg, which is not installed: psycopg 3 serves both.
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = sql_alchemy_conn.replace("+psycopg:", "+psycopg_async:")
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    stack = Stack(env, home, port)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


# --- 1. REST API with login, SQLite metadata, LocalExecutor ---------------------------------


@pytest.fixture(scope="module")
def first_night(project):
    """2026-10-30 triggered through the REST API of a stack on SQLite; what the API answered."""
    root, _ = project
    with airflow_stack(project, "sqlite") as stack:
        trigger = f"/api/v2/dags/{DAG_ID}/dagRuns"
        body = {"logical_date": f"{RUN_DATE}{NIGHTLY_TIME}"}
        refused = {
            "no token": stack.get(f"/api/v2/dags/{DAG_ID}", token=None).status_code,
            "trigger without token": stack.request("POST", trigger, token=None, json=body).status_code,
            "forged token": stack.request("POST", trigger, token="not.a.jwt", json=body).status_code,
            "wrong password": stack.login(ADMIN, "not-" + stack.password()).status_code,
            "unknown user": stack.login("mallory", stack.password()).status_code,
        }
        stack.unpause()
        run = stack.ok("POST", trigger, json=body)
        stack.wait_for_success([run["dag_run_id"]], 1800)
        return {"root": root, "refused": refused, "run": run, "runs": stack.runs()}


def test_api_refuses_requests_without_a_valid_login(first_night):
    refused = first_night["refused"]
    assert all(code in (401, 403) for code in refused.values()), refused
    # The refused trigger created nothing: the only run is the authenticated one.
    assert [r["dag_run_id"] for r in first_night["runs"]] == [first_night["run"]["dag_run_id"]]


def test_run_triggered_through_the_api_publishes_audience_and_champion(first_night):
    root, run = first_night["root"], first_night["run"]
    assert run["logical_date"].startswith(f"{RUN_DATE}T03:00:00") and run["run_type"] == "manual"
    audience = pd.read_parquet(partition(root, "audience", RUN_DATE))
    assert set(audience["customer_id"]) == eligible_customers(root, RUN_DATE)
    champion = champion_version(root)
    assert champion.tags["run_date"] == RUN_DATE.isoformat()
    assert (audience["model_version"] == str(champion.version)).all()


# --- 2. PostgreSQL metadata: a scheduler-driven backfill of earlier nights ---------------------


@pytest.fixture(scope="module")
def postgres_metadata() -> Iterator[str]:
    """A fresh database on the local server for Airflow's metadata; dropped afterwards, whatever happened."""
    name = f"airflow_live_{secrets.token_hex(6)}"
    with psycopg.connect(PG + " dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG + " dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def postgres_stack(project, first_night, postgres_metadata) -> Iterator[Stack]:
    with airflow_stack(project, "postgres", postgres_metadata) as stack:
        stack.unpause()
        yield stack


@pytest.fixture(scope="module")
def backfill(project, postgres_stack):
    """`airflow backfill create` over 10-28..10-29 after 10-30 ran and was promoted; the state before and after."""
    root, _ = project
    stack = postgres_stack
    newer = partition(root, "audience", RUN_DATE)
    before = {"audience": fingerprint(newer), "champion": champion_version(root)}
    window = ["--from-date", f"{BACKFILL_DATES[0]}{NIGHTLY_TIME}", "--to-date", f"{BACKFILL_DATES[-1]}{NIGHTLY_TIME}"]
    command = [AIRFLOW, "backfill", "create", "--dag-id", DAG_ID, "--max-active-runs", "1", *window]
    created = subprocess.run(command, env=stack.env, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
    runs = {date.fromisoformat(r["logical_date"][:10]): r["dag_run_id"] for r in stack.runs()}
    assert sorted(runs) == BACKFILL_DATES, stack.runs()
    stack.wait_for_success(list(runs.values()), 3600)

    def backfills() -> list[dict]:
        return stack.ok("GET", "/api/v2/backfills", params={"dag_id": DAG_ID})["backfills"]

    stack.wait(lambda: all(b["completed_at"] for b in backfills()), 180, "the backfill marked completed")
    return {"root": root, "runs": runs, "before": before, "backfills": backfills()}


def test_backfill_runs_each_earlier_night_on_its_own_data(backfill):
    root, runs = backfill["root"], backfill["runs"]
    assert all(run_id.startswith("backfill__") for run_id in runs.values()), runs
    assert len(backfill["backfills"]) == 1, backfill["backfills"]
    for day in BACKFILL_DATES:
        training = pd.read_parquet(partition(root, "features/training", day), columns=["sent_at"])
        # Only sends whose attribution window had closed by that night (and every such day).
        assert training["sent_at"].dt.date.max() == day - timedelta(days=7), day
        scoring = pd.read_parquet(partition(root, "features/scoring", day), columns=["customer_id"])
        audience = pd.read_parquet(partition(root, "audience", day), columns=["customer_id"])
        assert set(scoring["customer_id"]) == set(audience["customer_id"]) == eligible_customers(root, day), day
        gate = json.loads((root / "var" / "reports" / f"run_date={day}" / "gate.json").read_text())
        assert gate["decision"] == "reject" and any("a backfill never replaces it" in r for r in gate["reasons"])


def test_backfill_keeps_the_newer_champion_and_its_audience(backfill):
    root, before = backfill["root"], backfill["before"]
    champion = champion_version(root)
    assert (champion.version, champion.tags["run_date"]) == (before["champion"].version, RUN_DATE.isoformat())
    assert fingerprint(partition(root, "audience", RUN_DATE)) == before["audience"]


# --- 3. A rerun by clearing a task -------------------------------------------------------------


def test_clearing_score_reruns_it_with_the_same_audience(backfill, postgres_stack):
    root, stack = backfill["root"], postgres_stack
    day = BACKFILL_DATES[-1]
    run_id = backfill["runs"][day]
    folder = partition(root, "audience", day)
    before, published = pd.read_parquet(folder), fingerprint(folder)
    tries = stack.task(run_id, "score")["try_number"]

    cleared = stack.ok(
        "POST",
        f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": ["score"],
            "include_downstream": True,
            "only_failed": False,
            "dry_run": False,
            "reset_dag_runs": True,
        },
    )
    assert {"score", "drift"} <= {ti["task_id"] for ti in cleared["task_instances"]}, cleared
    stack.wait(lambda: stack.task(run_id, "score")["try_number"] > tries, 300, "score requeued")
    stack.wait_for_success([run_id], 900)

    score = stack.task(run_id, "score")
    assert (score["state"], score["try_number"]) == ("success", tries + 1)
    after = pd.read_parquet(folder)
    assert not after["customer_id"].duplicated().any()
    assert (after["scored_at"] > before["scored_at"].max()).all(), "the partition was scored and published again"
    pd.testing.assert_frame_equal(rows(after), rows(before))
    assert (after["campaign_id"] == before["campaign_id"].iloc[0] + "_v2").all(), "sent under an id of its own"
    assert fingerprint(partition(root, "audience_versions", day) / "version=1") == published, "kept as it was"


def rows(audience: pd.DataFrame) -> pd.DataFrame:
    """The audience in customer order, without scored_at (when it was scored) and campaign_id (its version's)."""
    return audience.drop(columns=["scored_at", "campaign_id"]).sort_values("customer_id").reset_index(drop=True)
