"""The X-learner (Künzel et al. 2019): impute each row's individual effect with the other group's
outcome model, regress the imputations, and blend the two regressions.

For arm a against control c, with the out-of-fold outcome models mu_a, mu_c:

    treated rows (A = a):  D1 = Y - mu_c(x)      tau_1(x) = E[D1 | x]
    control rows (A = c):  D0 = mu_a(x) - Y      tau_0(x) = E[D0 | x]
    tau(x) = g * tau_0(x) + (1 - g) * tau_1(x)

with g the share of a among the rows of a and c (the propensity of treatment, constant within a
randomized split; the textbook's g(x) where it varies). Each regression is a LightGBM regressor on
its group's rows. Strong where one group is much larger than the other, or the effect is simpler
than the outcome: each regression models the effect, not the baseline.
"""

from __future__ import annotations

import numpy as np

from jobs.model.learners import Nuisance, fit_regressor
from jobs.names import p_column


def effects(nuisance: Nuisance, arm: str, outcome: str | None, params: dict) -> list:
    y, received = nuisance.label(outcome), nuisance.received()
    known = ~np.isnan(y)
    treated, control = known & (received == arm), known & (received == nuisance.control)
    mu_a = nuisance.oof[p_column(arm, outcome)].to_numpy()
    mu_c = nuisance.oof[p_column(nuisance.control, outcome)].to_numpy()
    tau_1 = fit_regressor(nuisance.rows[treated], nuisance.x[treated], (y - mu_c)[treated], params, nuisance.seed)
    tau_0 = fit_regressor(nuisance.rows[control], nuisance.x[control], (mu_a - y)[control], params, nuisance.seed)
    # g: the treated share, weighed by the rows' inverse propensities (the population's mix where sends were targeted)
    w = 1.0 / nuisance.propensity
    g = float(w[treated].sum() / (w[treated].sum() + w[control].sum()))
    return [(g, tau_0), (1.0 - g, tau_1)]
