"""Learning from the pipeline's own sends, on the demo generator's truth, over several seeds.

Each seed (jobs.demo.simulate's in-memory rounds): a model fitted on a randomized campaign chooses an
audience (jobs.model.policy.apply), which is sent for a few nights as jobs.model.policy.assign records it
(target, holdout, explore); responses come from the truth. Then:
- a model fitted on those own sends ranks customers about as well as one fitted on as many
  randomized sends;
- the average effects and the gate's value of the deployed policy, weighed by the recorded
  propensities, cover the truth, while the naive reading (the sends taken as a randomized campaign)
  misses it by far more: where the correction matters.
"""

from datetime import date

import numpy as np
import pandas as pd
import pytest

from jobs.demo.simulate import (
    demo_customers,
    in_memory,
    own_sends,
    randomized_sends,
    ranking_gain,
    true_value,
    uplifts_of,
)
from jobs.model import evaluation, policy
from jobs.model.train import fit_model
from jobs.names import p_column

pytestmark = pytest.mark.slow  # the loop over seeds

SEEDS = range(10)
CUSTOMERS, RANDOMIZED_SENDS, NIGHTS = 20_000, 40_000, 4
NIGHT = date(2026, 10, 30)


@pytest.fixture(scope="module")
def seeds(settings):
    local = in_memory(settings, exploration_share=0.1)
    runs = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        features, truth = demo_customers(rng, CUSTOMERS, NIGHT)
        first = fit_model(randomized_sends(features, truth, RANDOMIZED_SENDS, local, rng), local)
        chosen = policy.apply(uplifts_of(first, features), local.targeting, local.experiment.arms, NIGHT)
        own = own_sends(chosen, features, truth, local, NIGHT, NIGHTS, rng)
        learned = uplifts_of(fit_model(own, local), features)
        randomized = uplifts_of(fit_model(randomized_sends(features, truth, len(own), local, rng), local), features)
        runs.append(
            {"truth": truth, "first": first, "chosen": chosen, "own": own, "learned": learned, "randomized": randomized}
        )
    return local, runs


def test_own_sends_teach_the_ranking_about_as_well_as_randomized_ones(seeds):
    local, runs = seeds
    arms = local.experiment.arms
    ratios = [
        ranking_gain(r["learned"], r["truth"], arms) / ranking_gain(r["randomized"], r["truth"], arms) for r in runs
    ]
    print("gain ratio own / randomized per seed:", [round(r, 3) for r in ratios])
    assert np.mean(ratios) >= 0.8


def _naive(own: pd.DataFrame) -> pd.DataFrame:
    """The own sends read as if they were a randomized campaign of the demo's split."""
    return own.assign(propensity=0.25, inclusion_probability=1.0)


def test_the_recorded_propensities_unbias_the_average_effects(seeds):
    local, runs = seeds
    arms, corrected_errors, naive_errors, covered = local.experiment.arms, [], [], 0
    for run in runs:
        truth = run["truth"]
        effects = policy.average_effects(policy.arm_counts(run["own"], "label"), "control", arms)
        naive = policy.average_effects(policy.arm_counts(_naive(run["own"]), "label"), "control", arms)
        for arm in arms:
            true_ate = float((truth[p_column(arm)] - truth["p_control"]).mean())
            covered += effects[arm]["low"] <= true_ate <= effects[arm]["high"]
            corrected_errors.append(effects[arm]["ate"] - true_ate)
            naive_errors.append(naive[arm]["ate"] - true_ate)
    cases = len(runs) * len(arms)
    print(
        f"ATE: corrected covers {covered}/{cases}, mean |error| corrected "
        f"{np.mean(np.abs(corrected_errors)):.4f} naive {np.mean(np.abs(naive_errors)):.4f}"
    )
    assert covered >= 0.8 * cases
    assert np.mean(np.abs(naive_errors)) > 3 * np.mean(np.abs(corrected_errors))


def test_the_recorded_propensities_unbias_the_gates_value_of_the_deployed_policy(seeds):
    local, runs = seeds
    corrected_errors, naive_errors, covered = [], [], 0
    for run in runs:
        own = run["own"]
        truth_value = true_value(run["chosen"].assign(resting=False), run["truth"], local)
        # The outcome models are the first model's: fitted on the randomized campaign, never on these rows.
        holdout = pd.concat([own, run["first"].predict_proba(own).reset_index(drop=True)], axis=1)
        deployed = np.where(holdout["selected"], holdout["recommended_arm"], "control")
        estimates = {}
        for name, rows in (("corrected", holdout), ("naive", _naive(holdout))):
            table = evaluation.value_table(
                {"deployed": deployed, "no one": np.full(len(rows), "control")},
                rows,
                local.experiment,
                local.targeting,
                pairs={},
                rounds=100,
                seed=1,
            )
            estimates[name] = table["policies"]["deployed"]
        covered += estimates["corrected"]["low"] <= truth_value <= estimates["corrected"]["high"]
        corrected_errors.append(estimates["corrected"]["value"] - truth_value)
        naive_errors.append(estimates["naive"]["value"] - truth_value)
    corrected, naive = np.array(corrected_errors), np.array(naive_errors)
    rmse = {"corrected": np.sqrt(np.mean(corrected**2)), "naive": np.sqrt(np.mean(naive**2))}
    corrected_se = np.std(corrected, ddof=1) / np.sqrt(len(runs))
    print(
        f"value: corrected covers {covered}/{len(runs)}, mean error corrected {corrected.mean():.4f} "
        f"(se {corrected_se:.4f}) naive {naive.mean():.4f}; rmse corrected {rmse['corrected']:.4f} "
        f"naive {rmse['naive']:.4f}"
    )
    assert covered >= 0.8 * len(runs)
    # The weighted errors average out over the seeds; the naive reading (the sent over-represent the
    # customers the policy targets, each weighed as one in four) misses the true value by far more.
    assert abs(corrected.mean()) < 2 * corrected_se
    assert rmse["naive"] > 2 * rmse["corrected"]
