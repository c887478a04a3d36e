"""One targeting policy: Spark scoring and pandas evaluation choose the same rows; value estimates are honest."""

import numpy as np
import pandas as pd
import pytest

from conftest import RUN_DATE
from jobs.model import evaluation, metrics, policy
from jobs.names import p_column, uplift_column, uplift_high_column

ARMS = ["subject_1", "subject_2", "subject_3"]


def _uplifts(n: int, seed: int) -> pd.DataFrame:
    """Primary uplifts, and the demo's unsubscribe outcome: its uplifts and upper bounds (guardrail)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"customer_id": [f"c{i:05d}" for i in range(n)]})
    for arm in ARMS:
        frame[uplift_column(arm)] = np.round(rng.normal(0.01, 0.02, n), 3)  # rounded: many ties
        frame[uplift_column(arm, "unsubscribe")] = np.round(rng.normal(0.008, 0.006, n), 3)
        frame[uplift_high_column(arm, "unsubscribe")] = frame[uplift_column(arm, "unsubscribe")] + 0.001
    return frame


@pytest.fixture
def primary(settings):
    """The settings with the primary outcome only (the demo's unsubscribe outcome left out)."""
    return settings.model_copy(update={"targeting": settings.targeting.model_copy(update={"outcomes": {}})})


@pytest.mark.parametrize(
    "budget, limit",
    [
        ({}, 0.002),  # tighter than the demo's limit, so that the campaign limit binds
        ({"max_sends": 400}, 0.002),
        ({"max_spend": 12.5}, 0.002),
        ({"max_sends": 300, "max_spend": 40.0}, 0.002),
        ({}, 0.03),  # a campaign limit that holds without a price: Spark needs no search
    ],
)
def test_spark_scoring_and_pandas_evaluation_choose_the_same_rows(spark, settings, budget, limit):
    from jobs.targeting.score import apply_policy

    unsubscribe = settings.targeting.outcomes["unsubscribe"]
    tight = unsubscribe.model_copy(
        update={"guardrail": unsubscribe.guardrail.model_copy(update={"max_increase_per_send": limit})}
    )
    targeting = settings.targeting.model_copy(
        update={"holdout_share": 0.1, "outcomes": {"unsubscribe": tight}, **budget}
    )
    s = settings.model_copy(update={"targeting": targeting})
    frame = _uplifts(3000, seed=len(budget) + int(limit * 1000))
    in_spark = apply_policy(spark.createDataFrame(frame), s, RUN_DATE).toPandas().set_index("customer_id")
    in_pandas = policy.apply(frame, targeting, ARMS, RUN_DATE).set_index("customer_id")
    columns = ["recommended_arm", "selected", "holdout", "rank", "expected_net_value", "send_cost"]
    columns.append("expected_uplift__unsubscribe")
    pd.testing.assert_frame_equal(in_spark.loc[in_pandas.index, columns], in_pandas[columns], check_dtype=False)
    assert 0 < in_pandas["holdout"].sum() < in_pandas["selected"].sum()
    # Both guardrails bind at the tight limit, and Spark's price search over the audience finds pandas' price.
    guardrail = targeting.guardrails["unsubscribe"]
    chosen = in_pandas[in_pandas["recommended_arm"] != "none"]
    assert chosen["expected_uplift__unsubscribe"].sum() <= guardrail.max_increase_per_send * len(chosen) + 1e-9
    price = policy.guardrail_prices(frame, targeting, ARMS)["unsubscribe"]
    assert price > 0 if limit == 0.002 else price == 0, "the campaign limit binds only at the tight limit"
    bounds = chosen.apply(lambda r: r[uplift_high_column(r["recommended_arm"], "unsubscribe")], axis=1)
    assert (bounds <= guardrail.max_uplift).all()
    assert (frame[[uplift_high_column(a, "unsubscribe") for a in ARMS]] > guardrail.max_uplift).any(axis=None)
    if budget:
        assert in_pandas["selected"].sum() < (in_pandas["recommended_arm"] != "none").sum(), "the budget binds"


def test_the_choices_excess_columns_sum_to_the_price_searchs_excess(settings):
    targeting = settings.targeting
    frame = _uplifts(2000, seed=7)
    limited = policy.limited_outcomes(targeting)
    assert limited == ["unsubscribe"] and policy.excess_columns(targeting) == ["excess__unsubscribe"]
    for price in (0.0, 3.0):
        chosen = policy.choose(frame, targeting, ARMS, RUN_DATE, {"unsubscribe": price}, excess=True)
        expected = policy.price_excess(frame, targeting, ARMS, "unsubscribe", np.array([price]), {})[0]
        assert chosen["excess__unsubscribe"].sum() == pytest.approx(expected)
        assert (chosen.loc[chosen["recommended_arm"] == "none", "excess__unsubscribe"] == 0).all()
    assert "excess__unsubscribe" not in policy.choose(frame, targeting, ARMS, RUN_DATE)


def test_the_policy_takes_the_best_net_value_and_respects_min_uplift(primary):
    targeting = primary.targeting.model_copy(
        update={
            "value_per_response": 10.0,
            "cost_per_send": {"subject_1": 0.05, "subject_2": 0.3, "subject_3": 0.05},
            "min_uplift": 0.005,
            "holdout_share": 0.0,
        }
    )
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "uplift_subject_1": [0.02, 0.04, 0.004, -0.01],
            "uplift_subject_2": [0.05, 0.05, 0.0, -0.01],  # more uplift, but a dearer send
            "uplift_subject_3": [0.0, 0.0, 0.0, -0.02],
        }
    )
    out = policy.apply(frame, targeting, ARMS, RUN_DATE).set_index("customer_id")
    # a: s1 0.15, s2 0.2 -> s2; b: s1 0.35, s2 0.2 -> s1; c: s1 net -0.01 -> none; d: all negative.
    assert out["recommended_arm"].to_dict() == {"a": "subject_2", "b": "subject_1", "c": "none", "d": "none"}
    assert out.loc["b", "rank"] == 1 and not out.loc[["c", "d"], "selected"].any()


def _unweighted(counts: pd.DataFrame) -> pd.DataFrame:
    """arm_counts' columns for sends of propensity 1 (a weight of 1 each)."""
    return counts.assign(
        weight=counts["rows"],
        weighted_responses=counts["responses"],
        weight_sq=counts["rows"],
        weighted_responses_sq=counts["responses"],
    )


def test_average_effects_weigh_an_own_audiences_targeted_sends_by_their_propensity():
    """An audience that sent the arm to 90% of the customers it helps and 10% of the others: the plain
    difference of rates confounds the effect with whom it chose; the propensities undo that."""
    rng = np.random.default_rng(4)
    n = 400_000
    helped = rng.random(n) < 0.5
    p_arm = np.where(helped, 0.9, 0.1)
    treated = rng.random(n) < p_arm
    base = np.where(helped, 0.4, 0.1)
    responded = rng.random(n) < base + 0.1 * (helped & treated)
    rows = pd.DataFrame(
        {
            "campaign_id": "uplift_20261030",
            "arm": np.where(treated, "subject_1", "control"),
            "label": responded.astype(int),
            "propensity": np.where(treated, p_arm, 1 - p_arm),
        }
    )
    effect = policy.average_effects(policy.arm_counts(rows, "label"), "control", ["subject_1"])["subject_1"]
    naive = rows.loc[treated, "label"].mean() - rows.loc[~treated, "label"].mean()
    assert naive > 0.25, "the plain difference mostly measures whom the audience chose"
    assert effect["low"] < 0.05 < effect["high"], effect  # the true average effect: 0.1 on half of them
    assert effect["high"] - effect["low"] < 0.02


def test_average_effects_are_stratified_by_campaign():
    # Campaign A: 50/50, +10 points; campaign B: 90% treated, a higher base rate, +10 points.
    counts = pd.DataFrame(
        [
            ("A", "control", 1000, 100),
            ("A", "subject_1", 1000, 200),
            ("B", "control", 100, 40),
            ("B", "subject_1", 900, 450),
        ],
        columns=["campaign_id", "arm", "rows", "responses"],
    )
    effects = policy.average_effects(_unweighted(counts), "control", ["subject_1"])
    assert effects["subject_1"]["ate"] == pytest.approx(0.10)
    pooled = 650 / 1900 - 140 / 1100
    assert pooled > 0.2, "the naive pooled difference would be twice the effect"
    assert effects["subject_1"]["low"] < 0.10 < effects["subject_1"]["high"]


def test_a_rare_outcome_over_many_small_campaigns_keeps_its_interval():
    # The same rows (0.4% vs 0.4%) delivered as one campaign or as 30 daily ones: the interval is
    # the one the total rows give, not one inflated by a pseudo-success in every small campaign.
    def campaigns(k):  # 3,000 rows and 12 responses per group, spread over k campaigns
        return _unweighted(
            pd.DataFrame(
                [
                    (f"c{i}", arm, 3000 // k, int(i < 12) if k > 1 else 12)
                    for i in range(k)
                    for arm in ("control", "subject_1")
                ],
                columns=["campaign_id", "arm", "rows", "responses"],
            )
        )

    one, daily = (policy.average_effects(campaigns(k), "control", ["subject_1"])["subject_1"] for k in (1, 30))
    assert one["ate"] == daily["ate"] == 0
    assert daily["high"] == pytest.approx(one["high"], rel=0.05)
    assert daily["high"] < 0.01, "a zero effect on 3,000 rows per group is bounded well below 1 point"
    empty = policy.average_effects(
        campaigns(30).assign(responses=0, weighted_responses=0, weighted_responses_sq=0), "control", ["subject_1"]
    )["subject_1"]
    assert empty["high"] > 0, "no responses at all still leaves an interval"


def test_the_constant_policy_needs_a_lower_bound_above_zero(primary):
    targeting = primary.targeting  # value 10, cost 0.05: an arm pays from an effect of 0.005
    effects = {
        "subject_1": {"ate": 0.02, "low": 0.012, "high": 0.028, "rows": 9000},
        "subject_2": {"ate": 0.03, "low": -0.001, "high": 0.061, "rows": 900},  # bigger, unsure
        "subject_3": {"ate": 0.0, "low": -0.01, "high": 0.01, "rows": 9000},
    }
    arm, reasons = policy.best_constant(effects, targeting)
    assert (
        arm == "subject_1" and reasons[-1] == "chosen: constant:subject_1 (its lower bound is the highest above zero)"
    )
    flat = {a: {"ate": 0.004, "low": -0.002, "high": 0.01, "rows": 9000} for a in ARMS}
    assert policy.best_constant(flat, targeting)[0] == "none"


def _randomized(n: int, seed: int):
    """A randomized three-arm experiment with known outcome probabilities per customer."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    truth = {"control": 0.05 + 0.05 * x, "a": 0.05 + 0.05 * x + 0.10 * (x > 0.5), "b": 0.05 + 0.05 * x + 0.02}
    arm = rng.choice(["control", "a", "b"], n, p=[0.2, 0.4, 0.4])
    y = rng.random(n) < np.choose(pd.Categorical(arm, categories=["control", "a", "b"]).codes, list(truth.values()))
    frame = pd.DataFrame({"arm": arm, "label": y.astype(int), "campaign_id": "c", "customer_id": np.arange(n)})
    frame["propensity"], frame["inclusion_probability"] = frame["arm"].map({"control": 0.2, "a": 0.4, "b": 0.4}), 1.0
    for name, p in truth.items():  # outcome models: the truth blurred, as a fitted model would be
        frame[p_column(name)] = np.clip(p + rng.normal(0, 0.02, n), 0.001, 0.999)
    return frame, truth, x


def _randomized_policy(primary):
    """_randomized's experiment, and a targeting of value 10 a response and 0.1 a send."""
    from jobs.settings import Experiment

    exp = Experiment(
        control="control",
        arms=["a", "b"],
        expected_split={"control": 0.2, "a": 0.4, "b": 0.4},
        attribution_window_days=7,
        qualifying_response_types=["click"],
        srm_p_value_min=0.001,
    )
    return exp, primary.targeting.model_copy(update={"value_per_response": 10.0, "cost_per_send": {"a": 0.1, "b": 0.1}})


def test_aipw_and_ipw_recover_a_known_policy_value(primary):
    exp, targeting = _randomized_policy(primary)
    frame, truth, x = _randomized(40_000, seed=5)
    target = np.where(x > 0.5, "a", "b")  # the best arm for everyone
    assignments = {"model": target, "everyone gets b": np.full(len(x), "b"), "no one": np.full(len(x), "control")}
    true_value = {
        "model": np.mean(10 * np.where(x > 0.5, 0.10, 0.02) - 0.1),
        "everyone gets b": 10 * 0.02 - 0.1,
        "no one": 0.0,
    }
    table = evaluation.value_table(
        assignments, frame, exp, targeting, pairs={"model - b": ("model", "everyone gets b")}, rounds=200, seed=1
    )
    for name, v in table["policies"].items():
        assert v["low"] <= true_value[name] <= v["high"], (name, v, true_value[name])
        assert v["ipw_low"] <= true_value[name] <= v["ipw_high"], (name, v, true_value[name])
    assert table["policies"]["no one"]["value"] == 0.0
    diff = table["differences"]["model - b"]
    assert diff["low"] > 0, "the paired difference is resolved even where the two values' intervals overlap"
    width = lambda v: v["high"] - v["low"]  # noqa: E731
    assert width(table["policies"]["model"]) < width(
        {"low": table["policies"]["model"]["ipw_low"], "high": table["policies"]["model"]["ipw_high"]}
    )

    curve = evaluation.budget_curve(
        target, np.where(x > 0.5, 1.0, 0.2), frame, exp, targeting, audience_rows=100_000, rounds=50, seed=1
    )
    assert curve["sends"].iloc[0] == 0 and curve["sends"].iloc[-1] == 100_000 and curve["sends"].is_monotonic_increasing
    assert curve["net_value"].iloc[-1] == pytest.approx(table["policies"]["model"]["value"] * 100_000, rel=1e-9)
    half = curve.iloc[(curve["sends"] - 50_000).abs().argmin()]
    assert half["net_value"] == pytest.approx(50_000 * (10 * 0.10 - 0.1), rel=0.15), "the best half first"

    by_arm = evaluation.arm_values(target, frame, exp, targeting, audience_rows=100_000, rounds=200, seed=1)
    total = sum(v["net_value"] for v in by_arm.values())
    assert total == pytest.approx(table["policies"]["model"]["value"] * 100_000, rel=1e-9), "arms add up to the policy"
    assert by_arm["a"]["sends"] == pytest.approx(50_000, rel=0.03) and by_arm["b"]["sends"] == pytest.approx(
        50_000, rel=0.03
    )
    for arm, effect in {"a": 0.10, "b": 0.02}.items():  # the true values of each arm's half
        v = by_arm[arm]
        assert v["net_value_low"] <= v["sends"] * (10 * effect - 0.1) <= v["net_value_high"], (arm, v)
        assert v["incremental_responses_low"] <= v["sends"] * effect <= v["incremental_responses_high"], (arm, v)


def test_a_customer_sent_on_several_nights_counts_once_in_every_interval(primary):
    """The same customers' rows four times over (four nights of the same sends) hold no more
    evidence than one night: every interval (policy values, their difference, the budget curve,
    the per-arm figures, the Qini) stays as wide, where a bootstrap of rows would halve it."""
    exp, targeting = _randomized_policy(primary)
    once, _, x = _randomized(6000, seed=12)
    repeated = pd.concat([once] * 4, ignore_index=True)
    width = {}
    for name, frame, xs in (("once", once, x), ("repeated", repeated, np.tile(x, 4))):
        target = np.where(xs > 0.5, "a", "b")
        assignments = {"model": target, "b": np.full(len(xs), "b")}
        table = evaluation.value_table(
            assignments, frame, exp, targeting, pairs={"d": ("model", "b")}, rounds=300, seed=3
        )
        curve = evaluation.budget_curve(target, xs, frame, exp, targeting, audience_rows=6000, rounds=300, seed=3)
        by_arm = evaluation.arm_values(target, frame, exp, targeting, audience_rows=6000, rounds=300, seed=3)
        rows = frame["arm"].isin(["a", "control"]).to_numpy()
        qini = metrics.qini_interval(
            frame["label"].to_numpy()[rows],
            xs[rows],
            (frame["arm"].to_numpy()[rows] == "a").astype(int),
            rounds=300,
            seed=3,
            groups=pd.factorize(frame["customer_id"][rows])[0],
        )
        width[name] = np.array(
            [
                table["policies"]["model"]["high"] - table["policies"]["model"]["low"],
                table["differences"]["d"]["high"] - table["differences"]["d"]["low"],
                curve["net_value_high"].iloc[-1] - curve["net_value_low"].iloc[-1],
                by_arm["a"]["net_value_high"] - by_arm["a"]["net_value_low"],
                qini[1] - qini[0],
            ]
        )
    ratio = width["repeated"] / width["once"]
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio


def test_the_bootstraps_are_their_per_round_definitions(primary, monkeypatch):
    """The batched bootstrap means, and the budget curve's cumulative sums at its points, are what
    one resample per round gives: the same draws, the same numbers (to rounding)."""
    rng = np.random.default_rng(4)
    n, rounds, seed = 1001, 23, 9
    columns = rng.normal(size=(n, 3))
    draws = np.random.default_rng(seed)
    expected = np.stack([np.bincount(draws.integers(0, n, n), minlength=n) @ columns / n for _ in range(rounds)])
    monkeypatch.setattr(evaluation, "BOOTSTRAP_BATCH_BYTES", 8 * n * 5)  # batches of 5 rounds, the last of 3
    one_each = np.arange(n)  # a row per customer: the plain row bootstrap
    assert np.allclose(evaluation._bootstrap_means(columns, rounds, seed, one_each), expected, rtol=1e-12, atol=0)
    # Customers of 1 to 5 rows: a round draws as many customers as there are, with replacement, and
    # averages the rows of those drawn (each as often as its customer was drawn).
    groups = rng.integers(0, 300, n)
    groups = np.unique(groups, return_inverse=True)[1]
    g, draws = groups.max() + 1, np.random.default_rng(seed)
    weights = [np.bincount(draws.integers(0, g, g), minlength=g)[groups] for _ in range(rounds)]
    expected = np.stack([w @ columns / w.sum() for w in weights])
    assert np.allclose(evaluation._bootstrap_means(columns, rounds, seed, groups), expected, rtol=1e-12, atol=0)

    exp, targeting = _randomized_policy(primary)
    frame, _, x = _randomized(3000, seed=8)
    assignment = np.where(x > 0.7, "a", np.where(x > 0.3, "b", "control"))
    curve = evaluation.budget_curve(assignment, x, frame, exp, targeting, audience_rows=3000, rounds=rounds, seed=seed)
    value, _ = evaluation._value_and_responses(assignment, frame, exp, targeting)
    sent = np.flatnonzero(assignment != "control")
    order = sent[np.argsort(-x[sent], kind="mergesort")]
    ks = np.unique(np.linspace(0, len(order), 21).round().astype(int))
    draws = np.random.default_rng(seed)
    boot = []
    for _ in range(rounds):
        weight = np.bincount(draws.integers(0, len(frame), len(frame)), minlength=len(frame))[order]
        boot.append(np.concatenate([[0.0], np.cumsum(weight * value[order])])[ks])
    low, high = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    assert np.allclose(curve["net_value_low"], low, rtol=1e-9) and np.allclose(curve["net_value_high"], high, rtol=1e-9)
    assert np.allclose(curve["net_value"], np.concatenate([[0.0], np.cumsum(value[order])])[ks], rtol=1e-9)

    no_one = evaluation.budget_curve(
        np.full(len(frame), "control"), x, frame, exp, targeting, audience_rows=3000, rounds=5, seed=seed
    )
    assert no_one[["sends", "net_value", "net_value_low", "net_value_high"]].to_numpy().tolist() == [[0, 0, 0, 0]]


def test_the_pandas_ranking_is_by_net_value_then_customer_id_and_keeps_the_rows_in_place(primary):
    # Repeated and integer ids, a shuffled index, rounded uplifts (ties): rank follows a sort by
    # (net value descending, customer_id), the rows stay in index order, and one Customers serves every call.
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"customer_id": rng.integers(0, 300, 1200)}, index=rng.permutation(1200))
    for arm in ARMS:
        frame[uplift_column(arm)] = np.round(rng.normal(0.01, 0.02, 1200), 2)
    targeting = primary.targeting.model_copy(update={"max_sends": 400, "holdout_share": 0.1})
    out = policy.apply(frame, targeting, ARMS, RUN_DATE)
    assert list(out.index) == sorted(frame.index)
    in_delivered_order = out.loc[frame.index]  # full ties keep the delivered order
    expected = in_delivered_order.sort_values(
        ["expected_net_value", "customer_id"], ascending=[False, True], kind="mergesort"
    )
    assert (expected["rank"].to_numpy() == np.arange(1, 1201)).all()
    assert expected["selected"].to_numpy()[:400].sum() == out["selected"].sum()
    shared = policy.Customers.of(frame["customer_id"], RUN_DATE)
    pd.testing.assert_frame_equal(policy.apply(frame, targeting, ARMS, RUN_DATE, shared), out)
    with pytest.raises(ValueError, match="customers describe 1200 rows"):
        policy.apply(frame.head(10), targeting, ARMS, RUN_DATE, shared)
