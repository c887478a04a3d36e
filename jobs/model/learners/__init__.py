"""The learners behind one interface: how an arm's uplift is estimated from the training rows.

Every learner shares the outcome models (`fit_outcomes`): per arm (control included) and outcome, a
LightGBM classifier on the rows of that arm, which serves p_<key>. A learner that builds on them
(X, DR) also gets each training row's out-of-fold predictions (`Nuisance.oof`: by two more models
per key, each fitted on the half of the customers the row is not in), so that its effect models
learn from outcome models that never saw the row. A learner module that needs none sets
`OUT_OF_FOLD = False` (the T-learner): with only such learners, the cross-fitted pairs are not fitted.

A learner is a module of this package named as in `training.learners`, with one function:

    effects(nuisance: Nuisance, arm: str, outcome: str | None, params: dict) -> list[(weight, Booster)] | None

returning the weighted LightGBM regressors whose sum is the arm's raw uplift for outcome, or None
for the T-learner's ``p_arm - p_control``; and, when it reads no out-of-fold prediction,
``OUT_OF_FOLD = False``. params: training.lightgbm with one entry of
training.effect_grid on top. Adding a learner is one module here and its name in the conf.
What all learners then share (calibration, selection by value, the gate) is jobs.model.selection's.
"""

from __future__ import annotations

import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from jobs.model.policy import stable_draw
from jobs.model.portable import design_matrix
from jobs.model.splits import customer_split, early_stopping_split
from jobs.names import key, label_column, p_column
from jobs.settings import Settings, UserError

EARLY_STOPPING_ROUNDS = 30
FOLDS = 2


@dataclass
class Nuisance:
    """What every learner fits its effect models from: the fit rows, their design matrix, their
    out-of-fold outcome predictions and the probability of each row's arm."""

    rows: pd.DataFrame  # the fit rows (customer_id, arm, labels, ...), index 0..n-1
    x: pd.DataFrame  # their design matrix
    oof: pd.DataFrame  # p_<key> of every arm and outcome, by a model that did not see the row's customer
    propensity: np.ndarray  # e_i(A_i): the received arm's probability among the rows sent
    control: str
    seed: int

    def label(self, outcome: str | None) -> np.ndarray:
        return self.rows[label_column(outcome)].to_numpy(float)

    def received(self) -> np.ndarray:
        return self.rows["arm"].to_numpy()


class UnknownLearnerError(UserError, ValueError):
    """training.learners names a learner no module of jobs.model.learners implements."""


def learner(name: str):
    """The module implementing learner `name` (its `effects` function)."""
    if not name.isidentifier():
        raise UnknownLearnerError(f"training.learners: '{name}' is not a learner name")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        known = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem != "__init__")
        raise UnknownLearnerError(f"training.learners: no learner '{name}'; the learners are {known}") from err
    return module


def fit_classifier(rows: pd.DataFrame, x: pd.DataFrame, label: str, params: dict, seed: int) -> lgb.LGBMClassifier:
    """A LightGBM classifier of label on rows (x: their design matrix), early-stopped on 15% of the customers."""
    fit, valid = early_stopping_split(rows.assign(_i=np.arange(len(rows))), label, seed)
    model = lgb.LGBMClassifier(**params, random_state=seed, n_jobs=1, verbose=-1)
    model.fit(
        x.iloc[fit["_i"]],
        fit[label],
        eval_X=(x.iloc[valid["_i"]],),
        eval_y=(valid[label],),
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    return model


def fit_regressor(rows: pd.DataFrame, x: pd.DataFrame, target: np.ndarray, params: dict, seed: int) -> lgb.Booster:
    """A LightGBM regressor of target on rows (x: their design matrix), early-stopped on 15% of the customers."""
    frame = rows[["customer_id"]].assign(_i=np.arange(len(rows)), _target=target)
    fit, valid = early_stopping_split(frame, "_target", seed)
    model = lgb.LGBMRegressor(**params, random_state=seed, n_jobs=1, verbose=-1)
    model.fit(
        x.iloc[fit["_i"]],
        fit["_target"],
        eval_X=(x.iloc[valid["_i"]],),
        eval_y=(valid["_target"],),
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    return model.booster_


def fit_outcomes(
    rows: pd.DataFrame, settings: Settings, categories: dict[str, list[str]], out_of_fold: bool = True
) -> tuple[dict[str, list[lgb.Booster]], Nuisance]:
    """The served outcome model of every arm and outcome (key -> [booster], fitted on all of rows), and
    the Nuisance the effect models learn from: with out_of_fold, a uniform sample of the customers
    (at most training.effect_max_rows rows, `effect_sample`) with each row's predictions by a model of
    the same arm fitted on the other half of the sample (FOLDS cross-fitted models per key, used for
    nothing else); without, all rows with the served models' own (in-sample) predictions, for
    learners that need none.

    Fitted side by side, one thread each: small trees gain little from threads within one fit, and
    lose a lot when the cores are shared (Spark workers, other jobs)."""
    exp, cfg, spec = settings.experiment, settings.training, settings.features
    rows = rows.reset_index(drop=True)
    x = design_matrix(rows, spec.numeric, categories)
    sampled = effect_sample(rows, cfg.effect_max_rows, cfg.seed) if out_of_fold else np.ones(len(rows), dtype=bool)
    fold = np.where(sampled, (_fold_draw(rows, cfg.seed) * FOLDS).astype(int), -1)  # -1: not in the sample
    pairs = [(arm, outcome) for outcome in [None, *settings.targeting.outcomes] for arm in exp.all_arms]
    served = None  # the task of a model on all of the arm's rows
    tasks = [(served, arm, outcome) for arm, outcome in pairs]
    tasks += [(f, arm, outcome) for f in range(FOLDS) for arm, outcome in pairs] if out_of_fold else []

    def fit(task: tuple[int | None, str, str | None]) -> lgb.Booster:
        f, arm, outcome = task
        label = label_column(outcome)
        of_arm = ((rows["arm"] == arm) & rows[label].notna()).to_numpy()
        if f is not served:
            of_arm &= sampled
        mine = of_arm if f is served else of_arm & (fold != f)
        if rows.loc[mine, label].nunique() < 2:  # a rare outcome on few rows: this half never saw it
            mine = of_arm  # that half's model on every row of the arm (its out-of-fold predictions are in-sample)
        if rows.loc[mine, label].nunique() < 2:
            raise ValueError(
                f"arm '{arm}' has {int(mine.sum())} training rows and a single value of {label}"
                + (f" (outcome '{outcome}')" if outcome else "")
                + ": cannot fit"
            )
        return fit_classifier(rows[mine], x[mine], label, cfg.lightgbm, cfg.seed).booster_

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        fitted = dict(zip(tasks, pool.map(fit, tasks), strict=True))
    boosters = {key(arm, outcome): [fitted[(served, arm, outcome)]] for arm, outcome in pairs}
    threads = os.cpu_count() or 1
    rows, x, fold = rows[sampled].reset_index(drop=True), x[sampled].reset_index(drop=True), fold[sampled]
    oof = pd.DataFrame(index=rows.index)
    for arm, outcome in pairs:
        if not out_of_fold:
            oof[p_column(arm, outcome)] = fitted[(served, arm, outcome)].predict(x, num_threads=threads)
            continue
        column = np.empty(len(rows))
        for f in range(FOLDS):
            held = fold == f
            if held.any():
                column[held] = fitted[(f, arm, outcome)].predict(x[held], num_threads=threads)
        oof[p_column(arm, outcome)] = column
    propensity = rows["propensity"].to_numpy(float) / rows["inclusion_probability"].to_numpy(float)
    return boosters, Nuisance(rows, x, oof, propensity, exp.control, cfg.seed)


def effect_sample(rows: pd.DataFrame, max_rows: int | None, seed: int) -> np.ndarray:
    """True on the rows of a uniform sample of the customers holding about max_rows rows (all: None or fewer)."""
    if max_rows is None or len(rows) <= max_rows:
        return np.ones(len(rows), dtype=bool)
    return customer_split(rows["customer_id"], max_rows / len(rows), seed, "effects")


def _fold_draw(rows: pd.DataFrame, seed: int) -> np.ndarray:
    """Each row's customer's stable draw in [0, 1): its cross-fitting fold is floor(draw * FOLDS)."""
    codes, uniques = pd.factorize(rows["customer_id"])
    return stable_draw(pd.Series(uniques).astype(str) + f"|{seed}|crossfit")[codes]
