"""The audience's assignment record: the recorded propensities are the frequencies the draws produce."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from jobs.model import policy
from jobs.settings import Guardrail, Outcome

SPLIT = {"control": 0.4, "a": 0.4, "b": 0.2}


def _targeting(settings, **changes):
    return settings.targeting.model_copy(update={"outcomes": {}, "exploration_share": 0.2, **changes})


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    recommended = rng.choice(np.array(["a", "b", "none"], dtype=object), n, p=[0.4, 0.3, 0.3])
    selected = (recommended != "none") & (rng.random(n) < 0.8)
    ids = [f"K{i:05d}" for i in range(n)]
    return pd.DataFrame({"customer_id": ids, "recommended_arm": recommended, "selected": selected, "resting": False})


def _nights(frame, targeting, nights: int, explore: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """assign on `nights` run dates (the same customers and choices): the records and the share of
    nights each (customer, assigned arm) occurred."""
    records = []
    for k in range(nights):
        day = date(2026, 1, 1) + timedelta(days=k)
        night = frame.assign(
            holdout=policy.is_holdout(frame["selected"], policy.holdout_draw(frame["customer_id"], day), targeting)
        )
        records.append(policy.assign(night, targeting, "control", SPLIT, day, explore))
    every = pd.concat(records, ignore_index=True)
    every["assigned_arm"] = every["assigned_arm"].fillna("none")
    observed = every.groupby(["customer_id", "assigned_arm"]).size() / nights
    return every, observed


def test_recorded_propensities_match_the_simulated_assignment_frequencies(settings):
    targeting = _targeting(settings, holdout_share=0.1)
    frame = _frame(300)
    nights = 400
    every, observed = _nights(frame, targeting, nights, explore=0.2)
    # The propensity of a (customer, arm) is the same every night: the choices do not change.
    recorded = every.groupby(["customer_id", "assigned_arm"])["propensity"].agg(["min", "max"])
    assert np.allclose(recorded["min"], recorded["max"])
    p = recorded["min"].reindex(observed.index)
    z = (observed - p) / np.sqrt(p * (1 - p) / nights)
    assert (np.abs(z) < 5).all(), z.abs().sort_values().tail()
    chi2 = float((z**2).sum())
    assert chi2 < len(z) + 5 * np.sqrt(2 * len(z)), f"chi2 {chi2:.0f} on {len(z)} cells"
    assert set(every["assignment"]) == set(policy.ASSIGNMENTS)
    # Positivity: every eligible customer was sent every arm and control on some night.
    sent = observed.drop(index="none", level="assigned_arm")
    assert (sent.groupby("customer_id").size() == 3).all()


def test_the_propensities_of_every_arm_sum_to_one_per_customer(settings):
    """Summing P(b | x) over control, the arms and none gives 1 for every customer (the formula, in closed form)."""
    targeting = _targeting(settings, holdout_share=0.1)
    frame = _frame(50, seed=3)
    day = date(2026, 3, 1)
    record = policy.assign(frame.assign(holdout=False), targeting, "control", SPLIT, day, 0.2)
    p, s, h = 0.2, frame["selected"].to_numpy(float), 0.1
    total = (1 - p) * (1 - s)  # none
    for arm, share in SPLIT.items():
        route = h if arm == "control" else (1 - h) * (frame["recommended_arm"].to_numpy() == arm)
        probability = p * share + (1 - p) * s * route
        got = record["assigned_arm"].to_numpy() == arm
        assert np.allclose(record["propensity"][got], probability[got]), arm
        total = total + probability
    assert np.allclose(total, 1.0)
    assert np.allclose(record["inclusion_probability"], p + (1 - p) * s)


def test_a_guardrail_forbidden_arm_is_never_explored_and_keeps_probability_zero(settings):
    guarded = Outcome(response_types=["unsubscribe"], window_days=7, value=-1.0, guardrail=Guardrail(max_uplift=0.01))
    targeting = _targeting(settings, outcomes={"unsub": guarded})
    frame = _frame(200, seed=5)
    frame["recommended_arm"] = np.where(frame["recommended_arm"] == "b", "a", frame["recommended_arm"])
    frame["uplift_high_a__unsub"] = 0.0
    frame["uplift_high_b__unsub"] = np.where(np.arange(200) < 100, 0.5, 0.0)  # b forbidden for the first half
    every, observed = _nights(frame, targeting, 200, explore=0.3)
    forbidden = every["customer_id"].isin(frame["customer_id"][:100])
    assert not (forbidden & (every["assigned_arm"] == "b")).any()
    allowed = every[~forbidden & (every["assigned_arm"] == "b")]
    assert len(allowed) > 0 and (allowed["propensity"] > 0).all()
    # Without b, the first half explores control and a at 0.4 / 0.8 each.
    explored = every[forbidden & (every["assignment"] == policy.EXPLORE)]
    assert explored["assigned_arm"].value_counts(normalize=True)["control"] == pytest.approx(0.5, abs=0.03)


def test_exploration_takes_a_share_of_the_budgeted_sends_and_the_ranking_the_rest(settings):
    targeting = _targeting(settings, max_sends=1000, exploration_share=0.1)
    assert policy.exploration_probability(targeting, ["a", "b"], 100_000) == pytest.approx(0.1 * 1000 / 100_000)
    assert policy.exploration_probability(targeting, ["a", "b"], 500) == pytest.approx(0.1)
    unbudgeted = _targeting(settings, exploration_share=0.1)
    assert policy.exploration_probability(unbudgeted, ["a", "b"], 100_000) == pytest.approx(0.1)
    counts = pd.Series(np.arange(1, 2001))
    selected = policy.within_budget(pd.Series(True, index=counts.index), counts, counts * 0.0, targeting)
    assert int(selected.sum()) == 900, "the ranking keeps the budget less the explore share"


def test_a_resting_customer_is_sent_nothing_for_sure(settings):
    """Listed within the contact window: neither selected (rank_and_select) nor explored, none for sure."""
    targeting = _targeting(settings, holdout_share=0.1)
    frame = _frame(2000, seed=7)
    frame["resting"] = np.arange(len(frame)) % 2 == 0
    frame["selected"] &= ~frame["resting"]
    record = policy.assign(frame.assign(holdout=False), targeting, "control", SPLIT, date(2026, 3, 1), 0.2)
    rested = record[frame["resting"]]
    assert (rested["assignment"] == policy.NONE).all() and rested["assigned_arm"].isna().all()
    assert (rested["propensity"] == 1.0).all() and (rested["inclusion_probability"] == 0.0).all()
    awake = record[~frame["resting"]]
    assert (awake["assignment"] == policy.EXPLORE).mean() == pytest.approx(0.2, abs=0.03)


def test_the_route_probability_is_the_chance_of_the_route_and_arm_alone(settings):
    """Explore rows carry p q_b(x), holdout (1 - p) h, target (1 - p)(1 - h), none (1 - p)(1 - s(x))."""
    targeting = _targeting(settings, holdout_share=0.1)
    frame = _frame(400, seed=5)
    frame["holdout"] = frame["selected"] & (policy.holdout_draw(frame["customer_id"], date(2026, 3, 2)) < 0.1)
    record = policy.assign(frame, targeting, "control", SPLIT, date(2026, 3, 2), 0.2)
    p, h = 0.2, 0.1
    route = record["assignment"].to_numpy()
    expected = np.select(
        [route == policy.EXPLORE, route == policy.HOLDOUT, route == policy.TARGET],
        [p * record["assigned_arm"].map(SPLIT).to_numpy(float), (1 - p) * h, (1 - p) * (1 - h)],
        1 - p,
    )
    assert set(route) == {policy.EXPLORE, policy.HOLDOUT, policy.TARGET, policy.NONE}
    assert np.allclose(record["route_probability"], expected)
