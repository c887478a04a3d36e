"""uplift_nightly run by Airflow's own processes on localhost: REST API with login, backfill, clearing a task.

No mocks and no `airflow dags test`: `airflow api-server`, `scheduler`, `dag-processor` and
`triggerer` (what `airflow standalone` runs) with the LocalExecutor on a temporary AIRFLOW_HOME,
in one project home shared by the whole module, its Spark Connect address given by an Airflow
connection, every send list awaiting a campaign manager's approval. First on SQLite, where
2026-10-30 is triggered through the REST API with a simple-auth-manager login, with no logical
date and the run_date param, its sends landing while the night waits for them, its send list
approved; then a night whose sends are refused (tried once) and a night whose deliveries never
land (failed at the deadline, e-mailed to a local SMTP server). Then on a fresh PostgreSQL
metadata database, where a scheduler-driven `airflow backfill create` runs two earlier nights,
one after the other (the first's send list rejected, the second's approved), and one run's
`score` is cleared through the REST API and rerun by the scheduler (its new send list left
unanswered until the approval times out).
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
import yaml
from aiosmtpd.controller import Controller
from test_dag import champion_version

from conftest import RUN_DATE, TEST_CONF, with_demo, write_overlay
from helpers import free_port

PROJECT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "uplift_nightly"
BACKFILL_DATES = [RUN_DATE - timedelta(days=d) for d in (2, 1)]  # 2026-10-28 and 2026-10-29
# The nightly's cron is 03:00 UTC: that is the time of every logical date it schedules.
NIGHTLY_TIME = "T03:00:00+00:00"
ADMIN = "admin"
PG = "host=127.0.0.1 port=5432 user=postgres"
REFUSED_DATE = RUN_DATE + timedelta(days=1)  # deliveries copied from RUN_DATE, a few sends on an unknown arm
MISSING_DATE = RUN_DATE + timedelta(days=6)  # nothing delivered
NOTIFY = "campaigns@example.com"
# What the module's nights run with beyond the suite's settings: transient failures retried once,
# deliveries awaited for a minute (checked every 20 s), failures e-mailed, every
# export approved or rejected by a campaign manager; the Spark Connect address in the YAML is a
# port nothing listens on, so the steps reach the suite's server only through the connection.
LIVE_CONF = {
    "schedule": {
        **TEST_CONF["schedule"],
        "retries": 1,
        "retry_delay_minutes": 0.1,
        "delivery_wait_minutes": 1.0,
        "delivery_poke_seconds": 20,  # above the few seconds a finished poke may take to be reported
        "notify_email": [NOTIFY],
    },
    "spark": {**TEST_CONF["spark"], "remote": "sc://localhost:9"},
    # An approval left unanswered for 72 s is a rejection (the scheduler checks every 15 s).
    "targeting": {"approval": "required", "approval_timeout_hours": 0.02},
}

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
        self.parked: dict[tuple[str, int], float] = {}  # (run, try) of an approval -> when it was seen waiting

    def start(self) -> None:
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer"],  # as `airflow standalone` runs it
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

    def answer_approvals(self, run_ids: list[str], answers: dict[str, str]) -> None:
        """Answer each run's pending `approve` as a campaign manager would in the UI (default: Approve),
        some seconds after it parked: an answer within a second or two, before the scheduler has taken
        the parked task's exit from the LocalExecutor, gets the resumed task failed by Airflow ("state
        changed externally")."""
        for run_id in run_ids:
            approve = self.task(run_id, "approve")
            if approve["state"] != "awaiting_input":
                continue
            parked = self.parked.setdefault((run_id, approve["try_number"]), time.monotonic())
            choice = answers.get(run_id, "Approve")  # None: left unanswered, to time out
            if choice is not None and time.monotonic() - parked >= 15:
                path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
                self.ok("PATCH", path, json={"chosen_options": [choice]})

    def wait_for_success(
        self, run_ids: list[str], timeout: float, answers: dict[str, str | None] | None = None
    ) -> None:
        def finished() -> bool:
            self.answer_approvals(run_ids, answers or {})
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


class Mailbox:
    """The messages an SMTP server on localhost received (aiosmtpd)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.content, policy=policy.default)
        body = message.get_body(("html", "plain"))
        self.messages.append(
            {"to": envelope.rcpt_tos, "subject": message["subject"], "body": body.get_content() if body else ""}
        )
        return "250 OK"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def project(settings, generated, spark_connect, mailbox, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A project home (lake, MLflow, reports) with the generated raw data, shared by both stacks;
    its Spark steps on the suite's Connect server, whose address an Airflow connection gives."""
    root = tmp_path_factory.mktemp("airflow_live")
    shutil.copytree(settings.paths.lake / "raw", root / "var" / "lake" / "raw")
    remote = yaml.safe_load(spark_connect.read_text())["spark"]["remote"]
    overlay = write_overlay(root, {**TEST_CONF, **LIVE_CONF})
    smtp = {"from_email": "uplift@example.com", "disable_tls": True, "disable_ssl": True, "retry_limit": 1}
    env = {
        **os.environ,
        "UPLIFT_HOME": str(root),
        "UPLIFT_CONF": with_demo(overlay),
        "AIRFLOW_CONN_UPLIFT_SPARK_CONNECT": json.dumps(
            {"conn_type": "spark_connect", "host": "localhost", "port": int(remote.rsplit(":", 1)[1])}
        ),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": mailbox[1], "extra": smtp}
        ),
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
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
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
def first_night(project, mailbox):
    """2026-10-30 triggered through the REST API of a stack on SQLite, with no logical date and the
    run_date param, its sends landing only once the night waits for them; then a night whose sends
    are refused and one whose deliveries never land. What the API and the mailbox answered."""
    root, _ = project
    sends = root / "var" / "lake" / "raw" / "sends" / f"dt={RUN_DATE}"
    held_back = root / "held_back_sends"
    with airflow_stack(project, "sqlite") as stack:
        trigger = f"/api/v2/dags/{DAG_ID}/dagRuns"
        body = {"logical_date": None, "conf": {"run_date": RUN_DATE.isoformat()}}
        refused = {
            "no token": stack.get(f"/api/v2/dags/{DAG_ID}", token=None).status_code,
            "trigger without token": stack.request("POST", trigger, token=None, json=body).status_code,
            "forged token": stack.request("POST", trigger, token="not.a.jwt", json=body).status_code,
            "wrong password": stack.login(ADMIN, "not-" + stack.password()).status_code,
            "unknown user": stack.login("mallory", stack.password()).status_code,
        }
        stack.unpause()
        sends.rename(held_back)
        run = stack.ok("POST", trigger, json=body)
        run_id = run["dag_run_id"]
        stack.wait(lambda: stack.task(run_id, "deliveries")["state"] == "up_for_reschedule", 120, "the wait")
        held_back.rename(sends)
        stack.wait_for_success([run_id], 1800)
        approval = stack.ok("GET", f"{trigger}/{run_id}/taskInstances/approve/-1/hitlDetails")
        runs = stack.runs()
        events = stack.ok("GET", "/api/v2/assets/events", params={"source_dag_id": DAG_ID})["asset_events"]

        land_refused_night(root)
        failed = {}
        for day in (REFUSED_DATE, MISSING_DATE):
            night = stack.ok("POST", trigger, json={"logical_date": None, "conf": {"run_date": day.isoformat()}})
            stack.wait(lambda rid=night["dag_run_id"]: stack.run_state(rid) == "failed", 900, f"{day} failing")
            tis = stack.ok("GET", f"{trigger}/{night['dag_run_id']}/taskInstances")["task_instances"]
            failed[day] = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in tis}
        stack.wait(lambda: len(mailbox[0].messages) >= 2, 120, "the failure e-mails")
        return {
            "root": root,
            "refused": refused,
            "run": run,
            "runs": runs,
            "events": events,
            "approval": approval,
            "failed": failed,
            "mail": list(mailbox[0].messages),
        }


def land_refused_night(root: Path) -> None:
    """REFUSED_DATE's deliveries: RUN_DATE's, with new ids and four sends on an arm the experiment lacks."""
    for source in ("users", "sends", "responses"):
        frame = pd.read_parquet(root / "var" / "lake" / "raw" / source / f"dt={RUN_DATE}")
        for column in ("send_id", "response_id"):
            if column in frame:
                frame[column] = "late_" + frame[column].astype(str)
        if source == "sends":
            frame.loc[frame.index[:4], "arm"] = "subject_9"
        folder = root / "var" / "lake" / "raw" / source / f"dt={REFUSED_DATE}"
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)


def test_api_refuses_requests_without_a_valid_login(first_night):
    refused = first_night["refused"]
    assert all(code in (401, 403) for code in refused.values()), refused
    # The refused trigger created nothing: the only run is the authenticated one.
    assert [r["dag_run_id"] for r in first_night["runs"]] == [first_night["run"]["dag_run_id"]]


def test_run_triggered_through_the_api_publishes_audience_and_champion(first_night):
    root, run = first_night["root"], first_night["run"]
    assert run["logical_date"] is None and run["run_type"] == "manual"  # the night is the run_date param
    audience = pd.read_parquet(partition(root, "audience", RUN_DATE))
    assert set(audience["customer_id"]) == eligible_customers(root, RUN_DATE)
    champion = champion_version(root)
    assert champion.tags["run_date"] == RUN_DATE.isoformat()
    assert (audience["model_version"] == str(champion.version)).all()


def test_the_audience_event_says_what_was_published(first_night):
    root = first_night["root"]
    (event,) = first_night["events"]
    audience = pd.read_parquet(partition(root, "audience", RUN_DATE))
    extra = event["extra"]
    assert extra["run_date"] == RUN_DATE.isoformat() and extra["rows"] == len(audience)
    assert extra["policy"] == audience["policy"].iloc[0] and extra["model_version"] == audience["model_version"].iloc[0]
    assert extra["sends"] == int(audience["assigned_arm"].notna().sum())


def test_a_refused_delivery_fails_the_night_without_a_retry(first_night):
    tasks = first_night["failed"][REFUSED_DATE]
    assert tasks["deliveries"][0] == "success"
    assert tasks["validate_raw"] == ("failed", 1), tasks  # schedule.retries is 1: a refusal is not retried
    assert tasks["etl"][0] == "upstream_failed"
    reason = (first_night["root"] / "var" / "reports" / f"run_date={REFUSED_DATE}" / "failure.txt").read_text()
    assert reason.startswith(f"validate-raw failed for run_date={REFUSED_DATE}") and "subject_9" in reason


def test_a_delivery_that_never_lands_fails_the_night_naming_it_and_mails_the_team(first_night):
    tasks = first_night["failed"][MISSING_DATE]
    assert tasks["deliveries"] == ("failed", 1) and tasks["validate_raw"][0] == "upstream_failed", tasks
    reason = (first_night["root"] / "var" / "reports" / f"run_date={MISSING_DATE}" / "failure.txt").read_text()
    assert "not landed by the deadline" in reason and f"raw/sends/dt={MISSING_DATE}" in reason
    mails = {m["subject"]: m for m in first_night["mail"]}
    missing = mails[f"uplift_nightly {MISSING_DATE}: deliveries failed"]
    assert missing["to"] == [NOTIFY] and f"raw/sends/dt={MISSING_DATE}" in missing["body"]
    refused = mails[f"uplift_nightly {REFUSED_DATE}: validate-raw failed"]
    assert "subject_9" in refused["body"]


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
    before = {
        "audience": fingerprint(newer),
        "champion": champion_version(root),
        "export": fingerprint(partition(root, "exports", RUN_DATE)),
    }
    window = ["--from-date", f"{BACKFILL_DATES[0]}{NIGHTLY_TIME}", "--to-date", f"{BACKFILL_DATES[-1]}{NIGHTLY_TIME}"]
    command = [AIRFLOW, "backfill", "create", "--dag-id", DAG_ID, "--max-active-runs", "1", *window]
    created = subprocess.run(command, env=stack.env, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
    runs = {date.fromisoformat(r["logical_date"][:10]): r["dag_run_id"] for r in stack.runs()}
    assert sorted(runs) == BACKFILL_DATES, stack.runs()
    # The campaign manager rejects the first night's send list and approves the second's.
    stack.wait_for_success(list(runs.values()), 3600, answers={runs[BACKFILL_DATES[0]]: "Reject"})

    def backfills() -> list[dict]:
        return stack.ok("GET", "/api/v2/backfills", params={"dag_id": DAG_ID})["backfills"]

    stack.wait(lambda: all(b["completed_at"] for b in backfills()), 180, "the backfill marked completed")
    tasks = {
        day: {
            ti["task_id"]: ti["state"]
            for ti in stack.ok("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        }
        for day, run_id in runs.items()
    }
    return {"root": root, "runs": runs, "before": before, "backfills": backfills(), "tasks": tasks}


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


def test_an_approved_send_list_is_exported(first_night):
    root, approval = first_night["root"], first_night["approval"]
    assert approval["chosen_options"] == ["Approve"] and approval["responded_by_user"]["name"] == ADMIN
    audience = pd.read_parquet(partition(root, "audience", RUN_DATE))
    assert audience["campaign_id"].iloc[0] in approval["body"] and "customers on the send list" in approval["body"]
    send_list = pd.read_csv(partition(root, "exports", RUN_DATE) / "send_list.csv")
    assert set(send_list["customer_id"]) == set(audience.loc[audience["assigned_arm"].notna(), "customer_id"])


def test_a_rejected_send_list_keeps_the_previous_export_and_the_rest_of_the_night(backfill):
    root, rejected, approved = backfill["root"], *(backfill["tasks"][day] for day in BACKFILL_DATES)
    assert rejected["approve"] == "success" and rejected["export"] == "skipped", rejected
    assert all(rejected[t] == "success" for t in ("score", "results", "drift", "report")), rejected
    assert not partition(root, "exports", BACKFILL_DATES[0]).exists()
    assert fingerprint(partition(root, "exports", RUN_DATE)) == backfill["before"]["export"]
    assert approved["export"] == "success" and partition(root, "exports", BACKFILL_DATES[1]).exists()


# --- 3. A rerun by clearing a task -------------------------------------------------------------


def test_clearing_score_reruns_it_with_the_same_audience(backfill, postgres_stack):
    root, stack = backfill["root"], postgres_stack
    day = BACKFILL_DATES[-1]
    run_id = backfill["runs"][day]
    folder = partition(root, "audience", day)
    before, published = pd.read_parquet(folder), fingerprint(folder)
    exported = fingerprint(partition(root, "exports", day))
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
    stack.wait_for_success([run_id], 900, answers={run_id: None})  # the new send list: no one answers

    score = stack.task(run_id, "score")
    assert (score["state"], score["try_number"]) == ("success", tries + 1)
    after = pd.read_parquet(folder)
    assert not after["customer_id"].duplicated().any()
    assert (after["scored_at"] > before["scored_at"].max()).all(), "the partition was scored and published again"
    pd.testing.assert_frame_equal(rows(after), rows(before))
    assert (after["campaign_id"] == before["campaign_id"].iloc[0] + "_v2").all(), "sent under an id of its own"
    assert fingerprint(partition(root, "audience_versions", day) / "version=1") == published, "kept as it was"
    # Unanswered within targeting.approval_timeout_hours: a rejection, the send list approved before stays.
    timed_out = stack.ok("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails")
    assert timed_out["chosen_options"] == ["Reject"] and timed_out["responded_by_user"] is None, timed_out
    assert stack.task(run_id, "export")["state"] == "skipped"
    assert fingerprint(partition(root, "exports", day)) == exported


def rows(audience: pd.DataFrame) -> pd.DataFrame:
    """The audience in customer order, without scored_at (when it was scored) and campaign_id (its version's)."""
    return audience.drop(columns=["scored_at", "campaign_id"]).sort_values("customer_id").reset_index(drop=True)
