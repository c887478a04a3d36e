"""The loop, simulated: each night's audience is sent as exported and the next nights learn from it.

`uplift simulate` lands the demo's randomized history (jobs.generate, its late responses included),
then for each night runs every step of the nightly (jobs.steps), reads the audience it published and
plays the e-mail tool and the customers on the generator's truth: every row of the send list
(assigned arm, control rows included) becomes a send of the night's campaign the next day, and each
send's responses are drawn from the customer's true probabilities and delivered on the days they
happen. The next night validates those sends against the audience and learns from them with their
recorded propensities.

A night whose drift step fails (drift.on_fail: fail_run) has published its audience already: it
is sent, and the night's line says `drift: fail`. Per night it reports the sends by assignment
route and the deployed policy's value per eligible customer: the gate's estimate with its
interval, and the truth (the generator's net value of the policy's own choice for every customer
it decides for, before exploration and holdout).
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta

import numpy as np
import pandas as pd

from jobs import steps
from jobs.drift import DriftFailed
from jobs.generate import UNSUBSCRIBE, deliver, draw_responses, generate
from jobs.lake import partition_dir
from jobs.policy import NONE
from jobs.settings import Settings, report_dir

log = logging.getLogger(__name__)


def true_value(audience: pd.DataFrame, truth: pd.DataFrame, settings: Settings) -> float:
    """The true net value per eligible customer of the audience's policy (its recommended arm for
    every selected customer, nothing for the others), from the generator's truth."""
    targeting, control = settings.targeting, settings.experiment.control
    chosen = audience.loc[
        audience["selected"] & (audience["recommended_arm"] != NONE), ["customer_id", "recommended_arm"]
    ]
    rows = chosen.merge(truth, on="customer_id")
    arm = rows["recommended_arm"].to_numpy()
    total = 0.0
    for a in settings.experiment.arms:
        mine = rows[arm == a]
        net = targeting.value_per_response * (mine[f"p_{a}"] - mine[f"p_{control}"]) - targeting.cost_per_send[a]
        if UNSUBSCRIBE in targeting.outcomes:
            harm = mine[f"p_{a}__{UNSUBSCRIBE}"] - mine[f"p_{control}__{UNSUBSCRIBE}"]
            net = net + targeting.outcomes[UNSUBSCRIBE].value * harm
        total += float(net.sum())
    return total / max(1, len(audience))


def send(settings: Settings, audience: pd.DataFrame, truth: pd.DataFrame, night: date, seed: int) -> int:
    """Deliver the send list of night's audience as sends of the next day, and their responses."""
    day = night + timedelta(days=1)
    rng = np.random.default_rng([seed, night.toordinal()])
    harm_rng = np.random.default_rng([seed, night.toordinal(), 1])
    listed = audience[audience["assigned_arm"].notna()].reset_index(drop=True)
    stamp = f"{night:%Y%m%d}"
    sends = pd.DataFrame(
        {
            "send_id": [f"S{stamp}_{k:07d}" for k in range(len(listed))],
            "campaign_id": listed["campaign_id"].to_numpy(),
            "customer_id": listed["customer_id"].to_numpy(),
            "sent_at": pd.Timestamp(day) + pd.to_timedelta(rng.integers(8 * 3600, 20 * 3600, len(listed)), unit="s"),
            "arm": listed["assigned_arm"].to_numpy(),
        }
    )
    deliver(settings, "sends", sends, day, part=f"campaign-{stamp}")
    probs = sends[["customer_id", "arm"]].merge(truth, on="customer_id", how="left")
    arm = probs["arm"].to_numpy()
    codes = pd.Categorical(arm, categories=settings.experiment.all_arms).codes
    respond = np.choose(codes, [probs[f"p_{a}"].to_numpy() for a in settings.experiment.all_arms])
    harm = np.choose(codes, [probs[f"p_{a}__{UNSUBSCRIBE}"].to_numpy() for a in settings.experiment.all_arms])
    window = settings.experiment.attribution_window_days
    frames = draw_responses(sends, respond, harm, arm != settings.experiment.control, rng, harm_rng, window)
    responses = pd.concat(frames, ignore_index=True).sort_values("responded_at", kind="stable")
    for day_out, part in responses.groupby(responses["responded_at"].dt.date):
        part = part.reset_index(drop=True)
        part.insert(0, "response_id", [f"R{stamp}_{day_out:%Y%m%d}_{k:07d}" for k in range(len(part))])
        deliver(settings, "responses", part, day_out, part=f"campaign-{stamp}")
    return len(sends)


def simulate(
    settings: Settings, *, nights: int, customers: int, days: int, sends_per_day: int, first_night: date, seed: int
) -> list[dict]:
    """Land `days` of randomized history ending on first_night, then run `nights` nights of the loop;
    one line per night (see the module docstring)."""
    generate(
        settings,
        customers=customers,
        days=days,
        sends_per_day=sends_per_day,
        last_day=first_night,
        seed=seed,
        tail=True,
    )
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet")
    users = pd.read_parquet(settings.paths.lake / "raw" / "users" / f"dt={first_night.isoformat()}")
    users = users.rename(columns={v: k for k, v in settings.sources["users"].columns.items()})
    table = []
    for k in range(nights):
        night = first_night + timedelta(days=k)
        if k:  # the customers' snapshot of the day (the generator's customers do not change)
            deliver(settings, "users", users, night)
        drift = "ok"
        for step in steps.STEPS:
            try:
                steps.run(step, night, settings)
            except DriftFailed as err:  # after the audience was published: the night's send goes out
                log.warning("night %s: %s", night, err)
                drift = "fail"
        audience = pd.read_parquet(partition_dir(settings, "audience", night))
        sends = send(settings, audience, truth, night, seed)
        gate = json.loads((report_dir(settings, night) / "gate.json").read_text())
        estimate = gate["deployed_value"]
        line = {
            "night": night.isoformat(),
            "policy": audience["policy"].iloc[0],
            "drift": drift,
            "sends": sends,
            **{route: int((audience["assignment"] == route).sum()) for route in ("target", "holdout", "explore")},
            "estimated_value": estimate["value"],
            "estimated_low": estimate["low"],
            "estimated_high": estimate["high"],
            "true_value": true_value(audience, truth, settings),
        }
        log.info("night %s: %s", night, line)
        table.append(line)
    return table
