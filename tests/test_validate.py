"""Bad deliveries and broken randomization stop the run with a message that says what and where."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import RUN_DATE
from helpers import copy_raw, settings_in
from jobs.generate import deliver
from jobs.lake import partition_dir, publish_partition
from jobs.validate import (
    ValidationFailed,
    _arm_counts_by_campaign,
    _separation,
    covariate_balance,
    sample_ratio_mismatch,
    validate_features,
    validate_raw,
)


def test_good_deliveries_pass(spark, settings, generated):
    assert validate_raw(spark, settings, RUN_DATE)["raw_checks"] > 15


def test_unknown_arm_and_unknown_customer_are_named_with_rows(spark, settings, generated, tmp_path):
    bad = settings_in(settings, tmp_path)
    copy_raw(settings, bad)
    folder = bad.paths.lake / "raw" / "sends" / f"dt={RUN_DATE}"
    sends = pd.read_parquet(folder)
    sends.loc[sends.index[:3], "arm"] = "subject_9"
    sends.loc[sends.index[5], "customer_id"] = "GHOST"
    for f in folder.iterdir():
        f.unlink()
    deliver(bad, "sends", sends, RUN_DATE)
    with pytest.raises(ValidationFailed) as err:
        validate_raw(spark, bad, RUN_DATE)
    message = str(err.value)
    assert f"input 'raw/sends dt={RUN_DATE}'" in message
    assert "expect_column_values_to_be_in_set" in message and "'arm'" in message
    assert "3 unexpected" in message and "subject_9" in message
    assert sends.loc[sends.index[0], "send_id"] in message, "an offending row is shown"
    assert "known_customer" in message and "GHOST" in message
    assert "raw/users" not in message.split("full report")[1], "users passed and is not blamed"
    assert (bad.paths.reports / f"run_date={RUN_DATE}" / "validation" / "raw.json").exists()


def test_missing_delivery_is_named(spark, settings, generated, tmp_path):
    bad = settings_in(settings, tmp_path)
    copy_raw(settings, bad)
    for f in (bad.paths.lake / "raw" / "responses" / f"dt={RUN_DATE}").iterdir():
        f.unlink()
    (bad.paths.lake / "raw" / "responses" / f"dt={RUN_DATE}").rmdir()
    with pytest.raises(Exception, match=rf"raw source 'responses': no delivery dt={RUN_DATE}"):
        validate_raw(spark, bad, RUN_DATE)


def test_the_leakage_guards_auc_is_sklearns_folded_to_either_direction():
    rng = np.random.default_rng(3)
    target = (rng.random(5000) < 0.2).astype(int)
    tied = pd.Series(rng.integers(0, 7, 5000) + target * rng.integers(0, 2, 5000), dtype="float64")
    auc = roc_auc_score(target, tied)
    assert auc > 0.55
    assert _separation(tied, target) == pytest.approx(auc, abs=1e-12)
    assert _separation(-tied, target) == pytest.approx(auc, abs=1e-12)  # the other direction, folded
    assert _separation(pd.Series(target * 2.0), target) == 1.0
    assert _separation(tied, np.zeros(5000, dtype=int)) == 0.5  # one class: nothing to separate


def test_sample_ratio_mismatch_statistic():
    split = {"control": 0.5, "a": 0.5}
    assert sample_ratio_mismatch({"control": 5000, "a": 5040}, split)["p_value"] > 0.5
    assert sample_ratio_mismatch({"control": 4000, "a": 6000}, split)["p_value"] < 1e-10


def test_covariate_balance_pools_each_arms_campaigns_as_one_sample(spark):
    """The balance comes from per-campaign moments (one Spark job that also gives the arm counts):
    pooled, they must give each arm's own mean and sample variance over all its rows, as pandas
    computes them, with nulls, a campaign where an arm has one row, one where a feature is all null."""
    rng = np.random.default_rng(11)
    sizes = {"c1": {"control": 400, "a": 300, "b": 5}, "c2": {"control": 50, "a": 1}, "c3": {"a": 200}}
    rows = []
    for campaign, arms in sizes.items():
        for arm, n in arms.items():
            shift = {"control": 0.0, "a": 0.4, "b": -1.0}[arm] + (2.0 if campaign == "c2" else 0.0)
            x = rng.normal(shift, 1.0 + (campaign == "c3"), n)
            y = np.where(rng.random(n) < 0.2, np.nan, rng.exponential(3.0, n))
            if campaign == "c3":
                y[:] = np.nan
            ys = [None if np.isnan(value) else value for value in y.tolist()]
            rows += [(campaign, arm, xi, yi) for xi, yi in zip(x.tolist(), ys, strict=True)]
    frame = pd.DataFrame(rows, columns=["campaign_id", "arm", "x", "y"])
    sdf = spark.createDataFrame(rows, "campaign_id string, arm string, x double, y double")

    smd = covariate_balance(sdf, "control", ["x", "y"])

    by_arm = frame.groupby("arm")
    for arm in ("a", "b"):
        for feature in ("x", "y"):
            mean, var = by_arm[feature].mean(), by_arm[feature].var(ddof=1)
            expected = abs(mean[arm] - mean["control"]) / ((var[arm] + var["control"]) / 2) ** 0.5
            assert smd[arm][feature] == pytest.approx(expected, rel=1e-9), (arm, feature)
    assert set(smd) == {"a", "b"}
    assert _arm_counts_by_campaign(sdf) == sizes
    assert covariate_balance(sdf.where("arm != 'control'"), "control", ["x"]) == {}, "no control, no balance"


def test_each_campaign_is_tested_against_its_own_split(settings):
    from jobs.validate import _randomization

    exp = settings.experiment.model_copy(update={"campaign_splits": {"half": {"control": 0.5, "subject_1": 0.5}}})
    even = {"control": 2500, "subject_1": 2500, "subject_2": 2500, "subject_3": 2500}
    half = {"control": 5000, "subject_1": 5000}
    outcome, srm = _randomization("sends", {"daily": even, "half": half}, exp)
    assert outcome.success and srm["campaigns"]["half"]["p_value"] > 0.5
    assert srm["p_value_min"] == exp.srm_p_value_min / 2, "Bonferroni over the campaigns"
    # The same counts against the default split (no campaign_splits entry): a mismatch, named.
    outcome, _ = _randomization("sends", {"daily": even, "other": half}, exp)
    assert not outcome.success and "campaign 'other'" in outcome.failures[0]
    # An arm the campaign's split leaves out must not have sends.
    leaked = {"control": 5000, "subject_1": 4990, "subject_2": 10}
    outcome, _ = _randomization("sends", {"half": leaked}, exp)
    assert not outcome.success and "'subject_2': 10" in outcome.failures[0]


def test_broken_randomization_stops_training(spark, settings, tmp_path):
    # Uses the training set published by the pipeline tests' ETL run, or builds it.
    from jobs.etl import run_etl

    if not partition_dir(settings, "features/training", RUN_DATE).exists():
        run_etl(spark, settings, RUN_DATE)
    bad = settings_in(settings, tmp_path)
    training = spark.read.parquet(str(partition_dir(settings, "features/training", RUN_DATE)))
    # Half of the holdout lost upstream, and the loss concentrated on older customers.
    skewed = training.where("arm != 'control' or (age < 50 and send_id like '%0')  or age < 40")
    publish_partition(skewed, bad, "features/training", RUN_DATE)
    publish_partition(
        spark.read.parquet(str(partition_dir(settings, "features/scoring", RUN_DATE))),
        bad,
        "features/scoring",
        RUN_DATE,
    )
    with pytest.raises(ValidationFailed) as err:
        validate_features(spark, bad, RUN_DATE)
    assert "sample ratio mismatch" in str(err.value)
    assert "covariate imbalance" in str(err.value) and "age" in str(err.value)
