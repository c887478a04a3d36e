"""The arms' average effects in a night's training set, read from the lake batch by batch: the
constant arms' uplift at scoring time, the gate's constant policies and the guardrail bounds."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow.dataset as pads

from jobs.data.lake import MissingInputError, partition_dir
from jobs.model.policy import arm_counts, average_effects
from jobs.names import key, label_column
from jobs.settings import Settings


def training_counts(settings: Settings, run_date: date, label: str = "label") -> pd.DataFrame:
    """arm_counts of label over run_date's training set, streamed batch by batch."""
    path = partition_dir(settings, "features/training", run_date)
    if not path.exists():
        raise MissingInputError(f"no training set at {path}: run `uplift etl --run-date {run_date}` first")
    columns = ["campaign_id", "arm", label, "propensity"]
    parts = [
        arm_counts(batch.to_pandas(), label)
        for batch in pads.dataset(str(path), format="parquet").to_batches(columns=columns)
    ]
    if not parts:
        return arm_counts(pd.DataFrame(columns=columns), label)
    frame = pd.concat(parts, ignore_index=True)
    return frame.groupby(["campaign_id", "arm"], as_index=False, observed=True).sum()


def training_effects(settings: Settings, run_date: date) -> dict[str, dict]:
    """Every arm's average effect on every outcome in run_date's training set, by key(arm, outcome)."""
    exp, out = settings.experiment, {}
    for outcome in [None, *settings.targeting.outcomes]:
        effects = average_effects(training_counts(settings, run_date, label_column(outcome)), exp.control, exp.arms)
        out |= {key(arm, outcome): e for arm, e in effects.items()}
    return out
