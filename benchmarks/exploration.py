"""What the explore share costs and buys, and what clipping the weights would do: the default's evidence.

In memory, on the demo generator's customers and truth (jobs.demo.simulate's rounds): per seed a model
fitted on a randomized campaign chooses an audience, which is sent for a few nights as
jobs.model.policy.assign records it, for each exploration share. Per share:
- cost: the true net value per eligible customer the nights give up against the same audience
  sent without exploration (holdout kept);
- the average effect of every arm from the own sends (propensity-weighted): its error against the
  truth and its interval's width;
- the gate's AIPW value of the deployed policy on the own sends: its error and interval width;
- the ranking a model learns from the own sends, against one learned from as many randomized sends
  (gain of the top 30% by predicted uplift, summed over arms; ratio).
Then, at the default share, the same value estimated with the propensities clipped from below at
a few floors: the bias each adds against the width it saves.

    python -m benchmarks.exploration --seeds 5   # writes benchmarks/results/exploration-<date>-<commit>.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date

import numpy as np
import pandas as pd

from benchmarks import publish
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
from jobs.settings import load_settings

NIGHT = date(2026, 10, 30)
SHARES = (0.0, 0.02, 0.05, 0.1, 0.2)
FLOORS = (None, 0.02, 0.05, 0.1)
CUSTOMERS, RANDOMIZED_SENDS, NIGHTS = 20_000, 40_000, 4


def _sent_value(own: pd.DataFrame, truth: pd.DataFrame, settings, customers: int) -> float:
    """The true net value per eligible customer of what the nights sent (per night)."""
    targeting, rows = settings.targeting, own.merge(truth, on="customer_id")
    value = 0.0
    for arm in settings.experiment.arms:
        mine = rows[rows["arm"] == arm]
        value += float(
            (
                targeting.value_per_response * (mine[p_column(arm)] - mine["p_control"]) - targeting.cost_per_send[arm]
            ).sum()
        )
    return value / customers / NIGHTS


def _value(holdout: pd.DataFrame, settings) -> dict:
    deployed = np.where(holdout["selected"], holdout["recommended_arm"], "control")
    table = evaluation.value_table(
        {"deployed": deployed, "no one": np.full(len(holdout), "control")},
        holdout,
        settings.experiment,
        settings.targeting,
        pairs={},
        rounds=100,
        seed=1,
    )
    return table["policies"]["deployed"]


def run_seed(seed: int) -> list[dict]:
    base = in_memory(load_settings(demo=True), 0.0)
    arms = base.experiment.arms
    rng = np.random.default_rng(seed)
    features, truth = demo_customers(rng, CUSTOMERS, NIGHT)
    first = fit_model(randomized_sends(features, truth, RANDOMIZED_SENDS, base, rng), base)
    scored = uplifts_of(first, features)
    rows = []
    for share in SHARES:
        local = in_memory(load_settings(demo=True), share)
        chosen = policy.apply(scored, local.targeting, arms, NIGHT)
        own = own_sends(chosen, features, truth, local, NIGHT, NIGHTS, np.random.default_rng([seed, 1]))
        holdout = pd.concat([own, first.predict_proba(own).reset_index(drop=True)], axis=1)
        truth_value = true_value(chosen.assign(resting=False), truth, local)
        effects = policy.average_effects(policy.arm_counts(own, "label"), "control", arms)
        ate_errors = [effects[a]["ate"] - float((truth[p_column(a)] - truth["p_control"]).mean()) for a in arms]
        line = {
            "seed": seed,
            "share": share,
            "sends_per_night": len(own) / NIGHTS,
            "sent_value": _sent_value(own, truth, local, len(features)),
            "policy_true_value": truth_value,
            "ate_abs_error": float(np.mean(np.abs(ate_errors))),
            "ate_width": float(np.mean([effects[a]["high"] - effects[a]["low"] for a in arms])),
        }
        if share > 0:
            estimate = _value(holdout, local)
            learned = uplifts_of(fit_model(own, local), features)
            randomized = uplifts_of(fit_model(randomized_sends(features, truth, len(own), local, rng), local), features)
            line |= {
                "value_error": estimate["value"] - truth_value,
                "value_width": estimate["high"] - estimate["low"],
                "value_covered": estimate["low"] <= truth_value <= estimate["high"],
                "gain_ratio": ranking_gain(learned, truth, arms) / ranking_gain(randomized, truth, arms),
            }
        if share == load_settings(demo=True).targeting.exploration_share:
            for floor in FLOORS[1:]:
                clipped = holdout.assign(propensity=holdout["propensity"].clip(lower=floor))
                estimate = _value(clipped, local)
                line[f"clip_{floor}"] = {
                    "error": estimate["value"] - truth_value,
                    "width": estimate["high"] - estimate["low"],
                }
        rows.append(line)
        print(json.dumps(line), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = [line for seed in range(args.seeds) for line in run_seed(seed)]
    frame = pd.DataFrame(rows)
    baseline = frame[frame["share"] == 0].set_index("seed")["sent_value"]
    frame["cost"] = frame["seed"].map(baseline) - frame["sent_value"]
    summary = (
        frame.drop(columns=[c for c in frame.columns if c.startswith("clip_")]).groupby("share").mean(numeric_only=True)
    )
    result = {
        "seeds": args.seeds,
        "customers": CUSTOMERS,
        "nights": NIGHTS,
        "by_share": summary.drop(columns="seed").reset_index().to_dict(orient="records"),
        "clipping_at_default": {
            str(floor): {
                k: float(np.mean([r[f"clip_{floor}"][k] for r in rows if f"clip_{floor}" in r]))
                for k in ("error", "width")
            }
            for floor in FLOORS[1:]
        },
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    headline = {f"share {r['share']} gain_ratio": r["gain_ratio"] for r in result["by_share"]}
    path = publish("exploration-", result, headline)
    print(summary.to_string(), f"\n-> {path}")


if __name__ == "__main__":
    main()
