"""The targeting policy: from per-arm uplifts to who gets which arm. One rule for every caller.

Scoring (inside Spark's Python workers), the gate's offline evaluation and the budget curve
(hence the policy coverage benchmark) call these functions; `jobs.targeting.score` adds only the Spark
plumbing (ranking windows over the whole audience) around the same column rules.

- Net value of arm a for a customer: ``value_per_response * uplift_a - cost_per_send[a]``, plus
  ``value * uplift_a__o`` of every further outcome o (`targeting.outcomes`; a harm has a negative value).
- Each customer is recommended the arm of highest net value (the first in conf order on a tie),
  or "none" when that value is not positive or the arm's uplift is below `min_uplift`.
- Guardrails: a customer is never given an arm whose upper bound on a guardrail outcome's uplift
  (`uplift_high_<arm>__o`, jobs.model.train.guardrail_bounds) exceeds its `max_uplift`. A campaign limit
  `max_increase_per_send` (expected total increase / sends) is met with a price: each unit of
  the outcome's uplift above the limit costs `price` in the choice, the smallest price on a grid
  that brings the whole audience's total within the limit (`guardrail_prices`); no customer is
  ever sent at a loss to make room. When no price on the grid suffices, only arms whose own
  uplift is within the limit are used. The price is set on the unbudgeted choice: `max_sends`
  and `max_spend` then take the top of the ranking, as without guardrails.
- Customers are ranked by expected net value (then customer_id); with `max_sends` / `max_spend`
  only the recommended customers whose running count / spend stays within budget are selected.
- A stable pseudo-random `holdout_share` of the selected is flagged `holdout`: not sent, kept
  as a fresh randomized control. The draw depends on (customer_id, run_date) only.
- Every audience is also an experiment (`assign`): an `exploration_share` of the eligible is sent
  control or an allowed arm at random, and each row records its assignment route, the arm it is
  sent and the probability of that arm under all routes (`propensity`), which the nights after
  weigh its outcome by.
- Until a model passes the gate, the night's policy is a constant one (`best_constant`): every
  eligible customer gets the arm whose net value's lower 95% bound is highest if that bound is
  above zero (and which keeps every guardrail), otherwise no one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from jobs.names import (
    constant_policy,
    everyone,
    excess_column,
    expected_uplift_column,
    key,
    split_key,
    uplift_column,
    uplift_high_column,
)
from jobs.settings import Targeting

NONE = "none"
CHOICE_COLUMNS = ["recommended_arm", "expected_uplift", "expected_net_value", "send_cost", "holdout_draw"]
# Guardrail prices tried, in units of the largest outcome value or cost (jobs.model.policy.guardrail_prices).
PRICE_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 1e5, 271)])
# A campaign limit holds when the sent's summed excess over it is at most this (rounding).
WITHIN_LIMIT = 1e-12


def choice_columns(targeting: Targeting) -> list[str]:
    """CHOICE_COLUMNS, then the chosen arm's uplift of every further outcome (expected_uplift__o)."""
    return [*CHOICE_COLUMNS, *(expected_uplift_column(o) for o in targeting.outcomes)]


def limited_outcomes(targeting: Targeting) -> list[str]:
    """The guardrail outcomes with a campaign limit (max_increase_per_send), in declaration order."""
    return [o for o, g in targeting.guardrails.items() if g.max_increase_per_send is not None]


def excess_columns(targeting: Targeting) -> list[str]:
    """`choose(excess=True)`'s extra columns: per row, the sent arm's excess over each campaign limit."""
    return [excess_column(o) for o in limited_outcomes(targeting)]


def _uplifts(frame: pd.DataFrame, arms: list[str], outcome: str | None = None, column=uplift_column) -> np.ndarray:
    return frame[[column(a, outcome) for a in arms]].to_numpy(dtype=float)


def net_values(uplifts: pd.DataFrame, targeting: Targeting, arms: list[str]) -> np.ndarray:
    """rows x arms: the sum over outcomes of value * uplift_a(__o), minus cost_per_send[a]."""
    costs = np.array([targeting.cost_per_send[a] for a in arms])
    net = _uplifts(uplifts, arms) * targeting.value_per_response - costs
    for outcome, spec in targeting.outcomes.items():
        net += _uplifts(uplifts, arms, outcome) * spec.value
    return net


def _parts(frame: pd.DataFrame, targeting: Targeting, arms: list[str]) -> dict:
    """What the choice reads, rows x arms: net values, primary uplifts, the arms the per-customer
    guardrails allow, and each campaign-limited outcome's uplift above its limit."""
    above = {
        outcome: _uplifts(frame, arms, outcome) - guardrail.max_increase_per_send
        for outcome, guardrail in targeting.guardrails.items()
        if guardrail.max_increase_per_send is not None
    }
    return {
        "net": net_values(frame, targeting, arms),
        "uplift": _uplifts(frame, arms),
        "allowed": allowed_arms(frame, targeting, arms),
        "above": above,
    }


def allowed_arms(frame: pd.DataFrame, targeting: Targeting, arms: list[str]) -> np.ndarray:
    """rows x arms: the arms the per-customer guardrails allow (upper bound within max_uplift)."""
    allowed = np.ones((len(frame), len(arms)), dtype=bool)
    for outcome, guardrail in targeting.guardrails.items():
        if guardrail.max_uplift is not None:
            allowed &= _uplifts(frame, arms, outcome, uplift_high_column) <= guardrail.max_uplift
    return allowed


def _pick(parts: dict, targeting: Targeting, prices: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the index of the best arm under the prices, and whether it is worth sending."""
    net, allowed = parts["net"], parts["allowed"]
    choice = net.copy()
    for outcome, above in parts["above"].items():
        price = prices.get(outcome, 0.0)
        if np.isinf(price):
            allowed = allowed & (above <= 0)
        elif price:
            choice -= price * above
    choice[~allowed] = -np.inf
    best = choice.argmax(axis=1)
    rows = np.arange(len(net))
    worth_it = (choice[rows, best] > 0) & (net[rows, best] > 0) & (parts["uplift"][rows, best] >= targeting.min_uplift)
    return best, worth_it


def price_excess(
    frame: pd.DataFrame, targeting: Targeting, arms: list[str], outcome: str, grid: np.ndarray, prices: dict
) -> np.ndarray:
    """For each price on grid (the others as in prices): the sum over the sent of (uplift of outcome - limit)."""
    return _excess(_parts(frame, targeting, arms), targeting, outcome, grid, prices)


def _excess(parts: dict, targeting: Targeting, outcome: str, grid: np.ndarray, prices: dict) -> np.ndarray:
    above = parts["above"][outcome]
    rows, out = np.arange(len(above)), np.zeros(len(grid))
    for i, price in enumerate(grid):
        best, worth_it = _pick(parts, targeting, {**prices, outcome: price})
        out[i] = above[rows, best][worth_it].sum()
    return out


def price_grid(targeting: Targeting) -> np.ndarray:
    scale = max([abs(targeting.value_per_response), *(abs(o.value) for o in targeting.outcomes.values())])
    return PRICE_GRID * scale


def search_prices(
    targeting: Targeting, total_excess: Callable[[str, np.ndarray, dict], np.ndarray], chunk: int | None = None
) -> dict:
    """The guardrail prices that bring every campaign limit within bounds (two rounds over the outcomes):
    for each limited outcome, the smallest price on the grid whose excess is within the limit.

    total_excess(outcome, grid, prices): price_excess summed over the whole audience (pandas or Spark).
    chunk: ask for that many grid prices at a time, in order, and stop at the first chunk that
    holds a price within the limit (the same price as asking for the whole grid; in memory each
    price costs a pass over the rows). None: the whole grid at once (one Spark pass).
    """
    limited = limited_outcomes(targeting)
    prices = dict.fromkeys(limited, 0.0)
    grid = price_grid(targeting)
    step = chunk or len(grid)
    for _ in range(2 if len(limited) > 1 else 1):
        for outcome in limited:
            prices[outcome] = float("inf")
            for start in range(0, len(grid), step):
                part = grid[start : start + step]
                within = np.flatnonzero(total_excess(outcome, part, prices) <= WITHIN_LIMIT)
                if within.size:
                    prices[outcome] = float(part[within[0]])
                    break
    return prices


def guardrail_prices(frame: pd.DataFrame, targeting: Targeting, arms: list[str]) -> dict[str, float]:
    """search_prices over frame (pandas), a few grid prices at a time."""
    parts = _parts(frame, targeting, arms)
    return search_prices(targeting, lambda o, grid, prices: _excess(parts, targeting, o, grid, prices), chunk=8)


def holdout_draw(customer_ids: pd.Series, run_date: date, stream: str = "") -> np.ndarray:
    """A stable uniform draw in [0, 1) per (customer, run date): the same on every rerun and path.

    stream: another independent draw of the same customer and night (the holdout's is "")."""
    return stable_draw(customer_ids.astype(str) + "|" + run_date.isoformat() + (f"|{stream}" if stream else ""))


def stable_draw(keys: pd.Series) -> np.ndarray:
    """A uniform draw in [0, 1) per key, the same for the same key on every run and machine."""
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    return (hashed >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass(frozen=True)
class Customers:
    """What the policy reads of a frame's customer_id column: per row, the id's position among
    the sorted distinct ids (the ranking's tie-break) and its holdout draw. The gate values
    several policies on the same rows: it computes these once (`of`) for all of them."""

    order: np.ndarray
    draw: np.ndarray

    @classmethod
    def of(cls, customer_ids: pd.Series, run_date: date) -> Customers:
        codes, _ = pd.factorize(customer_ids, sort=True)
        return cls(codes, holdout_draw(customer_ids, run_date))


def choose(
    frame: pd.DataFrame,
    targeting: Targeting,
    arms: list[str],
    run_date: date,
    prices: dict | None = None,
    excess: bool = False,
    draw: np.ndarray | None = None,
) -> pd.DataFrame:
    """frame (customer_id, uplift_<arm>...) with choice_columns added: each customer's best arm or none.

    prices: the campaign guardrails' prices (`guardrail_prices` over the whole audience).
    excess: also excess_columns, whose sums over the audience are price_excess at these prices:
    when every campaign limit holds with all prices 0, search_prices finds 0 for each.
    draw: the rows' holdout_draw, when already computed (Customers).
    """
    parts = _parts(frame, targeting, arms)
    best, worth_it = _pick(parts, targeting, prices or {})
    net, rows = parts["net"], np.arange(len(frame))
    costs = np.array([targeting.cost_per_send[a] for a in arms])
    out = frame.copy()
    out["recommended_arm"] = np.where(worth_it, np.array(arms, dtype=object)[best], NONE)
    out["expected_uplift"] = np.where(worth_it, _uplifts(frame, arms)[rows, best], 0.0)
    # A customer every arm of whom a guardrail forbids has nothing to gain: 0, not a forbidden arm's value.
    out["expected_net_value"] = np.where(parts["allowed"].any(axis=1), net[rows, best], 0.0)
    out["send_cost"] = np.where(worth_it, costs[best], 0.0)
    out["holdout_draw"] = holdout_draw(frame["customer_id"], run_date) if draw is None else draw
    for outcome in targeting.outcomes:
        out[expected_uplift_column(outcome)] = np.where(worth_it, _uplifts(frame, arms, outcome)[rows, best], 0.0)
    if excess:
        for outcome, above in parts["above"].items():
            out[excess_column(outcome)] = np.where(worth_it, above[rows, best], 0.0)
    return out


def within_budget(recommended, sends_so_far, spend_so_far, targeting: Targeting):
    """Selected under the budgets. Works on pandas Series and on Spark Columns alike.

    sends_so_far / spend_so_far: running count and spend of the recommended customers up to
    and including this one, in rank order. The ranking gets the budgets less the exploration
    share, which the explore route spends (`exploration_probability`).
    """
    selected, room = recommended, 1 - targeting.exploration_share
    if targeting.max_sends is not None:
        selected = selected & (sends_so_far <= targeting.max_sends * room)
    if targeting.max_spend is not None:
        selected = selected & (spend_so_far <= targeting.max_spend * room)
    return selected


def is_holdout(selected, draw, targeting: Targeting):
    """Of the selected, the fresh holdout. Works on pandas Series and on Spark Columns alike."""
    return selected & (draw < targeting.holdout_share)


def apply(
    frame: pd.DataFrame, targeting: Targeting, arms: list[str], run_date: date, customers: Customers | None = None
) -> pd.DataFrame:
    """The whole policy in pandas: prices, choose, rank, budgets, holdout (what `jobs.targeting.score` does in Spark).

    customers: Customers.of(frame's customer_id), when already computed. The rows keep their
    order (by index); rank is each row's place by expected net value, then customer_id."""
    customers = customers or Customers.of(frame["customer_id"], run_date)
    if len(customers.order) != len(frame):
        raise ValueError(f"customers describe {len(customers.order)} rows, the frame has {len(frame)}")
    out = choose(frame, targeting, arms, run_date, guardrail_prices(frame, targeting, arms), draw=customers.draw)
    ranked = np.lexsort((customers.order, -out["expected_net_value"].to_numpy()))  # stable: then row order
    recommended = (out["recommended_arm"].to_numpy() != NONE)[ranked]
    spend = np.cumsum(out["send_cost"].to_numpy()[ranked])
    rank, selected = np.empty(len(out), dtype=np.int64), np.empty(len(out), dtype=bool)
    rank[ranked] = np.arange(1, len(out) + 1)
    selected[ranked] = within_budget(recommended, np.cumsum(recommended), spend, targeting)
    out["rank"], out["selected"] = rank, selected
    out["holdout"] = is_holdout(selected, customers.draw, targeting)
    return out if out.index.is_monotonic_increasing else out.sort_index()


TARGET, HOLDOUT, EXPLORE = "target", "holdout", "explore"
ASSIGNMENTS = (TARGET, HOLDOUT, EXPLORE, NONE)
ASSIGNMENT_COLUMNS = ["assignment", "assigned_arm", "propensity", "inclusion_probability", "route_probability"]
EXPLORE_STREAM, EXPLORE_ARM_STREAM = "explore", "explore_arm"  # holdout_draw's streams of the explore route


def budgeted_sends(targeting: Targeting, arms: list[str]) -> float | None:
    """The sends the budgets buy (max_sends; max_spend at the arms' mean cost); None without a budget."""
    limits = [] if targeting.max_sends is None else [float(targeting.max_sends)]
    if targeting.max_spend is not None:
        cost = float(np.mean([targeting.cost_per_send[a] for a in arms]))
        limits += [targeting.max_spend / cost] if cost > 0 else []
    return min(limits) if limits else None


def exploration_probability(targeting: Targeting, arms: list[str], eligible: int) -> float:
    """Each eligible customer's chance of the explore route tonight: `exploration_share`, or with a
    budget that share of the budgeted sends spread over the eligible (never more than the share)."""
    share, budget = targeting.exploration_share, budgeted_sends(targeting, arms)
    if budget is None or eligible <= 0:
        return share
    return min(share, share * budget / eligible)


def assign(
    frame: pd.DataFrame, targeting: Targeting, control: str, split: dict[str, float], run_date: date, explore: float
) -> pd.DataFrame:
    """frame (customer_id, recommended_arm, selected, holdout, resting, the guardrails' uplift_high_*)
    with ASSIGNMENT_COLUMNS: what is sent to each customer tonight, and with what probability.

    A resting customer (listed by an audience within the contact window, so that tonight's label
    window would overlap that one) is assigned none for sure: propensity 1, inclusion 0. Selection
    already leaves them out (`rank_and_select`); the explore route does too.

    Routes, decided by independent stable draws per (customer, run date) (`holdout_draw`'s streams):
    - explore, with probability p = `explore` (exploration_probability): control or an arm the
      guardrails allow the customer, drawn at `split` renormalised over those: q_b(x);
    - otherwise holdout: a selected customer whose holdout draw is below holdout_share h: control;
    - otherwise target: a selected customer (s(x) = 1) gets the recommended arm r(x);
    - otherwise none: nothing is sent (assigned_arm null).
    `propensity` is the probability that the customer is recorded with this assigned arm, summed over
    every route that could give it (the route that happened alone would bias every weighted estimate):

        P(b | x) = p q_b(x) + (1 - p) s(x) [h if b = control, else (1 - h) 1(b = r(x))]
        P(none | x) = (1 - p) (1 - s(x))

    `inclusion_probability` = p + (1 - p) s(x), the chance of being on the send list at all (any
    arm or control): a sent row stands for 1 / inclusion_probability eligible customers.
    `route_probability` is the chance of this route and arm alone: p q_b(x) (explore), (1 - p) h
    (holdout), (1 - p) (1 - h) (target), (1 - p) (1 - s(x)) (none); the results step values
    policies on the explore rows with it (jobs.monitoring.results).
    A guardrail-forbidden arm has probability 0; every other arm and control keep at least p q_b(x) > 0.
    """
    arms = [a for a in split if a != control]
    options = np.array([control, *arms], dtype=object)
    n = len(frame)
    shares = np.column_stack(
        [np.full(n, split[control]), allowed_arms(frame, targeting, arms) * np.array([split[a] for a in arms])]
    )
    shares = shares / shares.sum(axis=1, keepdims=True)
    ids = frame["customer_id"]
    resting = frame["resting"].to_numpy(bool)
    exploring = (holdout_draw(ids, run_date, EXPLORE_STREAM) < explore) & ~resting
    picked = np.minimum(
        (holdout_draw(ids, run_date, EXPLORE_ARM_STREAM)[:, None] >= shares.cumsum(axis=1)).sum(1),
        len(options) - 1,  # a draw at the very top of a rounded cumulative share
    )
    selected, holdout = frame["selected"].to_numpy(bool), frame["holdout"].to_numpy(bool)
    recommended = pd.Series(frame["recommended_arm"].to_numpy()).map({a: i for i, a in enumerate(options)})
    recommended = recommended.fillna(-1).to_numpy(np.int64)
    chosen = np.where(exploring, picked, np.where(holdout, 0, np.where(selected, recommended, -1)))
    rows = np.arange(n)
    by_route = np.where(chosen == 0, targeting.holdout_share, (1 - targeting.holdout_share) * (chosen == recommended))
    out = frame.copy()
    out["assignment"] = np.where(exploring, EXPLORE, np.where(holdout, HOLDOUT, np.where(selected, TARGET, NONE)))
    out["assigned_arm"] = np.where(chosen >= 0, options[np.maximum(chosen, 0)], None)
    p = np.where(resting, 0.0, explore)
    out["propensity"] = np.where(
        chosen >= 0, p * shares[rows, np.maximum(chosen, 0)] + (1 - p) * selected * by_route, (1 - p) * (1 - selected)
    )
    out["inclusion_probability"] = p + (1 - p) * selected
    h = targeting.holdout_share
    out["route_probability"] = np.where(
        exploring,
        p * shares[rows, np.maximum(picked, 0)],
        (1 - p) * np.where(holdout, h, np.where(selected, 1 - h, 1.0)),
    )
    return out


def scaled(targeting: Targeting, factor: float) -> Targeting:
    """The same policy with its budgets scaled (an audience's budget applied to a sample of it)."""
    return targeting.model_copy(
        update={
            "max_sends": None if targeting.max_sends is None else max(1, int(targeting.max_sends * factor)),
            "max_spend": None if targeting.max_spend is None else targeting.max_spend * factor,
        }
    )


COUNT_COLUMNS = ["rows", "responses", "weight", "weighted_responses", "weight_sq", "weighted_responses_sq"]


def arm_counts(rows: pd.DataFrame, label: str) -> pd.DataFrame:
    """Per (campaign_id, arm) of rows (label, propensity): the COUNT_COLUMNS average_effects reads,
    over the rows whose label has matured. Sums, so counts of parts of a table add up to the table's."""
    known = rows[rows[label].notna()]
    w = 1.0 / known["propensity"].to_numpy(float)
    y = known[label].to_numpy(float)
    frame = pd.DataFrame(
        {
            "campaign_id": known["campaign_id"].to_numpy(),
            "arm": known["arm"].to_numpy(),
            "rows": 1,
            "responses": y,
            "weight": w,
            "weighted_responses": w * y,
            "weight_sq": w * w,
            "weighted_responses_sq": w * w * y,
        }
    )
    return frame.groupby(["campaign_id", "arm"], as_index=False, observed=True)[COUNT_COLUMNS].sum()


def average_effects(counts: pd.DataFrame, control: str, arms: list[str]) -> dict[str, dict]:
    """Each arm's average effect on the response rate, stratified by campaign, with a 95% interval.

    counts: arm_counts' rows (campaign_id, arm, COUNT_COLUMNS). Each send is weighed by the inverse
    of its propensity, so a campaign's group rate is the Hajek mean sum(w y) / sum(w): the rate the
    whole campaign population would have had with that arm, whether the campaign was randomized (w
    constant: the plain rate) or an own audience that targeted by the features. Within each campaign
    where both the arm and control were sent, the difference of those rates; campaigns are weighted
    by the effective rows (sum(w)^2 / sum(w^2)) of the two groups, so a campaign with its own split
    cannot bias the mean.

    A group's variance is that of a rate over its effective rows, each group's rate shrunk by two
    pseudo-rows at the group's rate over all those campaigns (itself Agresti-Caffo: one success and
    one failure added), so a tiny group with a rate of 0 or 1 does not get a zero-width interval, and
    a rare outcome split over many small campaigns gets the interval its total rows give: one success
    per campaign (Agresti-Caffo in every stratum) would inflate it with the number of campaigns.
    """
    pairs = counts.groupby(["campaign_id", "arm"], observed=True)[COUNT_COLUMNS].sum().unstack("arm")
    effects = {}
    for arm in arms:
        w = pairs["weight"].reindex(columns=[arm, control]).fillna(0)
        both = (w > 0).all(axis=1)
        if not both.any():  # the arm and control never sent in the same campaign
            effects[arm] = {"ate": 0.0, "low": 0.0, "high": 0.0, "rows": 0}
            continue

        of = {c: pairs[c].reindex(columns=[arm, control])[both].to_numpy(dtype=float) for c in COUNT_COLUMNS}
        rate = of["weighted_responses"] / of["weight"]
        n = of["weight"] ** 2 / of["weight_sq"]  # effective rows: the rows themselves when w is constant
        r = rate * n
        overall = (r.sum(axis=0) + 1) / (n.sum(axis=0) + 2)
        shrunk = (r + 2 * overall) / (n + 2)
        diffs = rate[:, 0] - rate[:, 1]
        variances = (shrunk * (1 - shrunk) / (n + 2)).sum(axis=1)
        weights = n.sum(axis=1)
        share = weights / weights.sum()
        ate = float(share @ diffs)
        half = 1.96 * float(np.sqrt((share**2) @ variances))
        effects[arm] = {"ate": ate, "low": ate - half, "high": ate + half, "rows": int(of["rows"].sum())}
    return effects


def constant_guardrail_problems(effects: dict[str, dict], targeting: Targeting, arm: str) -> list[str]:
    """Why sending arm to everyone breaks a guardrail: its average effect's upper limit above a limit."""
    problems = []
    for outcome, guardrail in targeting.guardrails.items():
        high = effects[key(arm, outcome)]["high"]
        for name in ("max_uplift", "max_increase_per_send"):
            limit = getattr(guardrail, name)
            if limit is not None and high > limit:
                problems.append(f"its {outcome} effect's upper limit {high:.4f} is above {name} {limit}")
    return problems


def constant_net(effects: dict[str, dict], targeting: Targeting, arm: str) -> tuple[float, float]:
    """Net value per customer of sending arm to everyone, and its 95% lower bound.

    The sum over outcomes of value x average effect, minus the cost; the bound's half-width
    combines the outcomes' as if they were independent.
    """
    net, variance = -targeting.cost_per_send[arm], 0.0
    for outcome, value in targeting.values().items():
        e = effects[key(arm, outcome)]
        net += value * e["ate"]
        variance += (value * (e["high"] - e["low"]) / 2) ** 2
    return net, net - float(np.sqrt(variance))


def best_constant(effects: dict[str, dict], targeting: Targeting) -> tuple[str, list[str]]:
    """The constant policy to publish without a model: the arm whose net value's lower bound is
    highest if it is above zero (and whose effect reaches `min_uplift`, and which keeps every
    guardrail), else none; and the reasons, one line per arm.

    effects: average_effects of every key(arm, outcome).
    """
    reasons, best, best_low = [], NONE, 0.0
    for arm in [k for k in effects if split_key(k)[1] is None]:
        e = effects[arm]
        net, low = constant_net(effects, targeting, arm)
        problems = constant_guardrail_problems(effects, targeting, arm)
        reasons.append(
            f"{everyone(arm)}: net value per customer {net:.4f} (95% lower bound {low:.4f}) "
            f"from an average effect of {e['ate']:.4f} on {e['rows']:,} sends"
            + (f"; refused: {'; '.join(problems)}" if problems else "")
        )
        if low > best_low and e["ate"] >= targeting.min_uplift and not problems:
            best, best_low = arm, low
    reasons.append(
        f"chosen: {constant_policy(best)}"
        + (" (its lower bound is the highest above zero)" if best != NONE else " (no arm pays for sure)")
    )
    return best, reasons
