"""More than one outcome: values that trade clicks for purchases, guardrails per customer and per campaign.

Small frames through the real T-learner (LightGBM), the policy and the offline evaluation; the
whole nightly with the demo's unsubscribe guardrail is tests/model/test_guardrails.py.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from jobs.features import FeatureSpec
from jobs.model import evaluation, policy
from jobs.model.train import fit_model, guardrail_bounds
from jobs.names import key, p_column
from jobs.settings import Experiment, Outcome, Targeting

DAY = date(2026, 10, 30)
ARMS = ["a", "b"]


def _experiment() -> Experiment:
    return Experiment(
        control="c",
        arms=ARMS,
        expected_split={"c": 1 / 3, "a": 1 / 3, "b": 1 / 3},
        attribution_window_days=7,
        qualifying_response_types=["click"],
        srm_p_value_min=0.001,
    )


def _targeting(**changes) -> Targeting:
    base = {
        "value_per_response": 1.0,
        "cost_per_send": {"a": 0.005, "b": 0.005},
        "min_uplift": -1.0,  # the tests look at the arm chosen, not at who is left out
        "holdout_share": 0.0,
        "outcomes": {"purchase": {"response_types": ["purchase"], "window_days": 7, "value": 10.0}},
    }
    return Targeting.model_validate(base | changes)


def _sends(arm: np.ndarray, **columns) -> pd.DataFrame:
    """One randomized campaign's sends of arm (at _experiment's split) with the given columns."""
    n = len(arm)
    keys = {"customer_id": [f"u{i}" for i in range(n)], "campaign_id": "k", "propensity": 1 / 3}
    return pd.DataFrame({**keys, "inclusion_probability": 1.0, "arm": arm, **columns})


def _trading(n: int = 60_000, seed: int = 4) -> pd.DataFrame:
    """Arm a: +8 points of clicks for everyone, no purchases. Arm b: +2 points of clicks and,
    in segment s1, +3 points of purchases. Control: 5% clicks, 1% purchases."""
    rng = np.random.default_rng(seed)
    arm = rng.choice(["c", *ARMS], n)
    seg = rng.choice(["s0", "s1"], n)
    click = 0.05 + 0.08 * (arm == "a") + 0.02 * (arm == "b")
    purchase = 0.01 + 0.03 * ((arm == "b") & (seg == "s1"))
    frame = _sends(
        arm,
        seg=seg,
        x=rng.normal(size=n),
        label=(rng.random(n) < click).astype(int),
        label__purchase=(rng.random(n) < purchase).astype(float),
    )
    frame.loc[frame.index[-n // 5 :], "label__purchase"] = np.nan  # the latest sends: not matured for purchases
    return frame


@pytest.fixture(scope="module")
def trading_model(settings):
    spec = FeatureSpec(attributes={"x": {"kind": "numeric"}, "seg": {"kind": "categorical"}})
    local = settings.model_copy(update={"experiment": _experiment(), "features": spec, "targeting": _targeting()})
    return fit_model(_trading(), local), local


def test_a_purchase_worth_ten_clicks_changes_the_arm_where_arms_trade_clicks_for_purchases(trading_model):
    model, local = trading_model
    people = pd.DataFrame({"customer_id": ["p0", "p1"], "seg": ["s0", "s1"], "x": [0.0, 0.0]})
    predicted = pd.concat([people[["customer_id"]], model.predict(None, people)], axis=1)
    assert {"p_b__purchase", "uplift_b__purchase", "uplift_a"} <= set(predicted.columns)

    ten = policy.choose(predicted, _targeting(), ARMS, DAY).set_index("customer_id")["recommended_arm"]
    # Truth: in s1, b is worth 0.02 + 10 x 0.03 = 0.32 against a's 0.08; in s0, a wins either way.
    assert ten.to_dict() == {"p0": "a", "p1": "b"}
    one = _targeting(outcomes={"purchase": {"response_types": ["purchase"], "window_days": 7, "value": 1.0}})
    same = policy.choose(predicted, one, ARMS, DAY).set_index("customer_id")["recommended_arm"]
    # At a click's value, b in s1 is worth 0.02 + 0.03 = 0.05: a's 0.08 wins there too.
    assert same.to_dict() == {"p0": "a", "p1": "a"}
    no_outcome = policy.choose(predicted, _targeting(outcomes={}), ARMS, DAY)
    assert set(no_outcome["recommended_arm"]) == {"a"}, "clicks alone: a everywhere"


def _guarded(max_uplift=None, per_send=None) -> Targeting:
    guardrail = {k: v for k, v in (("max_uplift", max_uplift), ("max_increase_per_send", per_send)) if v is not None}
    return _targeting(
        outcomes={
            "unsubscribe": {"response_types": ["unsubscribe"], "window_days": 7, "value": -1.0, "guardrail": guardrail}
        }
    )


def _uplifts(n: int, seed: int = 0) -> pd.DataFrame:
    """a wins clicks everywhere; half the customers (harmed) unsubscribe 4 points more with a."""
    rng = np.random.default_rng(seed)
    harmed = np.arange(n) % 2 == 0
    frame = pd.DataFrame({"customer_id": [f"u{i:05d}" for i in range(n)]})
    frame["uplift_a"] = 0.10 + rng.uniform(0, 0.02, n)
    frame["uplift_b"] = 0.03
    frame["uplift_a__unsubscribe"] = np.where(harmed, 0.04, 0.0)
    frame["uplift_b__unsubscribe"] = 0.0
    frame["uplift_high_a__unsubscribe"] = frame["uplift_a__unsubscribe"] + 0.005
    frame["uplift_high_b__unsubscribe"] = 0.004
    return frame, harmed


def test_the_per_customer_guardrail_keeps_the_harmed_from_the_arm_that_harms_them():
    frame, harmed = _uplifts(2000)
    free = policy.apply(frame, _targeting(outcomes=_guarded(per_send=1.0).outcomes), ARMS, DAY)
    assert (free.loc[harmed, "recommended_arm"] == "a").all(), "without a per-customer limit a wins everywhere"
    guarded = policy.apply(frame, _guarded(max_uplift=0.01), ARMS, DAY)
    assert (guarded.loc[harmed, "recommended_arm"] == "b").all(), "their bound 0.045 is above 0.01: b instead"
    assert (guarded.loc[~harmed, "recommended_arm"] == "a").all()
    assert guarded.loc[harmed, "expected_uplift__unsubscribe"].eq(0.0).all()
    frame.loc[0, "uplift_high_b__unsubscribe"] = 0.5  # customer 0: both arms forbidden
    alone = policy.apply(frame, _guarded(max_uplift=0.01), ARMS, DAY).iloc[0]
    assert alone["recommended_arm"] == "none" and alone["expected_net_value"] == 0.0, "ranked by nothing to gain"


def test_the_campaign_guardrail_is_met_at_the_smallest_price_on_the_grid():
    frame, harmed = _uplifts(2000)
    limit = 0.01
    targeting = _guarded(per_send=limit)
    chosen = policy.apply(frame, targeting, ARMS, DAY)
    sent = chosen["selected"] & ~chosen["holdout"]
    assert sent.all(), "every customer is still worth a message"
    per_send = chosen.loc[sent, "expected_uplift__unsubscribe"].sum() / sent.sum()
    assert per_send <= limit + 1e-12
    free = policy.apply(frame, _guarded(per_send=1.0), ARMS, DAY)
    assert free["expected_uplift__unsubscribe"].sum() / len(free) == pytest.approx(0.02), "unpriced: 0.02 per send"
    # Some harmed customers keep a (the limit allows half of them), the others get b: the price
    # is the smallest that fits, and one step below it the limit breaks.
    kept = (chosen.loc[harmed, "recommended_arm"] == "a").mean()
    assert 0.3 < kept < 0.7
    price = policy.guardrail_prices(frame, targeting, ARMS)["unsubscribe"]
    grid = policy.price_grid(targeting)
    below = grid[np.searchsorted(grid, price) - 1]
    assert policy.price_excess(frame, targeting, ARMS, "unsubscribe", np.array([below, price]), {})[0] > 0


def test_no_one_is_sent_at_a_loss_to_make_room_under_the_campaign_limit():
    frame, _ = _uplifts(500)
    frame["uplift_b"] = 0.001  # b loses money (cost 0.005) but unsubscribes no one
    chosen = policy.apply(frame, _guarded(per_send=0.0), ARMS, DAY)
    assert not (chosen["recommended_arm"] == "b").any()


def test_bounds_come_from_the_holdout_uplift_observed_in_each_bin_of_predicted_uplift(settings):
    rng = np.random.default_rng(1)
    n = 40_000
    arm = rng.choice(["c", "a", "b"], n)
    harmed = rng.random(n) < 0.3
    unsubscribed = rng.random(n) < 0.004 + 0.05 * ((arm == "a") & harmed)
    scored = pd.DataFrame(
        {
            "campaign_id": "k",
            "propensity": 1 / 3,  # _experiment's split
            "inclusion_probability": 1.0,
            "arm": arm,
            "label__unsubscribe": unsubscribed.astype(int),
            # a model that ranks the harmed first but underestimates them tenfold
            "raw_uplift_a__unsubscribe": np.where(harmed, 0.005, 0.0) + rng.uniform(0, 1e-4, n),
        }
    )
    targeting = _guarded(max_uplift=0.01)
    local = settings.model_copy(update={"experiment": _experiment(), "targeting": targeting})
    flat = {key("b", "unsubscribe"): {"ate": 0.0, "low": -0.002, "high": 0.002}}
    bounds = guardrail_bounds(scored, flat, local)
    assert bounds[key("b", "unsubscribe")] == {"edges": [], "highs": [0.002]}, "a constant arm: its effect's high"
    a = bounds[key("a", "unsubscribe")]
    assert len(a["highs"]) == len(a["edges"]) + 1 == 5
    assert a["highs"][-1] > 0.05, "the top bin's bound is what the data shows (0.05), not the model's 0.005"
    assert max(a["highs"][:3]) < 0.01, "the unharmed bins stay below the limit"


def test_the_gate_estimates_each_policys_guardrail_increase_and_flags_the_ones_above_a_limit():
    rng = np.random.default_rng(2)
    n = 30_000
    arm = rng.choice(["c", "a", "b"], n)
    harmed = rng.random(n) < 0.5
    holdout = _sends(
        arm,
        label=(rng.random(n) < 0.05 + 0.05 * (arm != "c")).astype(int),
        label__unsubscribe=(rng.random(n) < 0.004 + 0.04 * ((arm == "a") & harmed)).astype(int),
    )
    holdout["label__unsubscribe"] = holdout["label__unsubscribe"].astype(float)
    holdout.loc[holdout.index[: n // 10], "label__unsubscribe"] = np.nan  # not matured: the model's estimate counts
    for a in ["c", *ARMS]:
        holdout[p_column(a)] = 0.05 + 0.05 * (a != "c")
        holdout[p_column(a, "unsubscribe")] = 0.004 + (0.04 * harmed if a == "a" else 0.0)
    targeting = _guarded(max_uplift=0.01, per_send=0.005)
    assignments = {
        "everyone gets a": np.full(n, "a", dtype=object),
        "a where safe": np.where(harmed, "b", "a"),
        "no one": np.full(n, "c", dtype=object),
    }
    table = evaluation.value_table(assignments, holdout, _experiment(), targeting, pairs={}, rounds=100, seed=0)[
        "policies"
    ]
    everyone = table["everyone gets a"]["guardrails"]["unsubscribe"]
    assert everyone["increase_per_send"] == pytest.approx(0.02, abs=0.004), "truth: 0.04 x half"
    assert everyone["low"] <= everyone["increase_per_send"] <= everyone["high"]
    assert everyone["above"] == ["max_uplift", "max_increase_per_send"]
    assert table["a where safe"]["guardrails"]["unsubscribe"]["above"] == []
    assert table["no one"]["guardrails"]["unsubscribe"] == {
        "increase_per_send": 0.0,
        "low": 0.0,
        "high": 0.0,
        "above": [],
    }
    # The value counts the harm: unsubscribes cost 1 each, so "everyone gets a" loses 0.02 of its clicks' 0.05.
    assert table["everyone gets a"]["value"] == pytest.approx(0.05 - 0.02 - 0.005, abs=0.006)


@pytest.mark.parametrize(
    ("outcomes", "message"),
    [
        ({"Unsub": {"response_types": ["u"], "window_days": 7, "value": -1}}, "lower case"),
        ({"a__b": {"response_types": ["u"], "window_days": 7, "value": -1}}, "single underscores"),
        ({"u": {"response_types": ["u"], "window_days": 7, "value": -1, "guardrail": {}}}, "needs max_uplift"),
        ({"u": {"response_types": [], "window_days": 7, "value": -1}}, "at least 1"),
    ],
)
def test_a_wrong_outcome_declaration_fails_at_load_time(outcomes, message):
    with pytest.raises(ValueError, match=message):
        _targeting(outcomes=outcomes)


def test_outcome_settings_declare_labels_windows_and_values(settings):
    local = settings.model_copy(
        update={
            "targeting": settings.targeting.model_copy(
                update={"outcomes": {"late": Outcome(response_types=["x"], window_days=21, value=2.0)}}
            )
        }
    )
    assert local.window_days == 21, "a send is a training row once its longest label has matured"
    assert local.response_types() == {None: settings.experiment.qualifying_response_types, "late": ["x"]}
    assert local.targeting.values() == {None: settings.targeting.value_per_response, "late": 2.0}
