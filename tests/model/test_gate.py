"""The gate decides by value, flat arms do not block the others, and every night publishes an audience.

Each test runs the real steps (Spark ETL, LightGBM training logged to MLflow, the gate, promotion,
Spark scoring) in process on its own project home.
"""

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

import email_experiment
from conftest import RUN_DATE
from helpers import copy_raw, settings_in
from jobs import steps
from jobs.data.lake import partition_dir
from jobs.model import registry
from jobs.model.tracking import use_tracking
from jobs.settings import report_dir

pytestmark = pytest.mark.slow  # the gate over whole nightly runs

RUN = email_experiment.last_response_day() + timedelta(days=5)
NIGHT = ("etl", "train", "gate", "promote", "score", "drift")


@pytest.fixture(autouse=True)
def _restore_tracking(settings):
    yield
    use_tracking(settings)


def _night(settings, day: date, night=NIGHT) -> dict:
    return {step: steps.run(step, day, settings) for step in night}


def _audience(settings, day: date) -> pd.DataFrame:
    return pd.read_parquet(partition_dir(settings, "audience", day))


def test_a_flat_arm_is_targeted_as_a_constant_and_the_other_by_ranking(spark, own_settings):
    settings = own_settings(effects="uniform", scale=2.0)  # mens_email +8 for all, womens_email by segment
    night = _night(settings, RUN)
    assert "mens_email" in night["train"]["constant_arms"], "a flat arm: its ranking is not used"
    assert "womens_email" not in night["train"]["constant_arms"]
    gate = json.loads((report_dir(settings, RUN) / "gate.json").read_text())
    assert gate["decision"] == "promote", gate["reasons"]
    values = gate["policy_values"]
    assert {"challenger", "everyone gets mens_email", "everyone gets womens_email", "no one"} <= set(values)
    assert gate["differences"]["challenger - everyone gets mens_email"]["low"] > 0
    assert night["score"]["policy"] == f"model:{night['train']['model_version']}"

    audience = _audience(settings, RUN)
    users = pd.read_csv(
        settings.paths.lake / "raw" / "users" / f"dt={email_experiment.SNAPSHOT_DAY}" / "users.csv"
    ).set_index("cust")
    segment = (users["region"] == "Urban") & (users["spend_to_date"] > 150)
    audience["segment"] = audience["customer_id"].map(segment)
    # The flat arm pays for everyone (4 x 0.08 - 0.1 > 0): it goes to all but those the other arm wins.
    assert set(audience["recommended_arm"]) == {"mens_email", "womens_email"}
    assert (audience["uplift_mens_email"].nunique()) == 1
    womens = audience[audience["recommended_arm"] == "womens_email"]
    assert womens["segment"].mean() > 0.9, "the ranked arm goes where it works"
    assert audience.loc[audience["segment"], "recommended_arm"].eq("womens_email").mean() > 0.8

    # The spec changes (an attribute dropped): the champion refuses tonight's features by name and
    # the night publishes the constant policy instead of failing.
    attributes = {k: v for k, v in settings.features.attributes.items() if k != "is_new"}
    changed = settings.model_copy(update={"features": settings.features.model_copy(update={"attributes": attributes})})
    steps.run("etl", RUN, changed)
    scored = steps.run("score", RUN, changed)
    assert scored["policy"] == "constant:mens_email", "the flat arm pays for everyone on average"
    assert "cannot serve tonight" in scored["constant_policy_reasons"][0]
    assert "missing ['is_new']" in scored["constant_policy_reasons"][0]


def test_noise_is_never_promoted_and_the_night_publishes_a_marked_constant_policy(spark, own_settings):
    settings = own_settings(effects="none")
    night = _night(settings, RUN)
    assert night["gate"]["decision"] == "reject" and night["promote"]["promoted"] is False
    assert registry.alias_version(settings, registry.CHAMPION) is None
    assert night["score"]["policy"] == "constant:none"
    audience = _audience(settings, RUN)
    assert len(audience) == night["score"]["rows"] > 0
    assert (audience["policy"] == "constant:none").all() and audience["model_version"].isna().all()
    assert not audience["selected"].any() and (audience["recommended_arm"] == "none").all()
    summary = pd.read_parquet(partition_dir(settings, "audience_summary", RUN))
    assert summary.empty or (summary["policy"] == "constant:none").all()
    from jobs.targeting.audience import show

    text = show(settings, RUN)
    assert "Policy: constant:none  (no model has passed the gate: a constant policy)" in text
    from jobs.targeting.audience import what_if

    assert "constant policy" in what_if(settings, RUN, "true", "mens_email")["note"]


def test_a_first_night_on_a_tiny_sample_publishes_a_constant_audience_and_a_passing_model_takes_over(
    spark, settings, generated, tmp_path
):
    own = settings_in(settings, tmp_path)
    copy_raw(settings, own)
    first = date(2026, 10, 9)  # two matured send days, one of them with a snapshot before it
    night = _night(own, first, NIGHT[:-1])  # its drift: a 1-day history against 90-day features
    assert night["gate"]["decision"] == "reject", night["gate"]["reasons"]
    assert night["score"]["policy"].startswith("constant:")
    first_audience = _audience(own, first)
    assert (first_audience["policy"] == night["score"]["policy"]).all()
    assert len(first_audience) > 10_000

    later = _night(own, RUN_DATE)
    assert later["gate"]["decision"] == "promote", later["gate"]["reasons"]
    assert later["score"]["policy"] == f"model:{later['train']['model_version']}"
    assert (_audience(own, RUN_DATE)["model_version"] == later["train"]["model_version"]).all()
    assert (_audience(own, first)["policy"] == night["score"]["policy"]).all(), "the earlier night is kept"
    drift = json.loads((report_dir(own, RUN_DATE) / "drift.json").read_text())["summary"]
    assert "not comparable" in drift["predictions"]["skipped"], "a switch of policy is not prediction drift"


def test_the_gate_records_values_intervals_and_the_budget_curve(settings, nightly):
    gate = json.loads((report_dir(settings, RUN_DATE) / "gate.json").read_text())
    for name, v in gate["policy_values"].items():
        assert v["low"] <= v["value"] <= v["high"], name
        assert np.isfinite(v["ipw"])
    assert gate["policy_values"]["no one"]["value"] == 0.0
    challenger = gate["policy_values"]["challenger"]
    best = gate["policy_values"][gate["best_constant"]]
    assert (
        challenger["value"] > best["value"] and gate["differences"][f"challenger - {gate['best_constant']}"]["low"] > 0
    )
    curve = pd.read_csv(report_dir(settings, RUN_DATE) / "budget_curve.csv")
    assert curve["sends"].iloc[0] == 0 and curve["sends"].is_monotonic_increasing
    assert (curve["net_value_low"] <= curve["net_value_high"]).all()
    import mlflow

    run = mlflow.get_run(nightly["train"]["run_id"])
    assert run.data.metrics["policy_value.challenger"] == pytest.approx(challenger["value"])
    assert run.data.metrics["policy_value.challenger.low"] == pytest.approx(challenger["low"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"budget_curve.csv", "budget_curve.png", "gate.json"} <= artifacts
