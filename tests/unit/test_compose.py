"""docker-compose.yml, validated as far as a machine without a Docker engine can."""

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import with_demo
from jobs.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}


def test_the_stack_has_every_service():
    assert set(SERVICES) == {"postgres", "airflow-init", *AIRFLOW, "spark-master", "spark-worker", "mlflow"}
    assert all(SERVICES[s]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" for s in AIRFLOW)


def test_images_come_from_official_bases_with_our_versions():
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    airflow = metadata.version("apache-airflow")
    for name, service in SERVICES.items():
        if name == "postgres":
            continue
        dockerfile = service["build"]["dockerfile_inline"]
        assert dockerfile.startswith(f"FROM apache/airflow:{airflow}-python3.11"), name
        assert "uv export --frozen" in dockerfile and "openjdk-17" in dockerfile


def test_health_checks_dependencies_and_volumes():
    for name, service in SERVICES.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"
            else:
                assert (ROOT / source).exists(), f"{name} mounts missing file {source}"


def test_every_variable_is_documented_and_secrets_are_required():
    text = (ROOT / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()
    for variable in variables:
        assert f"{variable}=" in example, f"{variable} missing from .env.example"
        assert variable in readme, f"{variable} missing from README.md and docs/operations.md"
    for secret in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET"):
        assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must be required, never defaulted"


def test_the_production_overlay_is_valid(monkeypatch):
    # With an experiment's overlay (the demo's here; a deployment mounts its own in conf/local/).
    monkeypatch.setenv("UPLIFT_CONF", with_demo(ROOT / "conf" / "production" / "pipeline.yml"))
    settings = load_settings()
    assert settings.mlflow.tracking_uri == "http://mlflow:5000"
    assert settings.mlflow.artifact_root == "mlflow-artifacts:/uplift"
    assert str(settings.paths.lake) == "/data/lake"
    assert settings.spark.master == "spark://spark-master:7077"
    # The stack has no Spark Connect server: its Spark tasks are submitted to the cluster.
    assert settings.spark.remote is None


@pytest.mark.parametrize("service", sorted(AIRFLOW))
def test_airflow_services_share_the_lake_with_spark(service):
    assert "lake:/data" in SERVICES[service]["volumes"]
    assert "lake:/data" in SERVICES["spark-worker"]["volumes"]
