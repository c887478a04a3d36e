"""Calibrated uplifts: what a predicted uplift is worth, measured on rows the models never saw.

The policy compares arms by predicted net value. A ranked arm's highest predictions are biased
upward (noise rides along with the ranking: the top of noisy estimates overstates them), so an
uncalibrated policy moves customers to a noisy arm where a steady one does better. Each (arm,
outcome)'s raw uplift r is therefore carried through a line fitted on held-out rows (`fit_curve`):

- the fitted line: the arm's average effect on the fit rows (jobs.model.policy.average_effects: by
  campaign, each send weighed by its inverse propensity) at the mean raw uplift, with slope b, the
  weighted least-squares slope of the rows' doubly robust pseudo-outcome
  ``phi_i = G_i(arm) - G_i(control)`` (jobs.model.evaluation.scores: AIPW, with outcome models
  that never saw these rows; unbiased for the row's effect) on their raw uplift, kept within [0, 1]:
  how much of a difference in prediction shows up as a difference in outcome (1: the predictions
  hold; 0: only the average does);
- used in proportion to the evidence that the predictions are off, ``w = (1 - b)^2 / ((1 - b)^2 +
  se^2)`` (se: b's sandwich standard error): the line used is ``w`` of the way from the raw
  uplift (slope 1, its own level) to the fitted line. Where the held-out rows cannot tell b from
  1, the predictions stand as they are; where they show an overconfident ranking (b clearly below
  1), its differences are shrunk and its level set to what the arm delivers.

A line, not bins: every held-out row informs the one slope, where a curve of bins needs many rows
in each. The curve is kept as two points (the 0.5th and 99.5th percentiles of the held-out raw
uplift) that jobs.model.portable.calibrate interpolates between, holding flat beyond; with it, the
observed uplift by quintile of raw uplift (mean phi and its standard error), which the training
run's calibration plot and the Campaigns page show beside the line.
"""

from __future__ import annotations

import numpy as np

QUANTILE_BINS = 5
EDGE = 0.005  # the curve's points: these quantiles of the held-out raw uplift, and 1 - EDGE


def fit_curve(phi: np.ndarray, raw: np.ndarray, weights: np.ndarray, level: float) -> dict:
    """The calibration line of a raw uplift from held-out rows' pseudo-outcomes phi (NaN: not matured).

    Returns {"x", "y"} (the line's two points), "level" (the calibrated value of the mean raw
    uplift), "slope" and "weight" (used), "fitted_slope", "slope_se", "average_effect" (level given)
    and "bins" (per quintile of raw: mean raw, observed mean phi, its se, rows)."""
    phi, raw, w = (np.asarray(a, dtype=float) for a in (phi, raw, weights))
    known = ~np.isnan(phi)
    phi, raw, w = phi[known], raw[known], w[known]
    if len(raw) < 3 or np.ptp(raw) == 0:
        centre = float(raw.mean()) if len(raw) else 0.0
        curve = _curve([centre, centre], level, 0.0, 0.0, float("nan"), centre, _bins(phi, raw, w), 1.0)
        return {**curve, "average_effect": float(level)}
    w = w / w.mean()
    r_mean, phi_mean = np.average(raw, weights=w), np.average(phi, weights=w)
    dr = raw - r_mean
    sxx = float(np.sum(w * dr**2))
    slope = float(np.sum(w * dr * (phi - phi_mean)) / sxx)
    residual = phi - phi_mean - slope * dr
    se = float(np.sqrt(np.sum((w * dr * residual) ** 2)) / sxx)
    weight = (1 - slope) ** 2 / ((1 - slope) ** 2 + se**2) if se > 0 else 1.0
    used = 1 + weight * (min(max(slope, 0.0), 1.0) - 1)
    centre = float(r_mean + weight * (level - r_mean))  # what the mean raw uplift is worth
    ends = np.quantile(raw, [EDGE, 1 - EDGE])
    curve = _curve(ends.tolist(), centre, used, slope, se, float(r_mean), _bins(phi, raw, w), weight)
    return {**curve, "average_effect": float(level)}


def _curve(
    ends: list[float], level: float, slope: float, fitted: float, se: float, centre: float, bins, weight: float = 1.0
) -> dict:
    return {
        "x": [float(e) for e in ends],
        "y": [float(level + slope * (e - centre)) for e in ends],
        "level": float(level),
        "slope": float(slope),
        "weight": float(weight),
        "fitted_slope": float(fitted),
        "slope_se": None if np.isnan(se) else float(se),
        "bins": bins,
    }


def _bins(phi: np.ndarray, raw: np.ndarray, w: np.ndarray) -> dict:
    """Per quintile of raw: mean raw, the observed uplift (weighted mean phi), its standard error, rows."""
    out = {"raw": [], "observed": [], "se": [], "rows": []}
    if not len(raw):
        return out
    edges = np.unique(np.quantile(raw, np.arange(1, QUANTILE_BINS) / QUANTILE_BINS))
    where = np.searchsorted(edges, raw, side="right")
    for b in range(len(edges) + 1):
        inside = where == b
        if inside.sum() < 2:
            continue
        wb, pb = w[inside], phi[inside]
        mean = float(np.average(pb, weights=wb))
        se = float(np.sqrt(np.sum((wb * (pb - mean)) ** 2)) / wb.sum())
        out["raw"].append(float(raw[inside].mean()))
        out["observed"].append(mean)
        out["se"].append(se)
        out["rows"].append(int(inside.sum()))
    return out
