"""Bad deliveries and broken randomization stop the run with a message that says what and where."""

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import RUN_DATE
from helpers import copy_raw, settings_in
from jobs.data.checks import MAX_SMD, ValidationFailed, sample_ratio_mismatch, separation, training_randomization
from jobs.data.lake import partition_dir, publish_partition
from jobs.data.validate import (
    _arm_counts_by_campaign,
    _moments_by_campaign,
    covariate_balance,
    leakage_in_data,
    validate_features,
    validate_raw,
)
from jobs.demo.generate import deliver
from jobs.model.policy import EXPLORE, HOLDOUT, TARGET
from jobs.names import RANDOMIZED

TRAINING = "campaign_id string, arm string, assignment string, label int, x double"


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
    assert separation(tied, target) == pytest.approx(auc, abs=1e-12)
    assert separation(-tied, target) == pytest.approx(auc, abs=1e-12)  # the other direction, folded
    assert separation(pd.Series(target * 2.0), target) == 1.0
    assert separation(tied, np.zeros(5000, dtype=int)) == 0.5  # one class: nothing to separate


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
            rows += [(campaign, arm, RANDOMIZED, xi, yi) for xi, yi in zip(x.tolist(), ys, strict=True)]
    frame = pd.DataFrame(rows, columns=["campaign_id", "arm", "assignment", "x", "y"])
    sdf = spark.createDataFrame(rows, "campaign_id string, arm string, assignment string, x double, y double")

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


def _training(spark, frame: pd.DataFrame):
    """frame (TRAINING's columns, NaN for null) as a Spark training set."""
    return spark.createDataFrame(frame.astype(object).where(frame.notna(), None).to_numpy().tolist(), TRAINING)


def _randomization_checks(settings, training):
    """The training set's sample-ratio and balance checks on its feature x."""
    moments = _moments_by_campaign(training, ["x"], "assignment")
    return training_randomization("features/training", moments, settings.experiment, ["x"])


def _sends(arms: list[str], x: np.ndarray, campaign: str = "daily", assignment: str = RANDOMIZED) -> pd.DataFrame:
    """One row per value of x (arms x sends), its arm that row's."""
    return pd.DataFrame(
        {
            "campaign_id": campaign,
            "arm": np.repeat(arms, x.shape[1]),
            "assignment": assignment,
            "label": 0,
            "x": x.ravel(),
        }
    )


def test_a_chance_imbalance_on_a_sparse_feature_passes(spark, settings):
    """A feature known on 2% of 20,000 randomized sends (100 rows per arm), one distribution for
    every arm: an SMD of 0.16 is within chance at that size, and the night passes."""
    arms = settings.experiment.all_arms
    x = np.full((len(arms), 5000), np.nan)
    x[:, :100] = np.random.default_rng(26).exponential(20.0, (len(arms), 100))
    outcome, checks = _randomization_checks(settings, _training(spark, _sends(arms, x)))
    smd = checks["covariate_balance"]["arms"]["subject_2"]["x"]["smd"]
    assert smd > MAX_SMD and smd == pytest.approx(0.16, abs=0.005), "the SMD alone would refuse it"
    assert outcome.success, outcome.failures


def test_a_real_imbalance_is_refused_naming_the_arm_and_feature(spark, settings):
    """2,000 rows per arm, one arm's feature shifted by 0.3 sd: refused, with its SMD and p-value."""
    arms = settings.experiment.all_arms
    x = np.random.default_rng(7).normal(0.0, 1.0, (len(arms), 2000))
    x[arms.index("subject_3")] += 0.3
    outcome, _ = _randomization_checks(settings, _training(spark, _sends(arms, x)))
    assert not outcome.success
    (failure,) = outcome.failures
    assert "covariate imbalance" in failure
    assert re.search(r"subject_3\.x \(SMD 0\.[23]\d\d, p=\d(\.\d)?e-\d+\)", failure), failure
    assert "subject_1.x" not in failure and "subject_2.x" not in failure


def test_an_own_audiences_rows_are_left_out_of_the_randomization_checks(spark, settings):
    """The pipeline's own audience: explore sends, a holdout of the selected customers recorded as
    control, and the sends the model targeted at high x. The sample-ratio test, the balance and the
    leakage guard's arm-vs-control AUC read the randomized campaigns' rows only (an own campaign's
    routes are tested against its audience by validate-raw); had the targeted sends been randomized,
    each would fail."""
    arms = settings.experiment.all_arms
    rng = np.random.default_rng(5)
    frame = pd.concat(
        [
            _sends(arms, rng.random((len(arms), 100))),
            _sends(arms, rng.random((len(arms), 50)), "uplift", EXPLORE),
            _sends(["control"], 5 + rng.random((1, 200)), "uplift", HOLDOUT),
            _sends(["subject_1"], 5 + rng.random((1, 9800)), "uplift", TARGET),
        ],
        ignore_index=True,
    )
    frame["label"] = (rng.random(len(frame)) < 0.1).astype(int)

    training = _training(spark, frame)
    outcome, _ = _randomization_checks(settings, training)
    leaks, _ = leakage_in_data(training, settings, seed=0)
    assert outcome.success, outcome.failures
    assert leaks == []

    training = _training(spark, frame.replace({"assignment": {TARGET: RANDOMIZED}}))
    outcome, _ = _randomization_checks(settings, training)
    leaks, _ = leakage_in_data(training, settings, seed=0)
    assert not outcome.success
    assert "sample ratio mismatch in campaign 'uplift'" in outcome.failures[0]
    assert "covariate imbalance" in outcome.failures[1] and "subject_1.x" in outcome.failures[1]
    assert len(leaks) == 1 and "feature 'x'" in leaks[0] and "arm 'subject_1' vs control" in leaks[0]


def test_each_campaign_is_tested_against_its_own_split(settings):
    from jobs.data.validate import randomization_check

    exp = settings.experiment.model_copy(update={"campaign_splits": {"half": {"control": 0.5, "subject_1": 0.5}}})
    even = {"control": 2500, "subject_1": 2500, "subject_2": 2500, "subject_3": 2500}
    half = {"control": 5000, "subject_1": 5000}
    outcome, srm = randomization_check("sends", {"daily": even, "half": half}, exp)
    assert outcome.success and srm["campaigns"]["half"]["p_value"] > 0.5
    assert srm["p_value_min"] == exp.srm_p_value_min / 2, "Bonferroni over the campaigns"
    # The same counts against the default split (no campaign_splits entry): a mismatch, named.
    outcome, _ = randomization_check("sends", {"daily": even, "other": half}, exp)
    assert not outcome.success and "campaign 'other'" in outcome.failures[0]
    # An arm the campaign's split leaves out must not have sends.
    leaked = {"control": 5000, "subject_1": 4990, "subject_2": 10}
    outcome, _ = randomization_check("sends", {"half": leaked}, exp)
    assert not outcome.success and "'subject_2': 10" in outcome.failures[0]


def test_broken_randomization_stops_training(spark, settings, tmp_path):
    # Uses the training set published by the pipeline tests' ETL run, or builds it.
    from jobs.data.etl import run_etl

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
