"""Results of sent audiences, on a lake written by hand: known counts give known realized figures."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from helpers import settings_in
from jobs.data.lake import partition_dir, read_table
from jobs.model import policy
from jobs.monitoring.results import (
    ALL,
    FOLLOWS,
    NO_ONE,
    calibration,
    calibration_slope,
    measure,
    policy_values,
    rate_difference,
)
from jobs.names import expected_uplift_column, label_column, uplift_column

FIRST = date(2026, 5, 1)
SECOND = FIRST + timedelta(days=3)  # inside the first audience's 7-day label window
TONIGHT = SECOND + timedelta(days=8)


def _audience(settings, day: date, rows: list[dict]) -> None:
    arms = settings.experiment.arms
    frame = pd.DataFrame(rows)
    frame = frame.assign(
        campaign_id=settings.export.campaign_of(day),
        inclusion_probability=1.0,
        decile=frame.index % 10 + 1,
        expected_uplift=np.where(frame["assignment"] == policy.TARGET, 0.1, 0.0),
        expected_net_value=0.9,
        send_cost=0.05,
        policy="model:1",
        model_version=None,
        **{uplift_column(a): 0.01 * (k + 1) for k, a in enumerate(arms)},
        **{expected_uplift_column(o): 0.0 for o in settings.targeting.outcomes},
    )
    frame["model_version"] = frame["model_version"].astype("string")
    path = partition_dir(settings, "audience", day)
    path.mkdir(parents=True)
    frame.to_parquet(path / "part-0.parquet", index=False)


def _row(customer, assignment, arm, recommended, selected, propensity, route):
    return {
        "customer_id": customer,
        "assignment": assignment,
        "assigned_arm": arm,
        "recommended_arm": recommended,
        "selected": selected,
        "propensity": propensity,
        "route_probability": route,
    }


def _training(settings, responders: set[tuple[str, str]], listed: list[tuple[str, str]]) -> None:
    """The training set of TONIGHT: one matured send per listed (campaign, customer), labelled."""
    frame = pd.DataFrame(listed, columns=["campaign_id", "customer_id"])
    frame["label"] = [int((c, x) in responders) for c, x in listed]
    for outcome in settings.targeting.outcomes:
        frame[label_column(outcome)] = 0
    path = partition_dir(settings, "features/training", TONIGHT)
    path.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path / "part-0.parquet", index=False)


@pytest.fixture
def lake(settings, tmp_path):
    local = settings_in(settings, tmp_path)
    first, second = local.export.campaign_of(FIRST), local.export.campaign_of(SECOND)
    rows = [_row(f"t{k}", policy.TARGET, "subject_1", "subject_1", True, 0.9, 0.9) for k in range(200)]
    rows += [_row(f"h{k}", policy.HOLDOUT, "control", "subject_1", True, 0.05, 0.05) for k in range(100)]
    explore = ["control", *local.experiment.arms]
    # Explore rows: 40 per arm; the policy recommends subject_1 to the first half of each arm's rows.
    rows += [
        _row(f"e{a}{k}", policy.EXPLORE, a, "subject_1" if k < 20 else "none", k < 20, 0.025, 0.025)
        for a in explore
        for k in range(40)
    ]
    _audience(local, FIRST, rows)
    # The second audience lists 50 of the first one's sent customers again, 4 days later.
    again = [_row(f"t{k}", policy.TARGET, "subject_2", "subject_2", True, 0.9, 0.9) for k in range(50)]
    again += [_row(f"n{k}", policy.HOLDOUT, "control", "subject_2", True, 0.05, 0.05) for k in range(30)]
    _audience(local, SECOND, again)
    responders = {(first, f"t{k}") for k in range(60)} | {(first, f"h{k}") for k in range(10)}
    # Explore: control responds 5 of 40, subject_1 20 of 40 (all of them among its first 20 rows).
    responders |= {(first, f"econtrol{k}") for k in range(5)} | {(first, f"esubject_1{k}") for k in range(20)}
    listed = [(first, r["customer_id"]) for r in rows] + [(second, r["customer_id"]) for r in again]
    _training(local, responders, listed)
    return local, responders, listed


def test_the_realized_lift_is_the_sent_against_their_holdout(spark, lake):
    local, _, _ = lake
    summary = measure(spark, local, TONIGHT)
    assert [a["audience_date"] for a in summary["audiences"]] == [FIRST.isoformat(), SECOND.isoformat()]
    results = read_table(local, "results")
    first = results[results["audience_date"] == FIRST].set_index("arm")
    row = first.loc["subject_1"]
    assert (row["sent"], row["holdout"]) == (200, 100)
    assert row["rate_sent"] == pytest.approx(0.3) and row["rate_holdout"] == pytest.approx(0.1)
    d, low, high = rate_difference(60, 200, 10, 100)
    assert row["incremental"] == pytest.approx(40.0) and row["incremental"] == pytest.approx(200 * d)
    assert (row["incremental_low"], row["incremental_high"]) == pytest.approx((200 * low, 200 * high))
    assert 0 < row["incremental_low"] < 40 < row["incremental_high"]
    assert row["expected_incremental"] == pytest.approx(20.0)  # 200 sends x 0.1 expected uplift
    # Net value: 10 per response, 0.05 per send.
    assert row["net_value"] == pytest.approx(200 * 10 * 0.2 - 200 * 0.05)
    assert first.loc[ALL, "incremental"] == pytest.approx(40.0) and first.loc[ALL, "sent"] == 200
    assert first.loc["subject_2", "sent"] == 0 and np.isnan(first.loc["subject_2", "incremental"])


def test_a_customer_counts_only_for_their_first_listing_within_a_window(spark, lake):
    local, _, _ = lake
    measure(spark, local, TONIGHT)
    results = read_table(local, "results")
    second = results[results["audience_date"] == SECOND].set_index("arm")
    assert second.loc["subject_2", "overlapped"] == 50  # listed by the first audience 3 days before
    assert second.loc["subject_2", "sent"] == 0 and second.loc["subject_2", "holdout"] == 30
    first = results[results["audience_date"] == FIRST].set_index("arm")
    assert first.loc["subject_1", "overlapped"] == 0 and first.loc["subject_1", "sent"] == 200


def test_late_responses_are_counted_by_a_recomputation_never_twice(spark, lake):
    local, responders, listed = lake
    measure(spark, local, TONIGHT)
    first = local.export.campaign_of(FIRST)
    _training(local, responders | {(first, "h50")}, listed)  # a holdout response delivered late
    measure(spark, local, TONIGHT)
    measure(spark, local, TONIGHT)
    results = read_table(local, "results")
    mine = results[results["audience_date"] == FIRST]
    assert len(mine) == len(local.experiment.arms) + 1  # one row per arm and all: replaced, not appended
    row = mine.set_index("arm").loc["subject_1"]
    assert row["rate_holdout"] * row["holdout"] == pytest.approx(11)
    assert row["incremental"] == pytest.approx(200 * (0.3 - 0.11))


def test_policies_are_valued_on_the_explore_rows(spark, lake):
    local, _, _ = lake
    measure(spark, local, TONIGHT)
    sums = read_table(local, "results_policies")
    values = policy_values(sums[sums["audience_date"] == FIRST], local).set_index("policy")
    # Everyone gets subject_1: 20/40 respond against control's 5/40: 10 x 0.375 - 0.05 per customer.
    assert values.loc["everyone gets subject_1", "value"] == pytest.approx(10 * (0.5 - 0.125) - 0.05)
    assert values.loc[NO_ONE, "value"] == 0.0
    # The audience's policy: subject_1 to the first 20 of each arm's rows (all 20 responders of
    # subject_1's rows), nothing (control) to the other 20: 20/20 vs control's 5/20 among the latter.
    follows = values.loc[FOLLOWS]
    assert follows["rows"] == 40
    expected = 0.5 * (10 * 1.0 - 0.05) + 0.5 * (10 * 0.0)
    assert follows["value"] == pytest.approx(expected - 10 * 5 / 40)
    assert follows["low"] < follows["value"] < follows["high"]
    versus = values.loc["everyone gets subject_1"]
    assert versus["difference"] == pytest.approx(follows["value"] - versus["value"])
    assert versus["difference_low"] < versus["difference"] < versus["difference_high"]


def test_monitoring_values_the_champion_on_its_measured_nights(spark, lake):
    from jobs.data.lake import publish_frame
    from jobs.monitoring.champion import assess

    local, _, _ = lake
    measure(spark, local, TONIGHT)
    for table in ("results", "results_policies"):
        frame = read_table(local, table)
        mine = frame[frame["audience_date"] == FIRST].drop(columns="run_date")
        publish_frame(mine.assign(model_version="7", validated=True), local, table, FIRST)
    report = assess(local, "7")
    assert report["nights"] == [FIRST.isoformat()] and report["evidence"] == []
    assert report["best_constant"] == "everyone gets subject_1"
    assert report["realized_value"]["value"] == pytest.approx(3.725)
    assert report["versus_best_constant"]["value"] == pytest.approx(3.725 - 3.7)
    assert report["explore_rows"] == 160
    assert assess(local, "8")["nights"] == []  # a version that served nothing measured


def test_the_calibration_deciles_order_as_the_truth_does(spark, settings, tmp_path):
    """An audience of 40,000 recommended subject_1, whose true uplift falls from 0.10 in decile 1 to
    0.01 in decile 10 (the model's predictions say 0.1 everywhere): the realized uplift by decile,
    the sent against the holdout and the explore rows, each weighed by 1 / propensity, orders as the
    truth does and its intervals hold it."""
    local = settings_in(settings, tmp_path)
    rng = np.random.default_rng(5)
    n, explore_share, holdout_share = 40_000, 0.05, 0.1
    options = ["control", *local.experiment.arms]
    explored = rng.random(n) < explore_share
    held = rng.random(n) < holdout_share
    arm = np.where(explored, rng.choice(options, n), np.where(held, "control", "subject_1"))
    share = explore_share / len(options)
    rows = []
    for k in range(n):
        route = policy.EXPLORE if explored[k] else policy.HOLDOUT if held[k] else policy.TARGET
        propensity = {
            "control": (1 - explore_share) * holdout_share + share,
            "subject_1": (1 - explore_share) * (1 - holdout_share) + share,
        }.get(arm[k], share)
        by_route = {
            policy.EXPLORE: share,
            policy.HOLDOUT: (1 - explore_share) * holdout_share,
            policy.TARGET: (1 - explore_share) * (1 - holdout_share),
        }[route]
        rows.append(_row(f"c{k}", route, arm[k], "subject_1", True, propensity, by_route))
    _audience(local, FIRST, rows)  # decile = position % 10 + 1
    decile = np.arange(n) % 10 + 1
    tau = 0.01 * (11 - decile)
    responds = rng.random(n) < 0.1 + np.where(arm == "subject_1", tau, 0.0)
    campaign = local.export.campaign_of(FIRST)
    listed = [(campaign, f"c{k}") for k in range(n)]
    _training(local, {(campaign, f"c{k}") for k in np.flatnonzero(responds)}, listed)

    measure(spark, local, TONIGHT)
    table = calibration(read_table(local, "results_calibration")).set_index("decile")
    truth = pd.Series(0.01 * (11 - np.arange(1, 11)), index=range(1, 11))
    assert list(table.index) == list(range(1, 11))
    assert table["realized"].corr(truth, method="spearman") >= 0.8, table
    held_truth = (table["low"] <= truth) & (truth <= table["high"])
    assert held_truth.sum() >= 8, table
    top, bottom = table.loc[1:5, "realized"].mean(), table.loc[6:10, "realized"].mean()
    assert top - bottom == pytest.approx(0.05, abs=0.02)
    slope = calibration_slope(table.assign(truth=truth), against="truth")
    assert 0 < slope["slope_low"] < 1 < slope["slope_high"], slope


def test_monitoring_tests_every_constant_not_only_the_noisiest_best_one():
    """The best constant by its estimate is an arm explored on few rows (noisy, no evidence); the
    champion is surely below another one: that is evidence, at 95% for the constants together."""
    from jobs.monitoring.champion import _beaten_by

    def constants(subject_2_difference: float) -> pd.DataFrame:
        rows = [  # policy, value, paired difference (champion minus it), its 95% half-width
            ("no one", 0.0, 0.0, 0.0),
            ("everyone gets subject_1", -0.1, 0.1, 0.2),
            ("everyone gets subject_2", -subject_2_difference, subject_2_difference, 0.2),
            ("everyone gets subject_3", 1.8, -1.8, 4.2),
        ]
        return pd.DataFrame(
            [
                {"policy": p, "value": v, "difference": d, "difference_low": d - h, "difference_high": d + h}
                for p, v, d, h in rows
            ]
        )

    beaten = _beaten_by(constants(-0.33))
    assert beaten["policy"] == "everyone gets subject_2" and beaten["upper"] < 0
    # Below subject_2 at 95% alone (-0.25 + 0.2 < 0) but not at 95% for the four constants together.
    assert _beaten_by(constants(-0.25)) is None
    assert _beaten_by(constants(0.3)) is None
