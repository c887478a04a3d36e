"""Fit every candidate learner, calibrate each, and keep the one whose decisions are worth the most.

The training rows (the gate's holdout already taken out) are split by customer:
- the fit rows (1 - training.selection_fraction): the shared outcome models (jobs.model.learners,
  cross-fitted) and every candidate's effect models;
- the selection rows: never fitted on. Each candidate's raw uplifts there are calibrated
  (jobs.model.calibration) two ways crossed: a curve fitted on one half of the customers calibrates
  the other half. Each candidate's policy (jobs.model.policy, the audience's budgets scaled to these
  rows) is then valued doubly robustly (jobs.model.evaluation: the shared outcome models and the rows'
  propensities, paired customer bootstrap), beside every constant policy.

Candidates are every learner of `training.learners` with every entry of `training.effect_grid`
(LightGBM settings over training.lightgbm for the effect models; a learner without effect models is
one candidate). The first candidate serves unless another beats it with evidence: its value's paired
difference over the first has a 95% interval above zero (then the highest such value wins). Picking
the highest point value among candidates whose intervals overlap would pick the luckiest on these
rows (the winner's curse), and the gate would judge a model that is no better than the first. The
winner's calibration lines are refitted on all the selection rows and it becomes the challenger,
which the gate judges on its own holdout, never used here. The record of every candidate's value
is logged with the model (jobs.model.train).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from jobs.model import calibration, evaluation, learners, policy
from jobs.model.portable import Loaded, PortableModel, calibrate, design_matrix
from jobs.model.pyfunc import UpliftModel
from jobs.model.splits import customer_split
from jobs.names import NO_ONE, everyone, key, label_column, split_key, uplift_column, uplift_high_column
from jobs.settings import Settings

# The night of the selection policies' holdout draw: any fixed date (the same draw for every candidate).
SELECTION_DATE = date(2000, 1, 1)


def candidate_name(learner: str, grid_index: int, grid_size: int) -> str:
    """A candidate's name: the learner's, with its effect_grid entry's index when the grid has several."""
    return learner if grid_size == 1 else f"{learner}-{grid_index + 1}"


def fit_model(rows: pd.DataFrame, settings: Settings, audience: int | None = None) -> UpliftModel:
    """The selected, calibrated model of rows (the training rows the gate does not hold out).

    audience: the scoring set's rows, to scale the audience's budgets to the selection rows (None:
    no budget). The selection record is the model's `selection`."""
    exp, cfg, spec = settings.experiment, settings.training, settings.features
    rows = rows.reset_index(drop=True)
    categories = {c: sorted(rows[c].dropna().astype(str).unique().tolist()) for c in spec.categorical}
    held = customer_split(rows["customer_id"], cfg.selection_fraction, cfg.seed, "selection")
    fit_rows, chosen_rows = rows[~held].reset_index(drop=True), rows[held].reset_index(drop=True)
    if fit_rows.empty or chosen_rows.empty:
        raise ValueError(
            f"the training rows hold {rows['customer_id'].nunique()} customers: too few to keep "
            f"{cfg.selection_fraction:.0%} of them for selecting and calibrating the learners"
        )
    needs = any(getattr(learners.learner(name), "OUT_OF_FOLD", True) for name in cfg.learners)
    outcome_models, nuisance = learners.fit_outcomes(fit_rows, settings, categories, out_of_fold=needs)
    keys = [key(a, o) for o in [None, *settings.targeting.outcomes] for a in exp.arms]
    candidates = _fit_candidates(nuisance, settings, keys)

    base = PortableModel(
        exp.control,
        list(exp.arms),
        list(spec.numeric),
        categories,
        {k: [b.model_to_string() for b in models] for k, models in outcome_models.items()},
        outcomes=list(settings.targeting.outcomes),
    )
    x = design_matrix(chosen_rows, spec.numeric, categories)
    p = base.probabilities(x, Loaded(outcome_models, {}), os.cpu_count() or 1)
    raws = {name: base.raw_uplifts(x, p, Loaded(outcome_models, effects)) for name, (_, effects) in candidates.items()}
    valued = pd.concat([chosen_rows, p.reset_index(drop=True)], axis=1)
    evidence = _Evidence.of(valued, fit_rows, settings, keys)
    table = _values(valued, raws, evidence, settings, audience)
    best = choose(list(candidates), table)
    curves = {k: evidence.curve(k, raws[best][k].to_numpy()) for k in keys}
    learner, effects = candidates[best]
    model = dataclasses.replace(
        base,
        learner=learner,
        effects={k: [[w, b.model_to_string()] for w, b in v] for k, v in effects.items()},
        calibration={k: {"x": c["x"], "y": c["y"]} for k, c in curves.items()},
    )
    out = UpliftModel(model)
    out.selection = {
        "selected": best,
        "learner": learner,
        "fit_rows": len(fit_rows),
        "selection_rows": len(chosen_rows),
        "candidates": {
            name: {**table["policies"][name], "versus_first": table["differences"].get(name)} for name in candidates
        },
        "constant_policies": {n: v for n, v in table["policies"].items() if n not in candidates},
        "grid": list(cfg.effect_grid),
        "calibration": curves,
    }
    return out


@dataclass
class _Evidence:
    """What calibration reads of the selection rows: per key, each row's doubly robust pseudo-outcome
    (NaN where its label has not matured), the rows' weights, and the arm's average effect on the fit rows."""

    phi: dict[str, np.ndarray]
    weights: np.ndarray
    levels: dict[str, float]

    @classmethod
    def of(cls, valued: pd.DataFrame, fit_rows: pd.DataFrame, settings: Settings, keys: list[str]) -> _Evidence:
        exp, outcomes = settings.experiment, [None, *settings.targeting.outcomes]
        g = evaluation.all_scores(valued, exp, settings.targeting, "aipw")
        phi, levels = {}, {}
        for outcome in outcomes:
            label = label_column(outcome)
            effects = policy.average_effects(policy.arm_counts(fit_rows, label), exp.control, exp.arms)
            matured = valued[label].notna().to_numpy()
            for arm in exp.arms:
                k = key(arm, outcome)
                phi[k] = np.where(matured, g[outcome][arm] - g[outcome][exp.control], np.nan)
                levels[k] = float(effects[arm]["ate"])
        return cls(phi, evaluation.row_weights(valued), levels)

    def curve(self, k: str, raw: np.ndarray, rows: np.ndarray | None = None) -> dict:
        """The calibration curve of key k's raw uplift (aligned with the selection rows), on rows (a mask; all)."""
        rows = np.ones(len(raw), dtype=bool) if rows is None else rows
        return calibration.fit_curve(self.phi[k][rows], raw[rows], self.weights[rows], self.levels[k])


def _fit_candidates(nuisance: learners.Nuisance, settings: Settings, keys: list[str]) -> dict[str, tuple[str, dict]]:
    """candidate name -> (learner, key -> [(weight, Booster)]): every learner with every grid entry,
    the effect models fitted side by side (one thread each)."""
    cfg = settings.training
    grid = list(cfg.effect_grid) or [{}]
    modules = {name: learners.learner(name) for name in cfg.learners}
    tasks = [(name, i, k) for name in cfg.learners for i in range(len(grid)) for k in keys]

    def fit(task):
        name, i, k = task
        arm, outcome = split_key(k)
        return modules[name].effects(nuisance, arm, outcome, {**cfg.lightgbm, **grid[i]})

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        fitted = dict(zip(tasks, pool.map(fit, tasks), strict=True))
    out = {}
    for name in cfg.learners:
        if all(fitted[(name, 0, k)] is None for k in keys):  # no effect models: the grid does not apply
            out[name] = (name, {})
            continue
        for i in range(len(grid)):
            effects = {k: fitted[(name, i, k)] for k in keys if fitted[(name, i, k)] is not None}
            out[candidate_name(name, i, len(grid))] = (name, effects)
    return out


def crossed_calibration(rows: pd.DataFrame, raw: pd.DataFrame, evidence: _Evidence, seed: int) -> pd.DataFrame:
    """Each key's raw uplift on rows calibrated by a curve fitted on the other half of the customers."""
    half = customer_split(rows["customer_id"], 0.5, seed, "calibration")
    out = pd.DataFrame(index=rows.index)
    for k in raw.columns:
        column, values = np.empty(len(rows)), raw[k].to_numpy()
        for side in (half, ~half):
            column[side] = calibrate(values[side], evidence.curve(k, values, ~side))
        out[k] = column
    return out


def _values(
    valued: pd.DataFrame, raws: dict[str, pd.DataFrame], evidence: _Evidence, settings: Settings, audience: int | None
) -> dict:
    """evaluation.value_table of every candidate's policy (crossed calibration) and every constant policy."""
    exp, targeting = settings.experiment, settings.targeting
    targeting = (
        policy.scaled(targeting, len(valued) / audience)
        if audience
        else targeting.model_copy(update={"max_sends": None, "max_spend": None})
    )
    customers = policy.Customers.of(valued["customer_id"], SELECTION_DATE)
    assignments = {}
    for name, raw in raws.items():
        calibrated = crossed_calibration(valued, raw, evidence, settings.training.seed)
        frame = valued[["customer_id"]].assign(
            **{uplift_column(k): calibrated[k].to_numpy() for k in calibrated.columns},
            **{uplift_high_column(k): calibrated[k].to_numpy() for k in calibrated.columns if _guarded(k, settings)},
        )
        assignments[name] = _assignment(frame, targeting, exp, customers)
    for arm in exp.arms:
        assignments[everyone(arm)] = np.full(len(valued), arm, dtype=object)
    assignments[NO_ONE] = np.full(len(valued), exp.control, dtype=object)
    cfg, names = settings.gate, list(raws)
    pairs = {name: (name, names[0]) for name in names[1:]}
    return evaluation.value_table(
        assignments, valued, exp, targeting, pairs=pairs, rounds=cfg.bootstrap_rounds, seed=settings.training.seed
    )


def choose(names: list[str], table: dict) -> str:
    """The first candidate, unless others beat it: then the one of highest value among those whose
    paired difference over the first has its 95% interval above zero (evaluation.value_table's
    differences, keyed by candidate name)."""
    better = [n for n in names[1:] if table["differences"][n]["low"] > 0]
    return max(better, key=lambda n: (table["policies"][n]["value"], -names.index(n))) if better else names[0]


def _guarded(k: str, settings: Settings) -> bool:
    _, outcome = split_key(k)
    return outcome is not None and outcome in settings.targeting.guardrails


def _assignment(frame: pd.DataFrame, targeting, exp, customers: policy.Customers) -> np.ndarray:
    chosen = policy.apply(frame, targeting, exp.arms, SELECTION_DATE, customers)
    sent = chosen["selected"].to_numpy() & ~chosen["holdout"].to_numpy()
    return np.where(sent, chosen["recommended_arm"].to_numpy(), exp.control)
