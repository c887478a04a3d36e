"""Demo data: users, sends and responses of a randomized e-mail test with known true effects.

The true response probability of a customer depends only on their attributes, so the
ground truth (one row per customer, one probability per arm) gives every customer's true
uplift. It is written under `paths.ground_truth`, apart from the lake: the pipeline never
reads it; tests and benchmarks do.

Effects (probability points added to the control probability):
- subject_1: +8 for customers under 30, **-5 for customers 60 and over** (it harms them),
  +1 otherwise.
- subject_2: **+12 for regular customers with at least a year of tenure** (it clearly beats
  the other messages there), +1 otherwise.
- subject_3: +8 for gmail.com addresses, +3 for occasional customers, otherwise 0.
Control: 5% base, +4 for vip, +2 under 30.

A harmful outcome, unsubscribes (response_type `unsubscribe`, within the attribution window):
0.4% of every send, control included, and **subject_3 adds 4 points for gmail.com customers
aged 45 and over**, the segment where it also wins clicks. The ground truth holds them as
`p_<arm>__unsubscribe`. They are drawn from a random stream of their own, so the rest of the
data is the same draw for draw as without them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from jobs.names import p_column
from jobs.settings import Settings

log = logging.getLogger(__name__)
DEMO_ARMS = ("subject_1", "subject_2", "subject_3")
DOMAINS = np.array(["gmail.com", "yahoo.com", "outlook.com", "corp.example"])
DOMAIN_P = [0.45, 0.2, 0.25, 0.1]
TYPES = np.array(["regular", "vip", "occasional"])
TYPE_P = [0.55, 0.1, 0.35]
UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True)
class GeneratedData:
    customers: int
    sends: int
    responses: int
    first_day: date
    last_day: date


def true_probabilities(users: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """P(respond | x, arm) for each user and each arm, control included."""
    age = users["age"].to_numpy()
    tenure = (pd.Timestamp(as_of) - pd.to_datetime(users["signup_date"])).dt.days.to_numpy()
    ctype = users["customer_type"].to_numpy()
    domain = users["email"].str.split("@").str[1].to_numpy()
    p_control = 0.05 + 0.04 * (ctype == "vip") + 0.02 * (age < 30)
    lift = {
        "subject_1": np.where(age < 30, 0.08, np.where(age >= 60, -0.05, 0.01)),
        "subject_2": np.where((ctype == "regular") & (tenure >= 365), 0.12, 0.01),
        "subject_3": 0.08 * (domain == "gmail.com") + 0.03 * (ctype == "occasional"),
    }
    probs = {"customer_id": users["customer_id"].to_numpy(), "p_control": p_control}
    for arm, effect in lift.items():
        probs[p_column(arm)] = np.clip(p_control + effect, 0.001, 0.95)
    harm = {
        "control": np.full(len(users), 0.004),
        "subject_1": np.full(len(users), 0.004),
        "subject_2": np.full(len(users), 0.004),
        "subject_3": 0.004 + 0.04 * ((domain == "gmail.com") & (age >= 45)),
    }
    for arm, p in harm.items():
        probs[p_column(arm, UNSUBSCRIBE)] = p
    return pd.DataFrame(probs)


def draw_users(rng: np.random.Generator, n: int, last_day: date, days: int) -> pd.DataFrame:
    # Most customers joined in the last three years; a few join during the experiment.
    offsets = np.where(rng.random(n) < 0.05, rng.integers(0, days, n), rng.integers(days, 3 * 365, n))
    signup = pd.to_datetime(last_day) - pd.to_timedelta(offsets, unit="D")
    ids = np.char.add("C", np.char.zfill(np.arange(1, n + 1).astype(str), 7))
    return pd.DataFrame(
        {
            "customer_id": ids,
            "signup_date": signup.date,
            "age": np.where(rng.random(n) < 0.02, rng.integers(15, 18, n), rng.integers(18, 80, n)),
            "gender": rng.choice(np.array(["F", "M", "U"]), n, p=[0.48, 0.48, 0.04]),
            "customer_type": rng.choice(TYPES, n, p=TYPE_P),
            "email": np.char.add(np.char.add(ids.astype(str), "@"), rng.choice(DOMAINS, n, p=DOMAIN_P)),
        }
    )


def _write(frame: pd.DataFrame, folder: Path, fmt: str, part: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(folder / f"{part}.csv", index=False)
    else:
        frame.to_parquet(
            folder / f"{part}.parquet", index=False, coerce_timestamps="us", allow_truncated_timestamps=True
        )


def deliver(settings: Settings, source: str, frame: pd.DataFrame, day: date, part: str = "part-0") -> None:
    """Write one day's delivery of a source under the delivered column names from conf (as file `part`:
    a delivery that arrives in several files gets one name per file)."""
    conf = settings.sources[source]
    delivered = frame.rename(columns=conf.columns)
    _write(delivered, settings.paths.lake / "raw" / source / f"dt={day.isoformat()}", conf.format, part)


def draw_responses(
    sends: pd.DataFrame,
    p_respond: np.ndarray,
    p_unsubscribe: np.ndarray,
    treated: np.ndarray,
    rng: np.random.Generator,
    harm_rng: np.random.Generator,
    window: int,
) -> list[pd.DataFrame]:
    """The responses of sends (customer_id, sent_at) drawn from their true probabilities: qualifying
    clicks and purchases, opens of the treated (not qualifying), and unsubscribes (from harm_rng)."""
    n = len(sends)
    responded = rng.random(n) < p_respond
    delay = pd.to_timedelta(rng.exponential(1.5, n).clip(0.01, window - 0.01), unit="D")
    qualifying = pd.DataFrame(
        {
            "customer_id": sends["customer_id"].to_numpy(),
            "responded_at": sends["sent_at"].to_numpy() + delay,
            "response_type": rng.choice(np.array(["click", "purchase"]), n, p=[0.7, 0.3]),
        }
    )[responded]
    # Opens are responses too, but not qualifying ones: the label must ignore them.
    opened = treated & (rng.random(n) < 0.3)
    opens = pd.DataFrame(
        {
            "customer_id": sends["customer_id"].to_numpy(),
            "responded_at": sends["sent_at"].to_numpy() + pd.to_timedelta(rng.random(n), unit="D"),
            "response_type": "open",
        }
    )[opened]
    unsubscribed = harm_rng.random(n) < p_unsubscribe
    delay = pd.to_timedelta(harm_rng.exponential(2.0, n).clip(0.01, window - 0.01), unit="D")
    unsubscribes = pd.DataFrame(
        {
            "customer_id": sends["customer_id"].to_numpy(),
            "responded_at": sends["sent_at"].to_numpy() + delay,
            "response_type": UNSUBSCRIBE,
        }
    )[unsubscribed]
    return [qualifying, opens, unsubscribes]


def generate(
    settings: Settings,
    *,
    customers: int,
    days: int,
    sends_per_day: int,
    last_day: date,
    seed: int,
    tail: bool = False,
    shift_on: date | None = None,
) -> GeneratedData:
    """Land `days` daily deliveries ending on last_day, and write the ground truth.

    tail: also deliver the responses that come after last_day (in their own later dt= folders,
    which a night reads only once its date comes), as the loop simulation needs (jobs.demo.simulate).
    shift_on: from that day on, the users snapshots show a shifted population (planted_shift), for
    drift monitoring to catch.

    Streams day by day: a day's users snapshot and sends are written as they are drawn, and a
    day's responses as soon as no later send can add to them, so memory holds the customers
    and a day of activity, whatever the number of days. Logs progress per day.
    """
    if tuple(settings.experiment.arms) != DEMO_ARMS:
        raise ValueError(f"the demo generator knows arms {DEMO_ARMS}, conf has {settings.experiment.arms}")
    rng = np.random.default_rng(seed)
    first_day = last_day - timedelta(days=days - 1)
    users = draw_users(rng, customers, last_day, days)
    truth = true_probabilities(users, last_day)
    truth_dir = settings.paths.ground_truth
    truth_dir.mkdir(parents=True, exist_ok=True)
    truth.to_parquet(truth_dir / "customers.parquet", index=False)

    arms = np.array(settings.experiment.all_arms)
    split = np.array([settings.experiment.expected_split[a] for a in arms])
    arm_prob = truth[[p_column(a) for a in arms]].to_numpy()
    harm_prob = truth[[p_column(a, UNSUBSCRIBE) for a in arms]].to_numpy()
    harm_rng = np.random.default_rng([seed, 1])  # its own stream: the other draws do not move
    signup = pd.to_datetime(users["signup_date"]).to_numpy()
    window = settings.experiment.attribution_window_days
    responses = _ResponseDays(settings, keep_after=None if tail else last_day)
    n_sends = 0

    for i in range(days):
        day = first_day + timedelta(days=i)
        snapshot = users[signup <= np.datetime64(day)]
        if shift_on is not None and day >= shift_on:
            snapshot = planted_shift(snapshot, seed)
        deliver(settings, "users", snapshot, day)
        sends, who, arm_idx = _draw_sends(rng, users, signup, day, arms, split, sends_per_day, n_sends)
        deliver(settings, "sends", sends, day)
        n_sends += who.size
        for frame in draw_responses(
            sends, arm_prob[who, arm_idx], harm_prob[who, arm_idx], arm_idx > 0, rng, harm_rng, window
        ):
            responses.add(frame)
        responses.flush(before=day + timedelta(days=1))  # sends of later days respond later
        log.info(
            "generated %s: %d/%d days, %s sends, %s responses", day, i + 1, days, f"{n_sends:,}", f"{responses.n:,}"
        )
    responses.flush(before=None)
    return GeneratedData(customers, n_sends, responses.n, first_day, last_day)


def _draw_sends(
    rng: np.random.Generator,
    users: pd.DataFrame,
    signup: np.ndarray,
    day: date,
    arms: np.ndarray,
    split: np.ndarray,
    sends_per_day: int,
    first_send: int,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One day's randomized campaign: its sends, the customers' row indices and the arms' indices."""
    day_ts = np.datetime64(day)
    eligible = np.flatnonzero((signup < day_ts) & (users["age"].to_numpy() >= 18))
    who = rng.choice(eligible, size=min(sends_per_day, eligible.size), replace=False)
    arm_idx = rng.choice(arms.size, size=who.size, p=split)
    sent_at = pd.Timestamp(day) + pd.to_timedelta(rng.integers(8 * 3600, 20 * 3600, who.size), unit="s")
    sends = pd.DataFrame(
        {
            "send_id": [f"S{first_send + k:09d}" for k in range(who.size)],
            "campaign_id": f"cmp_{day:%Y%m%d}",
            "customer_id": users["customer_id"].to_numpy()[who],
            "sent_at": sent_at,
            "arm": arms[arm_idx],
        }
    )
    return sends, who, arm_idx


class _ResponseDays:
    """Responses held by the day they happen, delivered once no later send can add to that day."""

    def __init__(self, settings: Settings, keep_after: date | None) -> None:
        self.settings = settings
        self.keep_after = keep_after  # drop responses after this day; None keeps them all
        self.pending: dict[date, list[pd.DataFrame]] = {}
        self.n = 0

    def add(self, frame: pd.DataFrame) -> None:
        for day_out, part in frame.groupby(frame["responded_at"].dt.date):
            if self.keep_after is None or day_out <= self.keep_after:
                self.pending.setdefault(day_out, []).append(part)

    def flush(self, before: date | None) -> None:
        """Deliver every response day earlier than `before` (every one held, when None)."""
        for day_out in sorted(d for d in self.pending if before is None or d < before):
            frame = pd.concat(self.pending.pop(day_out)).sort_values("responded_at", kind="stable")
            frame.insert(0, "response_id", [f"R{self.n + k:09d}" for k in range(len(frame))])
            self.n += len(frame)
            deliver(self.settings, "responses", frame, day_out)


SHIFTED_DOMAIN = "newmail.example"


def planted_shift(users: pd.DataFrame, seed: int, share: float = 0.3, years: int = 15) -> pd.DataFrame:
    """users with a realistic shift planted: a share of the customers (the same ones for a seed)
    now show a new e-mail domain and are `years` older, as when an acquisition brings in an older
    segment on a new mail provider. Their responses do not change (the truth is the generator's)."""
    chosen = pd.util.hash_array(users["customer_id"].to_numpy().astype(object), hash_key=f"{seed:016d}"[-16:])
    moved = chosen < np.uint64(int(share * 2**64))
    out = users.copy()
    out.loc[moved, "email"] = out.loc[moved, "email"].str.split("@").str[0] + f"@{SHIFTED_DOMAIN}"
    out.loc[moved, "age"] = out.loc[moved, "age"] + years
    return out


def parse_day(value: str) -> date:
    return datetime.strptime(value, "%Y-%m-%d").date()
