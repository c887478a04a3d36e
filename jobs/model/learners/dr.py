"""The DR-learner (Kennedy 2023): regress a doubly robust pseudo-outcome of each row on its features.

For arm a against control c, with the out-of-fold (cross-fitted) outcome models mu_a, mu_c and
e(A_i) the probability of the arm row i received (its randomized split's share, or the propensity
its own audience recorded, among the rows sent):

    phi_i = mu_a(x_i) - mu_c(x_i) + 1[A_i = a] (Y_i - mu_a(x_i)) / e(A_i) - 1[A_i = c] (Y_i - mu_c(x_i)) / e(A_i)

over every row with a matured label (a row of another arm contributes its outcome models'
difference), and tau(x) = E[phi | x] by one LightGBM regressor. Unbiased for the effect when either
the outcome models or the propensities are right; the pseudo-outcome is noisy (the inverse
propensity), so its regressor needs the strong regularisation of training.lightgbm.
"""

from __future__ import annotations

import numpy as np

from jobs.model.learners import Nuisance, fit_regressor
from jobs.names import p_column


def pseudo_outcome(nuisance: Nuisance, arm: str, outcome: str | None) -> np.ndarray:
    """phi of every row (NaN where the label has not matured)."""
    y, received = nuisance.label(outcome), nuisance.received()
    mu_a = nuisance.oof[p_column(arm, outcome)].to_numpy()
    mu_c = nuisance.oof[p_column(nuisance.control, outcome)].to_numpy()
    e = nuisance.propensity
    return mu_a - mu_c + (received == arm) * (y - mu_a) / e - (received == nuisance.control) * (y - mu_c) / e


def effects(nuisance: Nuisance, arm: str, outcome: str | None, params: dict) -> list:
    phi = pseudo_outcome(nuisance, arm, outcome)
    known = ~np.isnan(phi)
    return [(1.0, fit_regressor(nuisance.rows[known], nuisance.x[known], phi[known], params, nuisance.seed))]
