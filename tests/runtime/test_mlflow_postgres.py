"""MLflow on a PostgreSQL backend store: train, gate and promote record run, metrics and champion there.

The store is a fresh database on the local server (dropped afterwards); the settings differ from
the session's only in `mlflow.tracking_uri` and `mlflow.artifact_root`, as an operator's overlay would.
"""

import json
import os
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from conftest import RUN_DATE, write_overlay
from helpers import settings_in
from jobs import steps
from jobs.cli import app
from jobs.data.lake import partition_dir
from jobs.model import registry
from jobs.model.tracking import use_tracking

pytestmark = pytest.mark.slow  # the production stack's PostgreSQL

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture
def mlflow_database():
    """The name of a new, empty PostgreSQL database; dropped (connections and all) afterwards."""
    name = f"uplift_mlflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            # MLflow keeps a connection pool per store URI open: FORCE ends those sessions.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def on_postgres(settings, nightly, mlflow_database, tmp_path):
    """The session's settings with a copy of its training features and MLflow on PostgreSQL."""
    mlflow = settings.mlflow.model_copy(
        update={
            "tracking_uri": f"postgresql+psycopg://postgres@127.0.0.1:5432/{mlflow_database}",
            "artifact_root": str(tmp_path / "mlartifacts"),
        }
    )
    isolated = settings_in(settings, tmp_path, mlflow=mlflow)
    for table in ("features/training", "features/scoring"):
        shutil.copytree(partition_dir(settings, table, RUN_DATE), partition_dir(isolated, table, RUN_DATE))
    try:
        yield isolated
    finally:
        use_tracking(settings)  # the steps set MLflow's global URIs: later tests read the session's store


def test_train_gate_promote_record_run_metrics_and_champion_in_postgres(on_postgres, mlflow_database, monkeypatch):
    trained = steps.run("train", RUN_DATE, on_postgres)
    assert steps.run("gate", RUN_DATE, on_postgres)["decision"] == "promote"
    assert steps.run("promote", RUN_DATE, on_postgres)["promoted"] is True
    cfg = on_postgres.mlflow

    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={mlflow_database}") as conn:
        (status,) = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", [trained["run_id"]]).fetchone()
        metrics = dict(
            conn.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = %s", [trained["run_id"]]).fetchall()
        )
        tags = dict(conn.execute("SELECT key, value FROM tags WHERE run_uuid = %s", [trained["run_id"]]).fetchall())
        aliases = dict(
            conn.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", [cfg.registered_model])
        )
    assert status == "FINISHED"
    for arm, qini in trained["qini"].items():
        assert metrics[f"qini.{arm}"] == pytest.approx(qini, abs=1e-4)
    assert tags["gate.decision"] == "promote" and tags["run_date"] == RUN_DATE.isoformat()
    assert aliases == {registry.CHAMPION: int(trained["model_version"])}
    # The model's files went to the configured artifact root, not next to the database.
    assert list(Path(cfg.artifact_root).rglob("MLmodel"))

    champion = {
        "version": trained["model_version"],
        "run_date": RUN_DATE.isoformat(),
        "run_id": trained["run_id"],
        "learner": "t",
        "candidate": trained["learner"],
    }
    assert registry.status(on_postgres) == {"champion": champion, "previous": None}
    # `uplift model status` with the overlay an operator adds to point MLflow at PostgreSQL.
    overlay = write_overlay(on_postgres.paths.lake.parent, {"mlflow": cfg.model_dump(include={"tracking_uri"})})
    monkeypatch.setenv("UPLIFT_CONF", os.environ["UPLIFT_CONF"] + os.pathsep + str(overlay))
    result = CliRunner().invoke(app, ["model", "status"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["champion"] == champion
