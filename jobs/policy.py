"""The targeting policy: from per-arm uplifts to who gets which arm. One rule for every caller.

Scoring (inside Spark's Python workers), the gate's offline evaluation and the budget curve
(hence the policy coverage benchmark) call these functions; `jobs.score` adds only the Spark
plumbing (ranking windows over the whole audience) around the same column rules.

- Net value of arm a for a customer: ``value_per_response * uplift_a - cost_per_send[a]``.
- Each customer is recommended the arm of highest net value (the first in conf order on a tie),
  or "none" when that value is not positive or the arm's uplift is below `min_uplift`.
- Customers are ranked by expected net value (then customer_id); with `max_sends` / `max_spend`
  only the recommended customers whose running count / spend stays within budget are selected.
- A stable pseudo-random `holdout_share` of the selected is flagged `holdout`: not sent, kept
  as a fresh randomized control. The draw depends on (customer_id, run_date) only.
- Until a model passes the gate, the night's policy is a constant one (`best_constant`): every
  eligible customer gets the arm whose net value's lower 95% bound is highest if that bound is
  above zero, otherwise no one.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from jobs.settings import Targeting

NONE = "none"
CHOICE_COLUMNS = ["recommended_arm", "expected_uplift", "expected_net_value", "send_cost", "holdout_draw"]


def everyone(arm: str) -> str:
    """The name of the constant policy that sends arm to everyone (gate tables, reasons)."""
    return f"everyone gets {arm}"


def net_values(uplifts: pd.DataFrame, targeting: Targeting, arms: list[str]) -> np.ndarray:
    """rows x arms: value_per_response * uplift_a - cost_per_send[a]."""
    costs = np.array([targeting.cost_per_send[a] for a in arms])
    return uplifts[[f"uplift_{a}" for a in arms]].to_numpy(dtype=float) * targeting.value_per_response - costs


def holdout_draw(customer_ids: pd.Series, run_date: date) -> np.ndarray:
    """A stable uniform draw in [0, 1) per (customer, run date): the same on every rerun and path."""
    keys = customer_ids.astype(str) + "|" + run_date.isoformat()
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    return (hashed >> np.uint64(11)).astype(np.float64) / float(2**53)


def choose(frame: pd.DataFrame, targeting: Targeting, arms: list[str], run_date: date) -> pd.DataFrame:
    """frame (customer_id, uplift_<arm>...) with CHOICE_COLUMNS added: each customer's best arm or none."""
    net = net_values(frame, targeting, arms)
    best = net.argmax(axis=1)
    rows = np.arange(len(frame))
    best_net = net[rows, best]
    best_uplift = frame[[f"uplift_{a}" for a in arms]].to_numpy(dtype=float)[rows, best]
    worth_it = (best_net > 0) & (best_uplift >= targeting.min_uplift)
    costs = np.array([targeting.cost_per_send[a] for a in arms])
    out = frame.copy()
    out["recommended_arm"] = np.where(worth_it, np.array(arms, dtype=object)[best], NONE)
    out["expected_uplift"] = np.where(worth_it, best_uplift, 0.0)
    out["expected_net_value"] = best_net
    out["send_cost"] = np.where(worth_it, costs[best], 0.0)
    out["holdout_draw"] = holdout_draw(frame["customer_id"], run_date)
    return out


def within_budget(recommended, sends_so_far, spend_so_far, targeting: Targeting):
    """Selected under the budgets. Works on pandas Series and on Spark Columns alike.

    sends_so_far / spend_so_far: running count and spend of the recommended customers up to
    and including this one, in rank order.
    """
    selected = recommended
    if targeting.max_sends is not None:
        selected = selected & (sends_so_far <= targeting.max_sends)
    if targeting.max_spend is not None:
        selected = selected & (spend_so_far <= targeting.max_spend)
    return selected


def is_holdout(selected, draw, targeting: Targeting):
    """Of the selected, the fresh holdout. Works on pandas Series and on Spark Columns alike."""
    return selected & (draw < targeting.holdout_share)


def apply(frame: pd.DataFrame, targeting: Targeting, arms: list[str], run_date: date) -> pd.DataFrame:
    """The whole policy in pandas: choose, rank, budgets, holdout (what `jobs.score` does in Spark)."""
    out = choose(frame, targeting, arms, run_date)
    out = out.sort_values(["expected_net_value", "customer_id"], ascending=[False, True], kind="mergesort")
    recommended = out["recommended_arm"] != NONE
    out["rank"] = np.arange(1, len(out) + 1)
    out["selected"] = within_budget(recommended, recommended.cumsum(), out["send_cost"].cumsum(), targeting).to_numpy()
    out["holdout"] = is_holdout(out["selected"], out["holdout_draw"], targeting).to_numpy()
    return out.sort_index()


def scaled(targeting: Targeting, factor: float) -> Targeting:
    """The same policy with its budgets scaled (an audience's budget applied to a sample of it)."""
    return targeting.model_copy(
        update={
            "max_sends": None if targeting.max_sends is None else max(1, int(targeting.max_sends * factor)),
            "max_spend": None if targeting.max_spend is None else targeting.max_spend * factor,
        }
    )


def average_effects(counts: pd.DataFrame, control: str, arms: list[str]) -> dict[str, dict]:
    """Each arm's average effect on the response rate, stratified by campaign, with a 95% interval.

    counts: rows (campaign_id, arm, rows, responses). Within each campaign where both the arm
    and control were sent, the difference of response rates; campaigns are weighted by their
    rows of the two groups (so a campaign with its own split cannot bias the mean).
    """
    table = counts.set_index(["campaign_id", "arm"])
    effects = {}
    for arm in arms:
        diffs, variances, weights = [], [], []
        for campaign in counts["campaign_id"].unique():
            if (campaign, arm) not in table.index or (campaign, control) not in table.index:
                continue
            t, c = table.loc[(campaign, arm)], table.loc[(campaign, control)]
            if t["rows"] == 0 or c["rows"] == 0:
                continue
            pt, pc = t["responses"] / t["rows"], c["responses"] / c["rows"]
            diffs.append(pt - pc)
            # Agresti-Caffo: one success and one failure added to each group, so a tiny group
            # with a rate of 0 or 1 does not get a zero-width interval.
            at, ac = (t["responses"] + 1) / (t["rows"] + 2), (c["responses"] + 1) / (c["rows"] + 2)
            variances.append(at * (1 - at) / (t["rows"] + 2) + ac * (1 - ac) / (c["rows"] + 2))
            weights.append(t["rows"] + c["rows"])
        if not weights:
            effects[arm] = {"ate": 0.0, "low": 0.0, "high": 0.0, "rows": 0}
            continue
        w = np.array(weights, dtype=float) / sum(weights)
        ate = float(w @ np.array(diffs))
        half = 1.96 * float(np.sqrt((w**2) @ np.array(variances)))
        effects[arm] = {"ate": ate, "low": ate - half, "high": ate + half, "rows": int(sum(weights))}
    return effects


def best_constant(effects: dict[str, dict], targeting: Targeting) -> tuple[str, list[str]]:
    """The constant policy to publish without a model: the arm whose net value's lower bound is
    highest if it is above zero (and whose effect reaches `min_uplift`), else none; and the
    reasons, one line per arm."""
    reasons, best, best_low = [], NONE, 0.0
    for arm, e in effects.items():
        cost = targeting.cost_per_send[arm]
        net, low = targeting.value_per_response * e["ate"] - cost, targeting.value_per_response * e["low"] - cost
        reasons.append(
            f"{everyone(arm)}: net value per customer {net:.4f} (95% lower bound {low:.4f}) "
            f"from an average effect of {e['ate']:.4f} on {e['rows']:,} sends"
        )
        if low > best_low and e["ate"] >= targeting.min_uplift:
            best, best_low = arm, low
    reasons.append(
        f"chosen: constant:{best}"
        + (" (its lower bound is the highest above zero)" if best != NONE else " (no arm pays for sure)")
    )
    return best, reasons
