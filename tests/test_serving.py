"""The champion served for real-time scoring with `mlflow models serve`."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from conftest import RUN_DATE
from jobs.lake import partition_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(settings, nightly):
    port = _free_port()
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
        for _ in range(120):
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited: {server.stdout.read()[-3000:]}")
            time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 60 s")
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
    for arm in settings.experiment.arms:
        expected = predictions[f"p_{arm}"] - predictions["p_control"]
        assert (predictions[f"uplift_{arm}"] - expected).abs().max() < 1e-9
    assert "best_arm" not in predictions, "which arm to send is the targeting policy's decision"
    # every further outcome's probabilities and uplifts, and the guardrail's upper bounds, served too
    for arm in settings.experiment.arms:
        for outcome in settings.targeting.outcomes:
            assert {f"p_{arm}__{outcome}", f"uplift_{arm}__{outcome}"} <= set(predictions.columns)
        for outcome in settings.targeting.guardrails:
            assert predictions[f"uplift_high_{arm}__{outcome}"].notna().all()
    assert "p_control__unsubscribe" in predictions


def test_a_request_without_features_is_a_readable_4xx(served):
    payload = {"dataframe_split": {"columns": ["customer_id"], "data": [["C1"]]}}
    response = requests.post(f"{served}/invocations", json=payload, timeout=30)
    assert 400 <= response.status_code < 500
    assert "age" in response.text, response.text
