"""The loop, simulated: each night's audience is sent as exported and the next nights learn from it.

`uplift simulate` lands the demo's randomized history (jobs.demo.generate, its late responses included),
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

import contextlib
import dataclasses
import json
import logging
from datetime import date, timedelta

import mlflow
import numpy as np
import pandas as pd

from jobs import steps
from jobs.data.lake import partition_dir
from jobs.demo.generate import DEMO_ARMS, UNSUBSCRIBE, deliver, draw_responses, draw_users, generate, true_probabilities
from jobs.features import FeatureSpec
from jobs.model import policy
from jobs.model.policy import NONE
from jobs.monitoring.drift import DriftFailed
from jobs.names import (
    AUDIENCE,
    GATE_REPORT,
    MONITORING_REPORT,
    STEPS,
    is_uplift_column,
    p_column,
    probability_arms,
    uplift_column,
)
from jobs.settings import Experiment, Settings, report_dir

log = logging.getLogger(__name__)


def true_value(audience: pd.DataFrame, truth: pd.DataFrame, settings: Settings) -> float:
    """The true net value per eligible customer of the audience's policy (its recommended arm for
    every customer it selects, or would were the customer not resting; nothing for the others),
    from the generator's truth: what the gate values, the policy over every eligible customer."""
    targeting, control = settings.targeting, settings.experiment.control
    decided = (audience["selected"] | audience["resting"]) & (audience["recommended_arm"] != NONE)
    chosen = audience.loc[decided, ["customer_id", "recommended_arm"]]
    rows = chosen.merge(truth, on="customer_id")
    arm = rows["recommended_arm"].to_numpy()
    total = 0.0
    for a in settings.experiment.arms:
        mine = rows[arm == a]
        net = targeting.value_per_response * (mine[p_column(a)] - mine[p_column(control)]) - targeting.cost_per_send[a]
        if UNSUBSCRIBE in targeting.outcomes:
            harm = mine[p_column(a, UNSUBSCRIBE)] - mine[p_column(control, UNSUBSCRIBE)]
            net = net + targeting.outcomes[UNSUBSCRIBE].value * harm
        total += float(net.sum())
    return total / max(1, len(audience))


def true_incremental(settings: Settings, audience: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """The true incremental responses of an audience's sent customers (target route), per arm and
    `all`: the sum of their true uplifts of the arm they were sent (what results estimates)."""
    control = settings.experiment.control
    sent = audience.loc[audience["assignment"] == policy.TARGET, ["customer_id", "assigned_arm"]]
    rows = sent.merge(truth, on="customer_id")
    out = {}
    for arm in settings.experiment.arms:
        mine = rows[rows["assigned_arm"] == arm]
        out[arm] = float((mine[p_column(arm)] - mine[p_column(control)]).sum())
    out["all"] = sum(out.values())
    return out


# The nights of a serving-only loop: no training, no gate (monitoring alone changes the champion).
SERVING_STEPS = ("validate-raw", "etl", "validate-features", "score", "results")


@contextlib.contextmanager
def negated_champion(settings: Settings):
    """A deliberately bad champion: a new version of the champion's model that expects every arm to
    lose 0.05 responses per customer (it sends no one), promoted; while the block lasts scoring loads
    it so. Yields (the good version, the bad one)."""
    from jobs.model import registry
    from jobs.model.tracking import use_tracking

    use_tracking(settings)
    good = registry.alias_version(settings, registry.CHAMPION)
    if good is None:
        raise RuntimeError("no champion to corrupt: run nights that train and promote one first")
    bad = mlflow.MlflowClient().create_model_version(settings.mlflow.registered_model, good.source, good.run_id)
    registry.promote(settings, bad.version)
    original = registry.portable_model

    def negated(s: Settings, version: str):
        model = original(s, version)
        if str(version) != str(bad.version):
            return model
        return dataclasses.replace(model, constant={**model.constant, **dict.fromkeys(model.arms, -0.05)})

    registry.portable_model = negated
    try:
        yield good, bad
    finally:
        registry.portable_model = original


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
    ).astype({"send_id": "string", "campaign_id": "string", "customer_id": "string", "arm": "string"})
    # An audience that listed no one still delivers its (empty) day of sends: the source is daily.
    deliver(settings, "sends", sends, day, part=f"campaign-{stamp}")
    probs = sends[["customer_id", "arm"]].merge(truth, on="customer_id", how="left")
    arm = probs["arm"].to_numpy()
    codes = pd.Categorical(arm, categories=settings.experiment.all_arms).codes
    respond = np.choose(codes, [probs[p_column(a)].to_numpy() for a in settings.experiment.all_arms])
    harm = np.choose(codes, [probs[p_column(a, UNSUBSCRIBE)].to_numpy() for a in settings.experiment.all_arms])
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
    return play(settings, first_night=first_night, nights=nights, seed=seed)


def play(
    settings: Settings, *, first_night: date, nights: int, seed: int, steps_run: tuple[str, ...] = STEPS
) -> list[dict]:
    """Run `nights` nights of the loop from first_night on a lake `generate` (and earlier nights) wrote;
    steps_run: the steps of each night (all of them by default)."""
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet")
    snapshots = sorted((settings.paths.lake / "raw" / "users").glob("dt=*"))
    users = pd.read_parquet(snapshots[-1])
    users = users.rename(columns={v: k for k, v in settings.sources["users"].columns.items()})
    table = []
    for k in range(nights):
        night = first_night + timedelta(days=k)
        if not (settings.paths.lake / "raw" / "users" / f"dt={night.isoformat()}").exists():
            deliver(settings, "users", users, night)  # the customers' snapshot of the day (they do not change)
        drift = "ok"
        for step in steps_run:
            try:
                steps.run(step, night, settings)
            except DriftFailed as err:  # after the audience was published: the night's send goes out
                log.warning("night %s: %s", night, err)
                drift = "fail"
        audience = pd.read_parquet(partition_dir(settings, AUDIENCE, night))
        sends = send(settings, audience, truth, night, seed)
        gate_path = report_dir(settings, night) / GATE_REPORT
        estimate = json.loads(gate_path.read_text())["deployed_value"] if gate_path.exists() else {}
        monitoring_path = report_dir(settings, night) / MONITORING_REPORT
        monitoring = json.loads(monitoring_path.read_text()) if monitoring_path.exists() else {}
        line = {
            "night": night.isoformat(),
            "policy": audience["policy"].iloc[0],
            "drift": drift,
            "sends": sends,
            **{route: int((audience["assignment"] == route).sum()) for route in ("target", "holdout", "explore")},
            "estimated_value": estimate.get("value"),
            "estimated_low": estimate.get("low"),
            "estimated_high": estimate.get("high"),
            "true_value": true_value(audience, truth, settings),
            "monitoring": monitoring.get("action"),
        }
        log.info("night %s: %s", night, line)
        table.append(line)
    return table


# Rounds of the loop in memory (no lake, no Spark): for tests and benchmarks of what the nights
# learn from their own sends. The demo's customers and truth, their attributes as features.
DEMO_SPEC = FeatureSpec(
    attributes={
        "age": {"kind": "numeric"},
        "tenure_days": {"kind": "numeric"},
        "gender": {"kind": "categorical"},
        "customer_type": {"kind": "categorical"},
        "email_domain": {"kind": "categorical"},
    }
)


def in_memory(settings: Settings, exploration_share: float) -> Settings:
    """settings for in-memory rounds: the demo's arms at an even split, its attributes as the only
    features, the primary outcome only, and the given exploration share."""
    arms = ["control", *DEMO_ARMS]
    exp = Experiment(
        control="control",
        arms=list(DEMO_ARMS),
        expected_split=dict.fromkeys(arms, 1 / len(arms)),
        attribution_window_days=7,
        qualifying_response_types=["click"],
        srm_p_value_min=0.001,
    )
    targeting = settings.targeting.model_copy(update={"outcomes": {}, "exploration_share": exploration_share})
    return settings.model_copy(update={"experiment": exp, "features": DEMO_SPEC, "targeting": targeting})


def demo_customers(rng: np.random.Generator, n: int, night: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n of the generator's customers: their features (DEMO_SPEC) and their truth (p_<arm>)."""
    users = draw_users(rng, n, night, 30)
    features = pd.DataFrame(
        {
            "customer_id": users["customer_id"],
            "age": users["age"].astype(float),
            "tenure_days": (pd.Timestamp(night) - pd.to_datetime(users["signup_date"])).dt.days.astype(float),
            "gender": users["gender"],
            "customer_type": users["customer_type"],
            "email_domain": users["email"].str.split("@").str[1],
        }
    )
    return features, true_probabilities(users, night)


def drawn_sends(
    features: pd.DataFrame, truth: pd.DataFrame, rows: np.ndarray, arms: np.ndarray, rng, **record
) -> pd.DataFrame:
    """Sends of arms to the customers at rows, labelled from the truth, with the record's columns."""
    options = probability_arms(truth.columns)
    p = truth[[p_column(a) for a in options]].to_numpy()[rows, pd.Categorical(arms, categories=options).codes]
    sends = features.iloc[rows].reset_index(drop=True)
    return sends.assign(arm=arms, label=(rng.random(len(rows)) < p).astype(int), **record)


def randomized_sends(features: pd.DataFrame, truth: pd.DataFrame, n: int, settings: Settings, rng) -> pd.DataFrame:
    """n sends of a randomized campaign (random customers, arms at expected_split)."""
    split = settings.experiment.expected_split
    rows = rng.integers(0, len(features), n)
    arms = rng.choice(np.array(list(split)), n, p=list(split.values()))
    propensity = pd.Series(arms).map(split).to_numpy()
    return drawn_sends(
        features,
        truth,
        rows,
        arms,
        rng,
        campaign_id="randomized",
        assignment="randomized",
        propensity=propensity,
        inclusion_probability=1.0,
    )


def own_sends(
    chosen: pd.DataFrame, features: pd.DataFrame, truth: pd.DataFrame, settings: Settings, first: date, nights: int, rng
) -> pd.DataFrame:
    """The sends of `nights` nights of one audience (policy.apply's `chosen`, rows as features'),
    each night's routes drawn afresh by policy.assign; with the policy's choice beside each send."""
    exp, targeting = settings.experiment, settings.targeting
    out = []
    for k in range(nights):
        night = first + timedelta(days=k)
        draw = policy.holdout_draw(chosen["customer_id"], night)
        tonight = chosen.assign(holdout=policy.is_holdout(chosen["selected"], draw, targeting), resting=False)
        record = policy.assign(tonight, targeting, exp.control, exp.expected_split, night, targeting.exploration_share)
        rows = np.flatnonzero(record["assigned_arm"].notna().to_numpy())
        out.append(
            drawn_sends(
                features,
                truth,
                rows,
                record["assigned_arm"].to_numpy()[rows],
                rng,
                campaign_id=settings.export.campaign_of(night),
                **{c: record[c].to_numpy()[rows] for c in ("assignment", "propensity", "inclusion_probability")},
                recommended_arm=chosen["recommended_arm"].to_numpy()[rows],
                selected=chosen["selected"].to_numpy()[rows],
            )
        )
    return pd.concat(out, ignore_index=True)


def uplifts_of(model, features: pd.DataFrame) -> pd.DataFrame:
    """customer_id and a fitted model's targeting uplifts (uplift_<arm>, calibrated) for features' rows."""
    predicted = model.predict(None, features).reset_index(drop=True)
    uplifts = predicted[[c for c in predicted.columns if is_uplift_column(c)]]
    return pd.concat([features[["customer_id"]].reset_index(drop=True), uplifts], axis=1)


def ranking_gain(uplifts: pd.DataFrame, truth: pd.DataFrame, arms: list[str], top: float = 0.3) -> float:
    """How well uplifts rank customers, against the truth: summed over arms, the true uplift of the
    top share by predicted uplift above everyone's (rows of uplifts and truth alike)."""
    total = 0.0
    for arm in arms:
        tau = (truth[p_column(arm)] - truth["p_control"]).to_numpy()
        best = np.argsort(-uplifts[uplift_column(arm)].to_numpy(), kind="stable")[: int(top * len(tau))]
        total += tau[best].mean() - tau.mean()
    return total
