"""A one-off e-mail experiment shaped unlike the demo's, delivered as CSV under its own column names.

An independent simulator for "bring your own data" (README): one users snapshot, one send day
with two campaigns randomized with different splits, responses arriving on the days after.
Its attributes (recency, spend, channel, region, newcomer flag, first order date) and its
arms (mens_email, womens_email; control no_email) are none of the demo's.

True effects (probability points of a visit within 14 days), `effects="default"`:
- mens_email: +10 for customers whose last purchase is at most 4 months old, +1 otherwise;
- womens_email: +15 for urban customers who spent more than 150, 0 otherwise;
control: 6% base, +4 when the last purchase is at most 3 months old.
`effects="uniform"`: mens_email +8 for everyone (a flat arm), womens_email +20 for urban
customers who spent more than 150. `effects="none"`: no message changes anything.

Two more event kinds: `conversion`, a purchase after a fifth of the visits (so an arm's effect
on conversions is a fifth of its effect on visits), and `unsubscribe`: 0.3% of every send
(control included) and, with the default effects, **+6 points for new customers sent
mens_email** (`true_unsubscribe_uplift`). Unsubscribes are drawn from their own random stream,
so the other events are the same draw for draw as without them.

    python tests/email_experiment.py <lake>   # writes <lake>/raw/{users,sends,responses}/dt=*/
"""

from __future__ import annotations

import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

SNAPSHOT_DAY = date(2026, 9, 30)
SEND_DAY = date(2026, 10, 1)
WINDOW_DAYS = 14
CAMPAIGNS = {  # campaign: (customers, split)
    "autumn_mail": (20_000, {"no_email": 0.2, "mens_email": 0.4, "womens_email": 0.4}),
    "retention_test": (4_000, {"no_email": 0.5, "womens_email": 0.5}),
}


def _write(frame: pd.DataFrame, lake: Path, source: str, day: date) -> None:
    folder = lake / "raw" / source / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{source}.csv", index=False)


def users(rng: np.random.Generator, n: int) -> pd.DataFrame:
    ids = [f"u{i:06d}" for i in range(n)]
    return pd.DataFrame(
        {
            "cust": ids,
            "recency_months": rng.integers(1, 13, n),
            "spend_to_date": np.round(rng.lognormal(4.8, 0.6, n), 2),
            "channel": rng.choice(["Phone", "Web", "Multichannel"], n, p=[0.45, 0.45, 0.1]),
            "region": rng.choice(["Urban", "Suburban", "Rural"], n, p=[0.4, 0.45, 0.15]),
            "is_new": rng.integers(0, 2, n),
            "first_order": (pd.Timestamp(SNAPSHOT_DAY) - pd.to_timedelta(rng.integers(30, 2000, n), unit="D")).date,
            "contact_email": [f"{c}@mail.example" for c in ids],
        }
    )


def true_uplift(people: pd.DataFrame, effects: str = "default") -> dict[str, np.ndarray]:
    """Each arm's true effect on the visit probability, per customer."""
    recent = people["recency_months"].to_numpy()
    segment = (people["region"].to_numpy() == "Urban") & (people["spend_to_date"].to_numpy() > 150)
    zero = np.zeros(len(people))
    if effects == "none":
        return {"mens_email": zero, "womens_email": zero}
    if effects == "uniform":
        return {"mens_email": zero + 0.08, "womens_email": np.where(segment, 0.20, 0.0)}
    return {"mens_email": np.where(recent <= 4, 0.10, 0.01), "womens_email": np.where(segment, 0.15, 0.0)}


def true_unsubscribe_uplift(people: pd.DataFrame, effects: str = "default") -> dict[str, np.ndarray]:
    """Each arm's true effect on the unsubscribe probability, per customer."""
    zero = np.zeros(len(people))
    if effects != "default":
        return {"mens_email": zero, "womens_email": zero}
    return {"mens_email": np.where(people["is_new"].to_numpy() == 1, 0.06, 0.0), "womens_email": zero}


def visit_probability(people: pd.DataFrame, arm: np.ndarray, effects: str = "default") -> np.ndarray:
    base = 0.06 + 0.04 * (people["recency_months"].to_numpy() <= 3)
    lift = true_uplift(people, effects)
    return (
        base
        + np.where(arm == "mens_email", lift["mens_email"], 0)
        + np.where(arm == "womens_email", lift["womens_email"], 0)
    )


def write(lake: Path, seed: int = 3, effects: str = "default", scale: float = 1.0) -> dict[str, int]:
    """Land the experiment's deliveries under lake/raw (campaign sizes times scale); return row counts."""
    rng = np.random.default_rng(seed)
    campaigns = {name: (int(n * scale), split) for name, (n, split) in CAMPAIGNS.items()}
    people = users(rng, sum(n for n, _ in campaigns.values()))
    _write(people, lake, "users", SNAPSHOT_DAY)
    order = rng.permutation(len(people))
    sends, start = [], 0
    for campaign, (n, split) in campaigns.items():
        who = order[start : start + n]
        start += n
        arms = rng.choice(list(split), n, p=list(split.values()))
        seconds = rng.integers(8 * 3600, 11 * 3600, n)
        sends.append(
            pd.DataFrame(
                {
                    "assignment_id": [f"{campaign}-{i}" for i in range(n)],
                    "campaign": campaign,
                    "cust": people["cust"].to_numpy()[who],
                    "sent_ts": pd.Timestamp(SEND_DAY) + pd.to_timedelta(seconds, unit="s"),
                    "variant": arms,
                }
            )
        )
    sent = pd.concat(sends, ignore_index=True)
    _write(sent, lake, "sends", SEND_DAY)

    chosen = people.set_index("cust").loc[sent["cust"]].reset_index()
    visited = rng.random(len(sent)) < visit_probability(chosen, sent["variant"].to_numpy(), effects)
    delay = pd.to_timedelta(rng.exponential(2.0, len(sent)).clip(0.01, WINDOW_DAYS - 0.01), unit="D")
    visits = pd.DataFrame({"cust": sent["cust"], "event_ts": sent["sent_ts"] + delay, "event_kind": "visit"})[visited]
    bought = visits.sample(frac=0.2, random_state=seed).assign(
        event_ts=lambda v: v["event_ts"] + pd.Timedelta(minutes=20), event_kind="conversion"
    )
    harm_rng = np.random.default_rng([seed, 1])  # its own stream: the other events do not move
    harm = true_unsubscribe_uplift(chosen, effects)
    arm = sent["variant"].to_numpy()
    p_unsubscribe = (
        0.003
        + np.where(arm == "mens_email", harm["mens_email"], 0)
        + np.where(arm == "womens_email", harm["womens_email"], 0)
    )
    unsubscribed = harm_rng.random(len(sent)) < p_unsubscribe
    later = pd.to_timedelta(harm_rng.exponential(3.0, len(sent)).clip(0.01, WINDOW_DAYS - 0.01), unit="D")
    unsubscribes = pd.DataFrame(
        {"cust": sent["cust"], "event_ts": sent["sent_ts"] + later, "event_kind": "unsubscribe"}
    )[unsubscribed]
    events = pd.concat([visits, bought, unsubscribes]).sort_values("event_ts", kind="stable").reset_index(drop=True)
    events.insert(0, "event_id", [f"e{i:07d}" for i in range(len(events))])
    for day, part in events.groupby(events["event_ts"].dt.date):
        _write(part, lake, "responses", day)
    return {"users": len(people), "sends": len(sent), "responses": len(events)}


def last_response_day() -> date:
    return SEND_DAY + timedelta(days=WINDOW_DAYS)


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
