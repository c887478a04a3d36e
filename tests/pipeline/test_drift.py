"""Drift outcomes on injected shifts: of the scoring population, and of what the model recommends."""

import json
import shutil
from datetime import timedelta

import pandas as pd
import pytest

from conftest import RUN_DATE
from helpers import copy_raw, settings_in
from jobs.data.etl import run_etl
from jobs.data.lake import partition_dir
from jobs.demo.generate import deliver, planted_shift
from jobs.model import gate
from jobs.model.tracking import training_run_for
from jobs.monitoring.drift import DriftFailed, drift, feature_drift
from jobs.settings import report_dir


@pytest.fixture
def isolated(settings, nightly, tmp_path):
    """A lake holding copies of the run's training set, scoring set and audience."""
    copy = settings_in(settings, tmp_path)
    for table in ("features/training", "features/scoring", "audience"):
        shutil.copytree(partition_dir(settings, table, RUN_DATE), partition_dir(copy, table, RUN_DATE))
    return copy


def _with_drift(settings, **changes):
    return settings.model_copy(update={"drift": settings.drift.model_copy(update=changes)})


def _replace(settings, table, day, frame):
    folder = partition_dir(settings, table, day)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-0.parquet", index=False)


def _shift_population(settings):
    scoring = pd.read_parquet(partition_dir(settings, "features/scoring", RUN_DATE))
    scoring["age"] += 35
    scoring["tenure_days"] *= 4
    for column in ("n_sends_30d", "n_sends_90d", "n_responses_30d", "n_responses_90d"):
        scoring[column] += 9
    scoring["days_since_last_response"] = scoring["days_since_last_response"].fillna(0) + 60
    scoring["response_rate_90d"] = 0.9
    scoring["customer_type"], scoring["email_domain"], scoring["gender"] = "vip", "corp.example", "U"
    _replace(settings, "features/scoring", RUN_DATE, scoring)


def test_a_quiet_night_reads_ok(isolated):
    result = drift(isolated, RUN_DATE)
    assert result["outcome"] == "ok" and result["drifted_columns"] == [] and result["predictions"] is None
    summary = json.loads((report_dir(isolated, RUN_DATE) / "drift.json").read_text())["summary"]
    assert summary["predictions"] is None, "no earlier run: nothing to compare predictions with"


def test_a_shifted_population_fails_the_run(isolated):
    _shift_population(isolated)
    with pytest.raises(DriftFailed, match="drift outcome 'fail'") as err:
        drift(_with_drift(isolated, on_fail="fail_run"), RUN_DATE)
    assert "drift.html" in str(err.value)
    summary = json.loads((report_dir(isolated, RUN_DATE) / "drift.json").read_text())["summary"]
    assert summary["outcome"] == "fail" and summary["drifted_share"] >= isolated.drift.drifted_share_fail


def test_a_shifted_population_blocks_promotion_when_configured(settings, isolated):
    _shift_population(isolated)
    blocking = _with_drift(isolated, on_fail="block_promotion").model_copy(update={"mlflow": settings.mlflow})
    checks = feature_drift(blocking, RUN_DATE)
    decision = gate.decide(blocking, RUN_DATE, training_run_for(settings, RUN_DATE), checks)
    assert decision["decision"] == "reject"
    assert any("block_promotion" in reason for reason in decision["reasons"])
    assert drift(blocking, RUN_DATE)["outcome"] == "fail", "reported, but the run goes on"


def test_a_planted_shift_fails_the_night_naming_its_features(settings, nightly, spark, tmp_path):
    """The generator's planted shift (30% of customers on a new e-mail domain, 15 years older) in
    tonight's users snapshot: the scoring set's population no longer matches the recent sends'."""
    local = settings_in(settings, tmp_path)
    copy_raw(settings, local)
    folder = local.paths.lake / "raw" / "users" / f"dt={RUN_DATE.isoformat()}"
    conf = local.sources["users"]
    names = {conf.delivered(n): n for n in ("customer_id", "email", "age")}
    users = pd.read_parquet(folder).rename(columns=names)
    shifted = planted_shift(users, seed=1).rename(columns={v: k for k, v in names.items()})
    shutil.rmtree(folder)
    deliver(local, "users", shifted, RUN_DATE)
    run_etl(spark, local, RUN_DATE)
    with pytest.raises(DriftFailed, match="population") as err:
        drift(local, RUN_DATE)
    summary = json.loads((report_dir(local, RUN_DATE) / "drift.json").read_text())["summary"]
    assert summary["outcome"] == "fail"
    assert summary["drifted_columns"] == ["age", "email_domain"], summary["column_drift_scores"]
    assert "age" in str(err.value) and "email_domain" in str(err.value)


def test_tonights_features_are_compared_with_the_previous_nights(isolated):
    previous = RUN_DATE - timedelta(days=1)
    scoring = pd.read_parquet(partition_dir(isolated, "features/scoring", RUN_DATE))
    _replace(isolated, "features/scoring", previous, scoring)
    summary = drift(isolated, RUN_DATE)
    comparisons = json.loads((report_dir(isolated, RUN_DATE) / "drift.json").read_text())["summary"]["comparisons"]
    night = {c["name"]: c for c in comparisons}["night_over_night"]
    assert night["previous_run_date"] == previous.isoformat() and night["outcome"] == "ok"
    assert summary["outcome"] == "ok"
    # Last night every customer had 3 sends fewer in the last 30 days: tonight follows a burst of sends,
    # which a history feature shows (warn), not a change of population.
    _replace(isolated, "features/scoring", previous, scoring.assign(n_sends_30d=scoring["n_sends_30d"] - 3))
    burst = drift(isolated, RUN_DATE)
    assert burst["outcome"] == "warn" and burst["drifted_columns"] == ["n_sends_30d"]
    # Last night's customers were 15 years younger: the population changed overnight.
    _replace(isolated, "features/scoring", previous, scoring.assign(age=scoring["age"] - 15))
    with pytest.raises(DriftFailed, match="night_over_night drifted share"):
        drift(isolated, RUN_DATE)


def test_recommendations_are_compared_with_the_previous_run(isolated):
    audience = pd.read_parquet(partition_dir(isolated, "audience", RUN_DATE))
    previous = RUN_DATE - timedelta(days=1)
    _replace(isolated, "audience", previous, audience)
    same = drift(isolated, RUN_DATE)
    assert same["predictions"] == 0.0
    changed = audience.assign(recommended_arm="subject_1", uplift_subject_1=audience["uplift_subject_1"] + 0.2)
    changed["uplift_subject_2"] -= 0.2
    changed["uplift_subject_3"] = changed["uplift_subject_3"] * 5
    _replace(isolated, "audience", previous, changed)
    with pytest.raises(DriftFailed, match=f"predictions vs {previous}"):
        drift(_with_drift(isolated, on_fail="fail_run"), RUN_DATE)
    summary = json.loads((report_dir(isolated, RUN_DATE) / "drift.json").read_text())["summary"]
    assert summary["predictions"]["previous_run_date"] == previous.isoformat()
    assert "recommended_arm" in summary["predictions"]["column_drift_scores"]
    assert (report_dir(isolated, RUN_DATE) / "drift_predictions.html").exists()
