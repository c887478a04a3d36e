"""Splits of the training rows by customer: the gate's holdout, the selection rows, the cross-fitting
folds and early stopping all put every row of a customer on one side."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from jobs.model.policy import stable_draw

EARLY_STOPPING_SHARE = 0.15


def customer_split(customer_ids: pd.Series, fraction: float, seed: int, stream: str) -> np.ndarray:
    """True on the rows of a stable `fraction` of the customers, drawn per customer from seed and
    stream: all of a customer's rows fall on one side, so no model is judged or early-stopped on
    a customer whose other nights it was fitted on."""
    codes, uniques = pd.factorize(customer_ids)
    draw = stable_draw(pd.Series(uniques).astype(str) + f"|{seed}|{stream}")
    return draw[codes] < fraction


def early_stopping_split(rows: pd.DataFrame, label: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows to fit on and the validation rows that stop the boosting: 15% of the customers.
    Where that leaves either side with a single label (a handful of customers or responders), a
    split of the rows stratified by label instead: early stopping needs both labels on each side.
    A continuous label (an effect model's target) is split by customer only; a label held by a single
    row leaves no split: the rows then stop on themselves (the boosting runs to its rounds)."""
    valid = customer_split(rows["customer_id"], EARLY_STOPPING_SHARE, seed, "early_stopping")
    fit, held = rows[~valid], rows[valid]
    if rows[label].nunique() > 2 or (fit[label].nunique() == 2 and held[label].nunique() == 2):
        return fit, held
    if rows[label].value_counts().min() < 2:  # a label on one row: no split keeps it on both sides
        return rows, rows
    fit, held = train_test_split(rows, test_size=EARLY_STOPPING_SHARE, stratify=rows[label], random_state=seed)
    return fit, held
