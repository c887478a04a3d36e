"""Offline value of targeting policies on the randomized holdout: doubly robust (AIPW) and IPW.

The estimand is the net value per customer of a policy pi, relative to sending nothing:

    V(pi) = E[ value_per_response * (Y(pi(x)) - Y(control)) - cost(pi(x)) ]

estimated on holdout rows (customer x_i, received arm A_i, outcome Y_i, and the propensity of A_i:
its randomized campaign's split share, or the probability its own audience recorded, jobs.model.policy.assign)
with per-row scores for every arm a:

    AIPW:  G_i(a) = mu_a(x_i) + 1[A_i = a] * (Y_i - mu_a(x_i)) / e_i(a)
    IPW:   G_i(a) = 1[A_i = a] * Y_i / e_i(a)

where mu_a are the T-learner's own outcome models (p_<arm>, never fitted on these rows) and e_i(a) =
propensity_i / inclusion_probability_i is the probability of a among the customers on the send list
(an own audience sends only some of its eligible customers: the targeted, the holdout, the explored).
Each row also stands for 1 / inclusion_probability_i eligible customers (row_weights, normalised to
a mean of 1; every row of a randomized campaign weighs 1), so every mean below is over the eligible
population the policy will be applied to, not over the customers an earlier audience chose to send.
A row's contribution is ``value * (G_i(pi_i) - G_i(control)) - cost(pi_i)`` (0 when pi_i is
control); V is their weighted mean. Intervals are percentile intervals of a paired bootstrap: every
round resamples the same rows for every policy, so differences between policies get their
own interval, narrower than the difference of two separate ones. A round resamples customers,
not rows (`customer_groups`): a customer sent on several nights has rows that share its
attributes and its habits, and counting them as independent would make every interval too narrow.

With further outcomes (`targeting.outcomes`) each has its own scores G_i^o(a) (its label, its
outcome models p_<arm>__o) and a row's contribution sums ``value_o * (G_i^o(pi_i) - G_i^o(control))``
over the outcomes. A guardrail outcome's effect of a policy is its increase per send:
``mean(G^o(pi) - G^o(control)) / share of rows sent``, with the same paired bootstrap.

A row whose outcome label has not matured (null) has no observation either: AIPW counts its
outcome model's prediction there, IPW nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jobs.model.metrics import resample
from jobs.names import label_column, p_column
from jobs.settings import Experiment, Targeting

LEVEL = 0.95


def row_weights(holdout: pd.DataFrame) -> np.ndarray:
    """Each row's weight for the population of eligible customers: 1 / inclusion_probability, scaled
    to a mean of 1 (exactly 1 on every row of randomized campaigns, whose sends are their population)."""
    w = 1.0 / holdout["inclusion_probability"].to_numpy(float)
    return w * (len(w) / w.sum()) if len(w) else w


def scores(holdout: pd.DataFrame, exp: Experiment, estimator: str, outcome: str | None = None) -> dict[str, np.ndarray]:
    """G_i(a) of outcome (None: the primary one) for every arm a (control included), AIPW or IPW."""
    y, received = holdout[label_column(outcome)].to_numpy(float), holdout["arm"].to_numpy()
    known = ~np.isnan(y)  # a further outcome's label is null where its window has not matured
    y = np.nan_to_num(y)
    # e_i(A_i): the received arm's probability among the rows on the send list (randomized: the split's share)
    e = holdout["propensity"].to_numpy(float) / holdout["inclusion_probability"].to_numpy(float)
    out = {}
    for arm in exp.all_arms:
        weighted = ((received == arm) & known) / e
        if estimator == "ipw":
            out[arm] = weighted * y
        else:
            mu = holdout[p_column(arm, outcome)].to_numpy(float)
            out[arm] = mu + weighted * (y - mu)
    return out


def all_scores(holdout: pd.DataFrame, exp: Experiment, targeting: Targeting, estimator: str) -> dict:
    """outcome (None: the primary one) -> scores()."""
    return {o: scores(holdout, exp, estimator, o) for o in [None, *targeting.outcomes]}


def increments(assignment: np.ndarray, g: dict[str, np.ndarray], exp: Experiment) -> np.ndarray:
    """Per row, G(assigned arm) - G(control) of one outcome's scores (0 where nothing is sent)."""
    out = np.zeros(len(assignment))
    for arm in exp.arms:
        np.subtract(g[arm], g[exp.control], out=out, where=assignment == arm)
    return out


def contributions(assignment: np.ndarray, g: dict, exp: Experiment, targeting: Targeting) -> np.ndarray:
    """Per-row net value of giving each row its assigned arm (control = nothing sent).

    g: all_scores (outcome -> arm -> G).
    """
    out = np.zeros(len(assignment))
    for outcome, value in targeting.values().items():
        out += value * increments(assignment, g[outcome], exp)
    for arm in exp.arms:
        out[assignment == arm] -= targeting.cost_per_send[arm]
    return out


# Resamples weighed against the columns in one matrix product, at most this many bytes of weights at a time.
BOOTSTRAP_BATCH_BYTES = 64 * 2**20


def customer_groups(frame: pd.DataFrame) -> np.ndarray:
    """Each row's customer as a code 0..G-1: the unit every bootstrap resamples."""
    return pd.factorize(frame["customer_id"])[0]


def _bootstrap_means(columns: np.ndarray, rounds: int, seed: int, groups: np.ndarray) -> np.ndarray:
    """rounds x columns: column means of `rounds` customer resamples (the same for every column).

    groups: each row's customer (customer_groups). A resample's mean is over its rows, sum(w c) /
    sum(w). The resamples are drawn one after another from one generator (the same draws whatever
    the batch) and weighed against the columns a batch at a time: one matrix product reads the
    columns once for the batch, where a product per resample read them every round.
    """
    rng, n = np.random.default_rng(seed), columns.shape[0]
    batch = max(1, min(rounds, BOOTSTRAP_BATCH_BYTES // (8 * max(n, 1))))
    weights, out = np.empty((batch, n)), np.empty((rounds, columns.shape[1]))
    for start in range(0, rounds, batch):
        size = min(batch, rounds - start)
        for row in weights[:size]:
            row[:] = resample(rng, groups)
        out[start : start + size] = weights[:size] @ columns / weights[:size].sum(axis=1, keepdims=True)
    return out


def _interval(samples: np.ndarray, axis=None):
    """The percentile interval at LEVEL (per column with axis=0)."""
    tail = (1 - LEVEL) / 2 * 100
    return np.percentile(samples, tail, axis=axis), np.percentile(samples, 100 - tail, axis=axis)


def value_table(
    assignments: dict[str, np.ndarray],
    holdout: pd.DataFrame,
    exp: Experiment,
    targeting: Targeting,
    *,
    pairs: dict[str, tuple[str, str]],
    rounds: int,
    seed: int,
) -> dict:
    """Value per customer of each policy (AIPW, with IPW alongside), and paired differences.

    assignments: policy name -> the arm (or control) each holdout row gets. pairs: name ->
    (policy, other policy) whose difference is reported.
    """
    names = list(assignments)
    # Every bootstrapped column side by side, so one set of resamples serves them all (each draw
    # of `rounds` resamples of n rows costs as much as the products it feeds).
    weight = row_weights(holdout)[:, None]
    blocks = [
        np.column_stack([contributions(assignments[n], g, exp, targeting) for n in names]) * weight
        for g in (all_scores(holdout, exp, targeting, estimator) for estimator in ("aipw", "ipw"))
    ]
    guardrails = _guardrail_columns(assignments, holdout, exp, targeting)
    if guardrails:
        blocks += [guardrails[0], *guardrails[1].values()]
    c = np.column_stack(blocks)
    means = np.split(c.mean(axis=0), len(blocks))
    # one block of k columns (one per policy) for each of AIPW, IPW and the guardrail columns
    boots = np.split(_bootstrap_means(c, rounds, seed, customer_groups(holdout)), len(blocks), axis=1)
    (point, ipw_point), (boot, ipw_boot) = means[:2], boots[:2]
    table = {}
    for i, name in enumerate(names):
        low, high = map(float, _interval(boot[:, i]))
        ipw_low, ipw_high = map(float, _interval(ipw_boot[:, i]))
        table[name] = {
            "value": float(point[i]),
            "low": low,
            "high": high,
            "ipw": float(ipw_point[i]),
            "ipw_low": ipw_low,
            "ipw_high": ipw_high,
            "sends_share": float((np.isin(assignments[name], exp.arms) * weight[:, 0]).mean()),
        }
    differences = {}
    for label, (a, b) in pairs.items():
        i, j = names.index(a), names.index(b)
        low, high = map(float, _interval(boot[:, i] - boot[:, j]))
        differences[label] = {"value": float(point[i] - point[j]), "low": low, "high": high}
    if guardrails:
        sent, increments_by_outcome = guardrails
        boot_of = dict(zip(["sent", *increments_by_outcome], boots[2:], strict=True))
        for name, effects in _guardrail_effects(names, sent, increments_by_outcome, boot_of, targeting).items():
            table[name]["guardrails"] = effects
    return {"policies": table, "differences": differences}


def _guardrail_columns(
    assignments: dict[str, np.ndarray], holdout: pd.DataFrame, exp: Experiment, targeting: Targeting
):
    """(sent: holdout rows x policies, 1 where the policy sends; guardrail outcome -> each row's AIPW
    increase of that outcome under each policy), or None without guardrails."""
    if not targeting.guardrails:
        return None
    names, weight = list(assignments), row_weights(holdout)[:, None]
    sent = np.column_stack([np.isin(assignments[n], exp.arms) for n in names]) * weight
    increments_by_outcome = {}
    for outcome in targeting.guardrails:
        g = scores(holdout, exp, "aipw", outcome)
        increments_by_outcome[outcome] = np.column_stack([increments(assignments[n], g, exp) for n in names]) * weight
    return sent, increments_by_outcome


def _guardrail_effects(
    names: list[str], sent: np.ndarray, increments_by_outcome: dict, boot_of: dict, targeting: Targeting
) -> dict[str, dict]:
    """policy -> guardrail outcome -> its increase per send (AIPW) with a 95% paired-bootstrap interval,
    and `above`: the limits its interval lies above. A policy that sends no one has an increase of 0.
    boot_of: "sent" and each outcome -> its columns' bootstrap means, all from the same resamples."""
    out, sent_boot = {name: {} for name in names}, boot_of["sent"]
    for outcome, d in increments_by_outcome.items():
        boot = boot_of[outcome]
        ratio = np.divide(boot, sent_boot, out=np.zeros_like(boot), where=sent_boot > 0)
        guardrail = targeting.guardrails[outcome]
        limits = {key: getattr(guardrail, key) for key in ("max_uplift", "max_increase_per_send")}
        for i, name in enumerate(names):
            share = sent[:, i].mean()
            point = float(d[:, i].mean() / share) if share > 0 else 0.0
            low, high = map(float, _interval(ratio[:, i])) if share > 0 else (0.0, 0.0)
            out[name][outcome] = {
                "increase_per_send": point,
                "low": low,
                "high": high,
                "above": [key for key, limit in limits.items() if limit is not None and low > limit],
            }
    return out


def _value_and_responses(assignment, holdout: pd.DataFrame, exp: Experiment, targeting: Targeting):
    """Per holdout row, the AIPW net value and incremental (primary) responses of giving it its assigned arm,
    weighed for the population (row_weights)."""
    g, weight = all_scores(holdout, exp, targeting, "aipw"), row_weights(holdout)
    return contributions(assignment, g, exp, targeting) * weight, increments(assignment, g[None], exp) * weight


def budget_curve(
    assignment: np.ndarray,
    priority: np.ndarray,
    holdout: pd.DataFrame,
    exp: Experiment,
    targeting: Targeting,
    *,
    audience_rows: int,
    rounds: int,
    seed: int,
    points: int = 20,
) -> pd.DataFrame:
    """Expected incremental responses and net value of the policy against its number of sends.

    Rows are sent in `priority` order (highest first; only rows the policy assigns an arm), the
    AIPW contributions summed; holdout totals are scaled to an audience of `audience_rows`.
    Columns: sends, incremental_responses(_low/_high), net_value(_low/_high).
    """
    value, responses = _value_and_responses(assignment, holdout, exp, targeting)
    sent = np.flatnonzero(np.isin(assignment, exp.arms))
    order = sent[np.argsort(-priority[sent], kind="mergesort")]
    n, scale = len(holdout), audience_rows / max(1, len(holdout))
    ks = np.unique(np.linspace(0, len(order), points + 1).round().astype(int))
    rng, groups = np.random.default_rng(seed), customer_groups(holdout)
    value, responses = value[order], responses[order]  # in send order, once for every round

    def at_ks(weighted: np.ndarray) -> np.ndarray:
        """The cumulative sums of weighted at ks, from the sums between consecutive ks."""
        between = np.add.reduceat(weighted, ks[:-1]) if len(ks) > 1 else np.empty(0)
        return np.concatenate([[0.0], np.cumsum(between)])

    boot_value, boot_resp = [], []
    for _ in range(rounds):
        drawn = resample(rng, groups)
        weight = drawn[order] * (n / max(1, drawn.sum()))  # totals of a resample of n rows
        boot_value.append(at_ks(weight * value))
        boot_resp.append(at_ks(weight * responses))
    sends = np.concatenate([[0.0], np.cumsum(row_weights(holdout)[order])])[ks]  # the population's sends
    curve = {"sends": (sends * scale).round().astype(int)}
    for name, point, boot in (
        ("net_value", np.concatenate([[0.0], np.cumsum(value)])[ks], np.array(boot_value)),
        ("incremental_responses", np.concatenate([[0.0], np.cumsum(responses)])[ks], np.array(boot_resp)),
    ):
        low, high = _interval(boot, axis=0)
        curve[name], curve[f"{name}_low"], curve[f"{name}_high"] = point * scale, low * scale, high * scale
    return pd.DataFrame(curve)


def arm_values(assignment, holdout, exp: Experiment, targeting, *, audience_rows: int, rounds: int, seed: int) -> dict:
    """Per arm of one policy: its sends, incremental responses and net value, with 95% intervals.

    The policy's AIPW contributions split by the arm each row is given (they add up to the
    policy's value), scaled from the holdout to an audience of `audience_rows`; one paired
    bootstrap for all arms.
    """
    value, responses = _value_and_responses(assignment, holdout, exp, targeting)
    given = np.column_stack([assignment == arm for arm in exp.arms]).astype(float)
    columns = np.column_stack([given * value[:, None], given * responses[:, None]])
    sent = given * row_weights(holdout)[:, None]
    scale = audience_rows  # a mean per holdout row, times the audience
    boot = _bootstrap_means(columns, rounds, seed, customer_groups(holdout)) * scale
    low, high = _interval(boot, axis=0)
    point, k = columns.mean(axis=0) * scale, len(exp.arms)
    return {
        arm: {
            "sends": int(round(sent[:, i].mean() * scale)),
            "net_value": float(point[i]),
            "net_value_low": float(low[i]),
            "net_value_high": float(high[i]),
            "incremental_responses": float(point[k + i]),
            "incremental_responses_low": float(low[k + i]),
            "incremental_responses_high": float(high[k + i]),
        }
        for i, arm in enumerate(exp.arms)
    }
