"""Bring your own data: a one-off experiment unlike the demo's, configured by one overlay only.

The overlay is the one the README shows (read from README.md, so the page and the test cannot
drift apart); the data comes from tests/email_experiment.py, which shares nothing with the
demo generator: other attributes and kinds, two arms, two campaigns with their own splits, one
send day, responses arriving over two weeks, CSV under the user's own column names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest

import email_experiment
from helpers import airflow_env, on_server, own_home, readme_overlay
from jobs.model.train import FEATURE_SPEC_ARTIFACT
from jobs.names import p_column, uplift_column
from jobs.settings import load_settings

PROJECT = Path(__file__).resolve().parents[2]
RUN = email_experiment.last_response_day() + timedelta(days=5)  # the labels have matured


# --- the worked example, run by Airflow ---------------------------------------------------


@pytest.fixture(scope="module")
def airflow_run(home, spark_connect, tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    env = airflow_env(root, on_server(own_home(root, readme_overlay()), spark_connect))
    airflow = str(Path(sys.executable).parent / "airflow")
    result = subprocess.run(
        [airflow, "dags", "test", "uplift_nightly", RUN.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "state=success" in log, log[-6000:]
    uplift = str(Path(sys.executable).parent / "uplift")
    show = subprocess.run(
        [uplift, "audience", "show", "--run-date", RUN.isoformat()], env=env, capture_output=True, text=True, check=True
    )
    print(show.stdout)  # docs/own-data.md quotes this output
    return root, env


def test_the_readme_example_publishes_an_audience_for_every_eligible_customer(airflow_run):
    root, _ = airflow_run
    lake = root / "var" / "lake"
    users = pd.read_csv(lake / "raw" / "users" / f"dt={email_experiment.SNAPSHOT_DAY}" / "users.csv")
    audience = pd.read_parquet(lake / "audience" / f"run_date={RUN}")
    assert sorted(audience["customer_id"]) == sorted(users.loc[users["recency_months"] <= 10, "cust"])
    for arm in ("mens_email", "womens_email"):
        assert audience[uplift_column(arm)].notna().all() and audience[p_column(arm)].notna().all()
    assert set(audience["recommended_arm"]) <= {"mens_email", "womens_email", "none"}
    assert not {"uplift_subject_1", "p_subject_1"} & set(audience.columns), "no demo arm leaks in"
    training = pd.read_parquet(lake / "features" / "training" / f"run_date={RUN}")
    assert len(training) == 24_000, "every send of the single send day matured and trained"
    for table in (training, audience):
        assert "contact_email" not in table.columns
        assert not table.astype(str).apply(lambda c: c.str.contains("@")).any().any(), "PII reached a table"


def test_the_model_learns_from_the_declared_attributes_and_logs_the_spec(airflow_run):
    root, env = airflow_run
    declared = readme_overlay()["features"]["attributes"]
    uri = f"sqlite:///{root}/var/mlflow/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("uplift_t_learner", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["features"] == ",".join(
        [n for n, a in declared.items() if a["kind"] == "numeric"]
        + [n for n, a in declared.items() if a["kind"] == "categorical"]
    )
    spec = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=FEATURE_SPEC_ARTIFACT, tracking_uri=uri
            )
        ).read_text()
    )
    assert set(spec["attributes"]) == set(declared) and spec["eligibility"] == "recency_months <= 10"
    importance = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="feature_importance.csv", tracking_uri=uri
        ),
        index_col="feature",
    )
    assert set(importance.index) == set(declared)
    assert (importance.max(axis=1) > 0).all(), importance
    # The effects the simulator planted: recency drives mens_email, region and spend womens_email.
    assert importance["mens_email"].idxmax() == "recency_months"
    assert importance["womens_email"].nlargest(2).index.isin(["region", "spend_to_date"]).all()


def test_the_campaign_page_offers_the_users_attributes_and_finds_the_planted_drivers(airflow_run, monkeypatch):
    from jobs.settings import load_settings
    from jobs.ui import campaigns

    _, env = airflow_run
    for name in ("UPLIFT_HOME", "UPLIFT_CONF"):
        monkeypatch.setenv(name, env[name])
    settings = load_settings()
    declared = readme_overlay()["features"]["attributes"]
    options = campaigns.segment_options(settings, RUN)
    assert set(options) == {n for n, a in declared.items() if a["kind"] == "categorical"} | {"recency_months_band"}
    assert options["recency_months_band"] == ["<4", "4-6", "7+"]
    effects = campaigns.segments_by_effect(settings, RUN)
    assert set(effects) == {"mens_email", "womens_email"} and all(effects.values())
    # SHAP of the uplift itself, from the deployed model: the effects the simulator planted
    drivers = campaigns.drivers(settings, RUN)
    assert drivers["arms"]["mens_email"]["drivers"][0]["feature"] == "recency_months"
    assert drivers["arms"]["womens_email"]["drivers"][0]["feature"] in {"region", "spend_to_date"}
    run = campaigns.run(settings, RUN)
    assert {a["recommended_arm"] for a in run["arms"]} <= {"mens_email", "womens_email"}
    assert all(a["holdout_estimate"] for a in run["arms"]), "the gate's per-arm estimates reach the page"


def test_every_campaign_is_checked_against_its_own_split(airflow_run):
    root, env = airflow_run
    uplift = str(Path(sys.executable).parent / "uplift")
    subprocess.run(
        [uplift, "validate-raw", "--run-date", str(email_experiment.SEND_DAY)], env=env, check=True, capture_output=True
    )
    report = json.loads(
        (root / "var" / "reports" / f"run_date={email_experiment.SEND_DAY}" / "validation" / "raw.json").read_text()
    )
    tests = report_srm(report)
    assert set(tests) == {"autumn_mail", "retention_test"}
    assert set(tests["retention_test"]["observed"]) == {"no_email", "womens_email"}, "tested on its own split"
    assert min(t["p_value"] for t in tests.values()) > 0.01


def report_srm(report: dict) -> dict:
    return report["sample_ratio_mismatch"]["campaigns"]


# --- bad specs and leaky columns: refused by name, before anything is written -------------


def _nothing_written(settings) -> None:
    assert not (settings.paths.lake / "features").exists()
    assert not (settings.paths.lake / "audience").exists()


@pytest.mark.parametrize(
    "attribute, named",
    [
        ({"rank": {"kind": "numeric"}}, r"feature 'rank' collides with a pipeline column"),
        ({"uplift_score": {"kind": "numeric"}}, r"feature 'uplift_score' collides"),
        (
            {"when": {"kind": "numeric", "column": "sent_at", "derive": "days_since"}},
            r"'when' is, or is derived from, 'sent_at'",
        ),
        ({"variant_seen": {"kind": "categorical", "column": "arm"}}, r"'variant_seen' is, or is derived from, 'arm'"),
        ({"mail": {"kind": "categorical", "column": "contact_email"}}, r"'mail' copies the PII column 'contact_email'"),
    ],
)
def test_a_spec_naming_a_pipeline_column_or_a_leaky_source_fails_at_load(monkeypatch, tmp_path, attribute, named):
    overlay = readme_overlay()
    overlay["features"]["attributes"] |= attribute
    for name, value in own_home(tmp_path, overlay).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=named) as err:
        load_settings()
    assert "own.yml" in str(err.value), "the error names the overlay file"


def test_a_declared_column_missing_from_the_delivery_is_named_with_its_file(spark, own_settings):
    from jobs.data.lake import MissingInputError
    from jobs.data.validate import validate_raw

    settings = own_settings(
        {
            "features": {
                "attributes": {**readme_overlay()["features"]["attributes"], "loyalty_tier": {"kind": "categorical"}}
            }
        }
    )
    with pytest.raises(MissingInputError, match=r"lacks columns 'loyalty_tier' in dt=2026-09-30"):
        validate_raw(spark, settings, RUN)
    _nothing_written(settings)


def test_an_outcome_counting_a_response_type_never_delivered_is_refused_by_name(spark, own_settings):
    from jobs.data.checks import ValidationFailed
    from jobs.data.validate import validate_raw

    outcomes = dict(readme_overlay()["targeting"]["outcomes"])
    outcomes["unsubscribe"] = {**outcomes["unsubscribe"], "response_types": ["unsubscibe"]}  # a typo
    settings = own_settings({"targeting": {"outcomes": outcomes}})
    with pytest.raises(ValidationFailed) as err:
        validate_raw(spark, settings, RUN)
    message = str(err.value)
    assert "suite 'response_types'" in message
    assert "targeting.outcomes.unsubscribe counts response types ['unsubscibe'] that no delivery" in message
    assert "delivered response types: ['conversion', 'unsubscribe', 'visit']" in message
    _nothing_written(settings)


def test_text_in_a_numeric_column_is_named_with_values_and_file(spark, own_settings):
    from jobs.data.checks import ValidationFailed
    from jobs.data.validate import validate_raw

    attributes = readme_overlay()["features"]["attributes"] | {"channel": {"kind": "numeric"}}
    settings = own_settings({"features": {"attributes": attributes}})
    with pytest.raises(ValidationFailed) as err:
        validate_raw(spark, settings, RUN)
    message = str(err.value)
    assert "input 'raw/users dt=2026-09-30'" in message and "'unparsable'" in message
    assert "'raw_channel': 'Web'" in message or "'raw_channel': 'Phone'" in message
    assert "dt=2026-09-30/users.csv" in message, "the offending rows name their file"
    assert "@" not in message, "the PII column stays out of the message"
    _nothing_written(settings)


def test_a_categorical_with_too_many_levels_is_refused(spark, own_settings):
    from jobs.data.checks import ValidationFailed
    from jobs.data.validate import validate_raw

    attributes = readme_overlay()["features"]["attributes"] | {"spend_to_date": {"kind": "categorical"}}
    settings = own_settings({"features": {"attributes": attributes}})
    with pytest.raises(
        ValidationFailed,
        match=r"expect_column_unique_value_count_to_be_between\(\{'column': "
        r"'spend_to_date', 'max_value': 1000\}\)",
    ):
        validate_raw(spark, settings, RUN)
    _nothing_written(settings)


def test_an_eligibility_rule_on_an_undeclared_column_is_refused(spark, own_settings):
    from jobs.data.etl import run_etl

    settings = own_settings({"features": {"eligibility": "contact_email IS NOT NULL"}})
    with pytest.raises(ValueError, match=r"features.eligibility 'contact_email IS NOT NULL' cannot be evaluated"):
        run_etl(spark, settings, RUN)
    _nothing_written(settings)


def test_leaky_columns_in_a_snapshot_fail_validation_by_name(spark, tmp_path, own_settings):
    """A snapshot exported after the campaign carries its outcome and its arm: the data says so."""
    from jobs.data.checks import ValidationFailed
    from jobs.data.etl import run_etl
    from jobs.data.validate import validate_features

    lake = tmp_path / "scratch"
    email_experiment.write(lake)
    raw = lake / "raw"
    users = pd.read_csv(raw / "users" / f"dt={email_experiment.SNAPSHOT_DAY}" / "users.csv")
    sends = pd.read_csv(raw / "sends" / f"dt={email_experiment.SEND_DAY}" / "sends.csv")
    visits = pd.concat(pd.read_csv(f) for f in raw.glob("responses/dt=*/responses.csv"))
    users["visited"] = users["cust"].isin(visits.loc[visits["event_kind"] == "visit", "cust"]).astype(int)
    users["segment"] = (
        users["cust"]
        .map(sends.set_index("cust")["variant"])
        .map({"mens_email": "M", "womens_email": "W", "no_email": "N"})
    )
    attributes = readme_overlay()["features"]["attributes"] | {
        "engaged": {"kind": "categorical", "column": "visited"},
        "offer": {"kind": "categorical", "column": "segment"},
    }
    settings = own_settings({"features": {"attributes": attributes}}, users=users)
    run_etl(spark, settings, RUN)
    with pytest.raises(ValidationFailed) as err:
        validate_features(spark, settings, RUN)
    message = str(err.value)
    assert "feature 'engaged' separates the outcome (label)" in message
    assert "feature 'offer' separates the treatment" in message
    assert not re.search(r"feature '(recency_months|spend_to_date|channel|region)' separates", message)
