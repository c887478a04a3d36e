"""The champion served for real-time scoring with `mlflow models serve`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

from conftest import RUN_DATE
from helpers import free_port, wait_for_http
from jobs.data.lake import partition_dir
from jobs.model import registry
from jobs.names import p_column, uplift_column, uplift_high_column

pytestmark = pytest.mark.slow  # an MLflow model server


@pytest.fixture(scope="module")
def served(settings, nightly):
    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri}
    server = subprocess.Popen(
        [
            mlflow_cli,
            "models",
            "serve",
            "-m",
            f"models:/{settings.mlflow.registered_model}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ping", server, "mlflow models serve", 60, server.stdout.read)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_two_customers_get_per_arm_uplift(served, settings):
    customers = pd.read_parquet(partition_dir(settings, "features/scoring", RUN_DATE)).head(2)
    split = json.loads(customers[settings.features.names].to_json(orient="split", index=False))  # NaN -> null
    response = requests.post(f"{served}/invocations", json={"dataframe_split": split}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = pd.DataFrame(response.json()["predictions"])
    assert len(predictions) == 2
    champion = registry.alias_version(settings, registry.CHAMPION)
    model = registry.portable_model(settings, champion.version)
    local = model.predict(customers, model.load())  # what batch scoring computes in Spark's workers
    for arm in settings.experiment.arms:
        assert (predictions[uplift_column(arm)] - local[uplift_column(arm)]).abs().max() < 1e-9
        assert (predictions[p_column(arm)] - local[p_column(arm)]).abs().max() < 1e-9
    assert "best_arm" not in predictions, "which arm to send is the targeting policy's decision"
    # every further outcome's probabilities and uplifts, and the guardrail's upper bounds, served too
    for arm in settings.experiment.arms:
        for outcome in settings.targeting.outcomes:
            assert {p_column(arm, outcome), uplift_column(arm, outcome)} <= set(predictions.columns)
        for outcome in settings.targeting.guardrails:
            assert predictions[uplift_high_column(arm, outcome)].notna().all()
    assert p_column("control", "unsubscribe") in predictions


def test_a_request_without_features_is_a_readable_4xx(served):
    payload = {"dataframe_split": {"columns": ["customer_id"], "data": [["C1"]]}}
    response = requests.post(f"{served}/invocations", json=payload, timeout=30)
    assert 400 <= response.status_code < 500
    assert "age" in response.text, response.text
