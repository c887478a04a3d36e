"""Learning from the pipeline's own sends, on the demo generator's truth, over several seeds.

Each seed: a model fitted on a randomized campaign chooses an audience (jobs.policy.apply), which is
sent for a few nights as jobs.policy.assign records it (target, holdout, explore); responses come from
the truth. Then:
- a model fitted on those own sends ranks customers about as well as one fitted on as many
  randomized sends;
- the average effects and the gate's value of the deployed policy, weighed by the recorded
  propensities, cover the truth, while the naive reading (the sends taken as a randomized campaign)
  is biased: where the correction matters.
"""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from jobs import evaluation, policy
from jobs.features import FeatureSpec
from jobs.generate import _users, true_probabilities
from jobs.settings import Experiment
from jobs.train import fit_t_learner

ARMS = ["subject_1", "subject_2", "subject_3"]
ALL = ["control", *ARMS]
SEEDS = range(10)
CUSTOMERS, RANDOMIZED_SENDS, NIGHTS = 20_000, 40_000, 4
NIGHT = date(2026, 10, 30)
SPEC = FeatureSpec(
    attributes={
        "age": {"kind": "numeric"},
        "tenure_days": {"kind": "numeric"},
        "gender": {"kind": "categorical"},
        "customer_type": {"kind": "categorical"},
        "email_domain": {"kind": "categorical"},
    }
)


def _local(settings):
    exp = Experiment(
        control="control",
        arms=ARMS,
        expected_split=dict.fromkeys(ALL, 0.25),
        attribution_window_days=7,
        qualifying_response_types=["click"],
        srm_p_value_min=0.001,
    )
    targeting = settings.targeting.model_copy(update={"outcomes": {}, "exploration_share": 0.1})
    return settings.model_copy(update={"experiment": exp, "features": SPEC, "targeting": targeting})


def _customers(rng) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = _users(rng, CUSTOMERS, NIGHT, 30)
    truth = true_probabilities(users, NIGHT)
    features = pd.DataFrame(
        {
            "customer_id": users["customer_id"],
            "age": users["age"].astype(float),
            "tenure_days": (pd.Timestamp(NIGHT) - pd.to_datetime(users["signup_date"])).dt.days.astype(float),
            "gender": users["gender"],
            "customer_type": users["customer_type"],
            "email_domain": users["email"].str.split("@").str[1],
        }
    )
    return features, truth


def _sends(features, truth, rows: np.ndarray, arms: np.ndarray, rng, **record) -> pd.DataFrame:
    """Sends of arms to the customers at rows, with responses drawn from the truth."""
    p = truth[[f"p_{a}" for a in ALL]].to_numpy()[rows, pd.Categorical(arms, categories=ALL).codes]
    out = features.iloc[rows].reset_index(drop=True).assign(arm=arms, label=(rng.random(len(rows)) < p).astype(int))
    return out.assign(**record)


def _randomized(features, truth, n: int, rng) -> pd.DataFrame:
    rows = rng.integers(0, len(features), n)
    arms = rng.choice(np.array(ALL), n)
    return _sends(
        features, truth, rows, arms, rng, campaign_id="randomized", propensity=0.25, inclusion_probability=1.0
    )


def _uplifts(model, features) -> pd.DataFrame:
    return pd.concat([features[["customer_id"]], model.with_uplifts(model.predict_proba(features))], axis=1)


def _gain(uplifts: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Summed over arms: the true uplift of the top 30% by predicted uplift, above everyone's."""
    total = 0.0
    for arm in ARMS:
        tau = (truth[f"p_{arm}"] - truth["p_control"]).to_numpy()
        top = np.argsort(-uplifts[f"uplift_{arm}"].to_numpy(), kind="stable")[: int(0.3 * len(tau))]
        total += tau[top].mean() - tau.mean()
    return total


@pytest.fixture(scope="module")
def seeds(settings):
    local = _local(settings)
    exp, targeting = local.experiment, local.targeting
    out = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        features, truth = _customers(rng)
        first = fit_t_learner(_randomized(features, truth, RANDOMIZED_SENDS, rng), local)
        scored = _uplifts(first, features)
        chosen = policy.apply(scored, targeting, ARMS, NIGHT)
        own = []
        for k in range(NIGHTS):  # the same audience, sent on several nights with fresh draws
            night = NIGHT + timedelta(days=k)
            chosen["holdout"] = policy.is_holdout(
                chosen["selected"], policy.holdout_draw(chosen["customer_id"], night), targeting
            )
            record = policy.assign(
                chosen, targeting, exp.control, exp.expected_split, night, targeting.exploration_share
            )
            rows = np.flatnonzero(record["assigned_arm"].notna().to_numpy())
            own.append(
                _sends(
                    features,
                    truth,
                    rows,
                    record["assigned_arm"].to_numpy()[rows],
                    rng,
                    campaign_id=f"uplift_{night:%Y%m%d}",
                    assignment=record["assignment"].to_numpy()[rows],
                    propensity=record["propensity"].to_numpy()[rows],
                    inclusion_probability=record["inclusion_probability"].to_numpy()[rows],
                    recommended_arm=chosen["recommended_arm"].to_numpy()[rows],
                    selected=chosen["selected"].to_numpy()[rows],
                )
            )
        own = pd.concat(own, ignore_index=True)
        learned = _uplifts(fit_t_learner(own, local), features)
        randomized = _uplifts(fit_t_learner(_randomized(features, truth, len(own), rng), local), features)
        out.append(
            {
                "features": features,
                "truth": truth,
                "first": first,
                "chosen": chosen,
                "own": own,
                "learned": learned,
                "randomized": randomized,
            }
        )
    return local, out


def test_own_sends_teach_the_ranking_about_as_well_as_randomized_ones(seeds):
    _, runs = seeds
    ratios = [_gain(run["learned"], run["truth"]) / _gain(run["randomized"], run["truth"]) for run in runs]
    print("gain ratio own / randomized per seed:", [round(r, 3) for r in ratios])
    assert np.mean(ratios) >= 0.8


def _naive(own: pd.DataFrame) -> pd.DataFrame:
    """The own sends read as if they were a randomized campaign of the demo's split."""
    return own.assign(propensity=0.25, inclusion_probability=1.0)


def test_the_recorded_propensities_unbias_the_average_effects(seeds):
    local, runs = seeds
    corrected_errors, naive_errors, covered = [], [], 0
    for run in runs:
        truth = run["truth"]
        effects = policy.average_effects(policy.arm_counts(run["own"], "label"), "control", ARMS)
        naive = policy.average_effects(policy.arm_counts(_naive(run["own"]), "label"), "control", ARMS)
        for arm in ARMS:
            true_ate = float((truth[f"p_{arm}"] - truth["p_control"]).mean())
            covered += effects[arm]["low"] <= true_ate <= effects[arm]["high"]
            corrected_errors.append(effects[arm]["ate"] - true_ate)
            naive_errors.append(naive[arm]["ate"] - true_ate)
    cases = len(runs) * len(ARMS)
    print(
        f"ATE: corrected covers {covered}/{cases}, mean |error| corrected "
        f"{np.mean(np.abs(corrected_errors)):.4f} naive {np.mean(np.abs(naive_errors)):.4f}"
    )
    assert covered >= 0.8 * cases
    assert np.mean(np.abs(naive_errors)) > 3 * np.mean(np.abs(corrected_errors))


def test_the_recorded_propensities_unbias_the_gates_value_of_the_deployed_policy(seeds):
    local, runs = seeds
    exp, targeting = local.experiment, local.targeting
    corrected_errors, naive_errors, covered = [], [], 0
    for run in runs:
        chosen, truth, own = run["chosen"], run["truth"], run["own"]
        deployed = np.where(chosen["selected"], chosen["recommended_arm"], "control")
        tau = {a: (truth[f"p_{a}"] - truth["p_control"]).to_numpy() for a in ARMS}
        net = np.zeros(len(chosen))
        for arm in ARMS:
            given = deployed == arm
            net[given] = targeting.value_per_response * tau[arm][given] - targeting.cost_per_send[arm]
        true_value = float(net.mean())
        # The outcome models are the first model's: fitted on the randomized campaign, never on these rows.
        holdout = pd.concat([own, run["first"].predict_proba(own).reset_index(drop=True)], axis=1)
        assignment = np.where(holdout["selected"], holdout["recommended_arm"], "control")
        estimates = {}
        for name, rows in (("corrected", holdout), ("naive", _naive(holdout))):
            table = evaluation.value_table(
                {"deployed": assignment, "no one": np.full(len(rows), "control")},
                rows,
                exp,
                targeting,
                pairs={},
                rounds=100,
                seed=1,
            )
            estimates[name] = table["policies"]["deployed"]
        covered += estimates["corrected"]["low"] <= true_value <= estimates["corrected"]["high"]
        corrected_errors.append(estimates["corrected"]["value"] - true_value)
        naive_errors.append(estimates["naive"]["value"] - true_value)
    print(
        f"value: corrected covers {covered}/{len(runs)}, errors corrected {np.round(corrected_errors, 4)} "
        f"naive {np.round(naive_errors, 4)}"
    )
    assert covered >= 0.8 * len(runs)
    # The naive reading is biased one way (the sent over-represent the customers the policy targets),
    # the weighted one's errors average out over the seeds.
    naive_bias, naive_se = np.mean(naive_errors), np.std(naive_errors, ddof=1) / np.sqrt(len(runs))
    print(f"value bias: naive {naive_bias:.4f} (se {naive_se:.4f}), corrected {np.mean(corrected_errors):.4f}")
    assert naive_bias > 3 * naive_se
    assert abs(naive_bias) > 3 * abs(np.mean(corrected_errors))
