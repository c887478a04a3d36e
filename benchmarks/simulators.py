"""Randomized multi-arm experiments with known true uplifts, for comparing learners (benchmarks.learners).

Each simulator is a function (seed, n) -> Simulated(rows, settings, uplifts):
- rows: n sends of a randomized experiment, one per customer, as the training set holds them
  (customer_id, campaign_id, arm, label, assignment "randomized", propensity = the arm's share in
  the campaign's split, inclusion_probability 1.0, and the features of settings.features);
- settings: the demo's settings (conf/base and conf/examples/demo.yml) with the simulator's
  experiment, features and targeting (primary outcome only, no exploration);
- uplifts: each row's true uplift of every treatment arm (uplift_<arm>: p_arm - p_control).

The three are unlike each other:
- `demo`: the demo generator's customers and truth (jobs.demo.generate), drawn as
  benchmarks.exploration draws them: three subject lines at 25% each, effects of 1 to 12 points on
  a 5-11% base, one arm harmful (-5 points) for customers 60 and over.
- `email`: the e-mail experiment of tests/email_experiment.py (its data-generating process
  reproduced here): two campaigns with their own splits (autumn_mail 20/40/40 on five sixths of
  the customers, retention_test 50/50 without mens_email), mens_email +10 points for a last
  purchase within 4 months (+1 otherwise), womens_email +15 for urban customers who spent more
  than 150 (0 otherwise), on a 6-10% base.
- `noisy_baseline`: a base response probability from 0.02 to 0.6 (sessions in the last 30 days,
  a gold tier), arm `small` worth 1 to 2 points (most for the least engaged), arm `history`
  whose effect shows only through the purchase history (+6 points for two or more purchases in
  the year and the last within 90 days, -1 point without a purchase in the year, +0.5 otherwise),
  and three features of pure noise.
"""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd

from jobs.demo.simulate import demo_customers, drawn_sends, in_memory
from jobs.features import FeatureSpec
from jobs.names import RANDOMIZED, p_column, uplift_column
from jobs.settings import Experiment, Settings, load_settings

NIGHT = date(2026, 10, 30)


class Simulated(NamedTuple):
    rows: pd.DataFrame
    settings: Settings
    uplifts: pd.DataFrame


def _settings(experiment: Experiment, features: FeatureSpec, value: float, costs: dict[str, float]) -> Settings:
    """The demo's settings with this experiment, features, value and costs; primary outcome only, no exploration."""
    base = load_settings(demo=True)
    targeting = base.targeting.model_copy(
        update={"outcomes": {}, "exploration_share": 0.0, "value_per_response": value, "cost_per_send": costs}
    )
    return base.model_copy(update={"experiment": experiment, "features": features, "targeting": targeting})


def _experiment(
    features: pd.DataFrame, truth: pd.DataFrame, settings: Settings, rng, campaigns: dict[str, float]
) -> Simulated:
    """One send per customer of features: each in a campaign drawn at the campaigns' shares, its arm
    drawn at that campaign's split (experiment.split_of), its label from the truth's p_<arm>."""
    exp = settings.experiment
    campaign = rng.choice(np.array(list(campaigns)), len(features), p=list(campaigns.values()))
    arms = np.empty(len(features), dtype=object)
    propensity = np.empty(len(features))
    for name in campaigns:
        mine = campaign == name
        split = exp.split_of(name)
        arms[mine] = rng.choice(np.array(list(split)), int(mine.sum()), p=list(split.values()))
        propensity[mine] = pd.Series(arms[mine]).map(split).to_numpy()
    rows = drawn_sends(
        features,
        truth,
        np.arange(len(features)),
        arms.astype(str),
        rng,
        campaign_id=campaign,
        assignment=RANDOMIZED,
        propensity=propensity,
        inclusion_probability=1.0,
    )
    control = truth[p_column(exp.control)].to_numpy()
    uplifts = pd.DataFrame({uplift_column(a): truth[p_column(a)].to_numpy() - control for a in exp.arms})
    return Simulated(rows, settings, uplifts)


def demo(seed: int, n: int) -> Simulated:
    """n sends of a randomized campaign on the demo generator's customers (jobs.demo.simulate's in-memory settings)."""
    settings = in_memory(load_settings(demo=True), 0.0)
    rng = np.random.default_rng(seed)
    features, truth = demo_customers(rng, n, NIGHT)
    return _experiment(features, truth, settings, rng, {RANDOMIZED: 1.0})


EMAIL_CAMPAIGNS = {"autumn_mail": 5 / 6, "retention_test": 1 / 6}  # 20,000 and 4,000 customers in the test's


def email(seed: int, n: int) -> Simulated:
    """n sends of the e-mail experiment (tests/email_experiment.py's customers, campaigns and visit
    probabilities; its overlay in README.md, visits the only outcome)."""
    rng = np.random.default_rng(seed)
    recency = rng.integers(1, 13, n).astype(float)
    spend = np.round(rng.lognormal(4.8, 0.6, n), 2)
    region = rng.choice(np.array(["Urban", "Suburban", "Rural"]), n, p=[0.4, 0.45, 0.15])
    features = pd.DataFrame(
        {
            "customer_id": [f"u{i:06d}" for i in range(n)],
            "recency_months": recency,
            "spend_to_date": spend,
            "channel": rng.choice(np.array(["Phone", "Web", "Multichannel"]), n, p=[0.45, 0.45, 0.1]),
            "region": region,
            "is_new": rng.integers(0, 2, n).astype(str),
            "days_as_customer": rng.integers(30, 2000, n).astype(float) + 1,  # first order before the snapshot day
        }
    )
    base = 0.06 + 0.04 * (recency <= 3)
    truth = pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "p_no_email": base,
            "p_mens_email": base + np.where(recency <= 4, 0.10, 0.01),
            "p_womens_email": base + np.where((region == "Urban") & (spend > 150), 0.15, 0.0),
        }
    )
    experiment = Experiment(
        control="no_email",
        arms=["mens_email", "womens_email"],
        expected_split={"no_email": 0.2, "mens_email": 0.4, "womens_email": 0.4},
        campaign_splits={"retention_test": {"no_email": 0.5, "womens_email": 0.5}},
        attribution_window_days=14,
        qualifying_response_types=["visit"],
        srm_p_value_min=0.001,
    )
    spec = FeatureSpec(
        eligibility="recency_months <= 10",
        attributes={
            "recency_months": {"kind": "numeric", "min": 1, "max": 12, "bins": [4, 7]},
            "spend_to_date": {"kind": "numeric", "min": 0},
            "channel": {"kind": "categorical", "max_levels": 10},
            "region": {"kind": "categorical", "max_levels": 10},
            "is_new": {"kind": "categorical", "max_levels": 2},
            "days_as_customer": {"kind": "numeric", "min": 0},
        },
    )
    settings = _settings(experiment, spec, 4.0, {"mens_email": 0.1, "womens_email": 0.1})
    return _experiment(features, truth, settings, rng, EMAIL_CAMPAIGNS)


def noisy_baseline(seed: int, n: int) -> Simulated:
    """n sends of a campaign where the base rate varies far more than the effects (see the module docstring)."""
    rng = np.random.default_rng(seed)
    sessions = np.minimum(rng.geometric(0.15, n) - 1, 40).astype(float)
    tier = rng.choice(np.array(["basic", "plus", "gold"]), n, p=[0.6, 0.3, 0.1])
    purchases = rng.poisson(1.2, n)
    # Days since the latest of the year's purchases (each uniform over the year: the minimum of k); 365 for none.
    first = 1 - (1 - rng.random(n)) ** (1 / np.maximum(purchases, 1))
    latest = np.where(purchases > 0, np.ceil(365 * first), 365.0)
    features = pd.DataFrame(
        {
            "customer_id": [f"N{i:07d}" for i in range(n)],
            "sessions_30d": sessions,
            "tier": tier,
            "purchases_12m": purchases.astype(float),
            "days_since_purchase": latest,
            "noise_1": rng.normal(0, 1, n),
            "noise_2": rng.uniform(0, 100, n),
            "noise_region": rng.choice(np.array(["north", "south", "east", "west", "centre"]), n),
        }
    )
    engaged = np.log1p(sessions) / np.log1p(40)  # 0 (no session) to 1 (40 or more)
    control = 0.02 + 0.48 * engaged**1.5 + 0.10 * (tier == "gold")
    history = np.where(
        (purchases >= 2) & (latest <= 90), 0.06, np.where(purchases == 0, -0.01, 0.005)
    )  # the effect's only drivers
    truth = pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "p_control": control,
            "p_small": control + 0.02 - 0.01 * engaged,
            "p_history": control + history,
        }
    )
    arms = ["control", "small", "history"]
    experiment = Experiment(
        control="control",
        arms=arms[1:],
        expected_split=dict.fromkeys(arms, 1 / 3),
        attribution_window_days=7,
        qualifying_response_types=["purchase"],
        srm_p_value_min=0.001,
    )
    numeric = ["sessions_30d", "purchases_12m", "days_since_purchase", "noise_1", "noise_2"]
    spec = FeatureSpec(
        attributes={
            **{name: {"kind": "numeric"} for name in numeric},
            "tier": {"kind": "categorical"},
            "noise_region": {"kind": "categorical"},
        }
    )
    settings = _settings(experiment, spec, 10.0, {"small": 0.15, "history": 0.2})
    return _experiment(features, truth, settings, rng, {RANDOMIZED: 1.0})


SIMULATORS = {"demo": demo, "email": email, "noisy_baseline": noisy_baseline}
