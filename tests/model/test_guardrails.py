"""The demo's unsubscribe guardrail through the whole nightly, checked against the generator's truth.

subject_3 wins clicks for gmail.com customers and raises their unsubscribes by 4 points from
age 45 (jobs.demo.generate); conf/base declares the unsubscribe outcome (value -5) with a guardrail
of 0.01 per customer and 0.005 per send. The session's nightly run (conftest) is the guarded
policy; the same champion's predictions through the policy without the guardrail are the
comparison. And today's single-outcome configuration must give the audience it gave before
outcomes existed (tests/single_outcome.py).
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import single_outcome

from conftest import RUN_DATE
from jobs.data.lake import partition_dir
from jobs.model import gate, policy
from jobs.model.registry import CHAMPION, alias_version
from jobs.model.tracking import use_tracking
from jobs.names import p_column
from jobs.settings import report_dir


@pytest.fixture(scope="module")
def population(settings, nightly):
    """Tonight's scoring set with the generator's truth and the segment the guardrail is about."""
    features = pd.read_parquet(partition_dir(settings, "features/scoring", RUN_DATE))
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet")
    frame = features.merge(truth, on="customer_id")
    frame["harmed"] = (frame["email_domain"] == "gmail.com") & (frame["age"] >= 45)
    return frame


def _audience(settings) -> pd.DataFrame:
    return pd.read_parquet(partition_dir(settings, "audience", RUN_DATE))


def test_the_guardrail_outcome_is_learned_and_carried_by_the_audience(settings, nightly):
    audience = _audience(settings)
    for column in ("p_subject_3__unsubscribe", "uplift_subject_3__unsubscribe", "uplift_high_subject_3__unsubscribe"):
        assert column in audience.columns
    assert audience["policy"].iloc[0].startswith("model:"), nightly["gate"]["reasons"]
    assert "guardrails" in nightly["score"]


def test_without_the_guardrail_the_harmed_segment_gets_subject_3_and_with_it_it_does_not(settings, nightly, population):
    guardrail = settings.targeting.guardrails["unsubscribe"]
    use_tracking(settings)
    champion = alias_version(settings, CHAMPION)
    model = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model}/{champion.version}")
    predicted = pd.concat(
        [population[["customer_id"]].reset_index(drop=True), model.predict(population).reset_index(drop=True)], axis=1
    )
    unguarded = settings.targeting.model_copy(
        update={
            "outcomes": {
                name: o.model_copy(update={"guardrail": None}) for name, o in settings.targeting.outcomes.items()
            }
        }
    )
    free = policy.apply(predicted, unguarded, settings.experiment.arms, RUN_DATE).set_index("customer_id")
    audience = _audience(settings).set_index("customer_id")
    harmed = population.set_index("customer_id")["harmed"]
    # Among the harmed, those for whom subject_3 is truly the best net value (not loyal regulars, whom subject_2 wins).
    truth = population.set_index("customer_id")
    true_net = {
        arm: 10 * (truth[p_column(arm)] - truth["p_control"])
        - 5 * (truth[p_column(arm, "unsubscribe")] - truth[p_column("control", "unsubscribe")])
        - settings.targeting.cost_per_send[arm]
        for arm in settings.experiment.arms
    }
    best = pd.DataFrame(true_net).idxmax(axis=1)
    segment = harmed & (best == "subject_3")
    assert segment.sum() > 500
    without = (free.loc[segment[segment].index, "recommended_arm"] == "subject_3").mean()
    with_guardrail = (audience.loc[segment[segment].index, "recommended_arm"] == "subject_3").mean()
    print(f"harmed segment given subject_3: {without:.1%} without the guardrail, {with_guardrail:.1%} with it")
    assert without > 0.6, "a harm valued at -5 alone does not outweigh subject_3's clicks there"
    assert with_guardrail < 0.05

    sent = audience[audience["assignment"] == "target"]
    true_uplift = {
        arm: truth[p_column(arm, "unsubscribe")] - truth[p_column("control", "unsubscribe")]
        for arm in settings.experiment.arms
    }
    per_customer = pd.Series(
        [true_uplift[arm][cid] for cid, arm in sent["recommended_arm"].items()], index=sent.index, dtype=float
    )
    # The truth: the policy's unsubscribe increase per send, and the sends above the per-customer limit.
    above = (per_customer > guardrail.max_uplift).mean()
    print(f"true unsubscribe increase per send {per_customer.mean():.5f}, sends above the limit {above:.2%}")
    assert per_customer.mean() <= guardrail.max_increase_per_send
    assert above < 0.02


def test_the_gate_reports_every_policys_guardrail_effect_and_refuses_those_above_the_limit(settings, nightly):
    decision = json.loads((report_dir(settings, RUN_DATE) / "gate.json").read_text())
    assert decision["guardrails"] == {"unsubscribe": {"max_uplift": 0.01, "max_increase_per_send": 0.005}}
    table = decision["policy_values"]
    for name in ("challenger", "no one", "everyone gets subject_3"):
        effect = table[name]["guardrails"]["unsubscribe"]
        assert effect["low"] <= effect["increase_per_send"] <= effect["high"]
    # Everyone gets subject_3: truly 0.04 x the harmed share of the sends (a quarter), 0.01: twice the
    # limit. The estimate shows it; whether its interval clears 0.005 on this holdout (40k rows) is a
    # draw: 13 of 16 training seeds (the refusal itself: test_a_guardrail_refuses_a_constant_policy...).
    limit = settings.targeting.guardrails["unsubscribe"].max_increase_per_send
    subject_3 = table["everyone gets subject_3"]["guardrails"]["unsubscribe"]
    assert subject_3["increase_per_send"] > limit
    assert subject_3["above"] == (["max_increase_per_send"] if subject_3["low"] > limit else [])
    named = any("'everyone gets subject_3' is not an alternative" in r for r in decision["reasons"])
    assert named == bool(subject_3["above"])
    assert decision["best_constant"] == gate.alternatives(table, settings.experiment.arms)[0]
    assert table["challenger"]["guardrails"]["unsubscribe"]["above"] == []
    run = mlflow.MlflowClient().get_run(decision["run_id"])
    assert "guardrail.unsubscribe.challenger" in run.data.metrics
    assert "guardrail.unsubscribe.everyone_subject_3.low" in run.data.metrics


def test_a_guardrail_refuses_a_constant_policy_even_when_it_is_worth_the_most():
    def policy_values(value, low=-0.01):
        return {
            "value": value,
            "guardrails": {
                "unsubscribe": {
                    "increase_per_send": 0.01,
                    "low": low,
                    "high": 0.02,
                    "above": ["max_increase_per_send"] if low > 0.005 else [],
                }
            },
        }

    table = {
        "everyone gets a": policy_values(0.5, low=0.006),
        "everyone gets b": policy_values(0.3),
        "no one": policy_values(0.0),
    }
    best, refused = gate.alternatives(table, ["a", "b"])
    assert best == "everyone gets b"
    assert list(refused) == ["everyone gets a"] and "lies above max_increase_per_send" in refused["everyone gets a"]
    table["everyone gets b"] = policy_values(0.3, low=0.007)
    assert gate.alternatives(table, ["a", "b"])[0] == "no one"


def test_the_run_report_shows_the_guardrail(settings, nightly):
    report = json.loads((report_dir(settings, RUN_DATE) / "run_report.json").read_text())
    assert report["gate"]["guardrails"]["unsubscribe"]["max_uplift"] == 0.01
    assert report["audience_guardrails"]["unsubscribe"]["per_send"] <= 0.005


@pytest.mark.slow
def test_the_single_outcome_configuration_gives_the_same_audience_as_before(settings, spark, tmp_path):
    expected = json.loads(single_outcome.FIXTURE.read_text())
    assert single_outcome.run(settings, tmp_path) == expected
