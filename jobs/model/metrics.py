"""Uplift metrics for one treatment arm against control, named after scikit-uplift's.

Inputs everywhere: `y_true` (0/1 outcome), `uplift` (predicted score, higher = target
first) and `treatment` (1 = received the arm, 0 = control), over rows of exactly those two
groups. Definitions match scikit-uplift 0.5:

- Qini curve at the k top-ranked rows: ``Q(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k)`` where
  Y and N count responses and rows of each group among the top k (0 where N_c(k) = 0); points
  only at the ends of runs of tied scores, plus the origin.
- ``qini_auc_score`` = (area under the model's Qini curve - area under the random line) /
  (area under the perfect curve - area under the random line). The random line joins the
  origin to the curve's end; the perfect curve ranks treated responders first and control
  responders last (``negative_effect=True`` in scikit-uplift). 1 is a perfect ranking, 0 is
  random, negative is worse than random; the score can leave [0, 1] when some customers are
  harmed by the message.
- Uplift curve at k: ``U(k) = (Y_t(k) / N_t(k) - Y_c(k) / N_c(k)) * k``; ``uplift_auc_score``
  normalises its area like the Qini score, the perfect curve being scikit-uplift's
  ``perfect_uplift_curve``.
- ``uplift_at_k``: response rate of treated minus control among the top k share of all rows
  (scikit-uplift's ``strategy="overall"``).

Policy values (what a targeting decision is worth) are jobs.model.evaluation's.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc


def _as_arrays(*arrays) -> list[np.ndarray]:
    return [np.asarray(a, dtype=float) for a in arrays]


def _weights(sample_weight, size: int) -> np.ndarray:
    return np.ones(size) if sample_weight is None else np.asarray(sample_weight, dtype=float)


def _counts_at_thresholds(y_true, uplift, treatment, sample_weight=None) -> tuple[np.ndarray, ...]:
    """Rows, treated rows, treated responses and control responses among the top-k rows, for
    each k that ends a run of tied scores (rows ranked by uplift, highest first); each row
    counted sample_weight times."""
    y_true, uplift, treatment = _as_arrays(y_true, uplift, treatment)
    w = _weights(sample_weight, uplift.size)
    order = np.argsort(uplift, kind="mergesort")[::-1]
    y_true, uplift, treatment, w = y_true[order], uplift[order], treatment[order], w[order]
    ends = np.r_[np.where(np.diff(uplift))[0], uplift.size - 1]
    return (
        ends + 1.0 if sample_weight is None else np.cumsum(w)[ends],
        np.cumsum(w * treatment)[ends],
        np.cumsum(w * y_true * treatment)[ends],
        np.cumsum(w * y_true * (1 - treatment))[ends],
    )


def qini_curve(y_true, uplift, treatment, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Points (k, Q(k)) of the Qini curve, k = number (weight) of top-ranked rows."""
    n_all, n_treated, y_treated, y_control = _counts_at_thresholds(y_true, uplift, treatment, sample_weight)
    n_control = n_all - n_treated
    ratio = np.divide(n_treated, n_control, out=np.zeros_like(n_treated), where=n_control != 0)
    return np.r_[0.0, n_all], np.r_[0.0, y_treated - y_control * ratio]


def perfect_qini_curve(y_true, treatment, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """The Qini curve of the ideal ranking: treated responders first, control responders last."""
    y_true, treatment = _as_arrays(y_true, treatment)
    return qini_curve(y_true, y_true * treatment - y_true * (1 - treatment), treatment, sample_weight)


def qini_auc_score(y_true, uplift, treatment, sample_weight=None) -> float:
    """Normalised area between the Qini curve and the random line (see module docstring).

    sample_weight: each row counts that many times (the inverse of its propensity, where the
    arm was not drawn at one split for every row: an own audience's targeted sends)."""
    x_actual, q_actual = qini_curve(y_true, uplift, treatment, sample_weight)
    x_perfect, q_perfect = perfect_qini_curve(y_true, treatment, sample_weight)
    random_area = auc([0, x_perfect[-1]], [0, q_perfect[-1]])
    perfect_area = auc(x_perfect, q_perfect) - random_area
    if perfect_area == 0:
        return 0.0
    return float((auc(x_actual, q_actual) - random_area) / perfect_area)


def uplift_curve(y_true, uplift, treatment, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Points (k, U(k)) of the uplift curve, on the same thresholds as the Qini curve."""
    n_all, n_treated, y_treated, y_control = _counts_at_thresholds(y_true, uplift, treatment, sample_weight)
    n_control = n_all - n_treated
    rate_t = np.divide(y_treated, n_treated, out=np.zeros_like(y_treated), where=n_treated != 0)
    rate_c = np.divide(y_control, n_control, out=np.zeros_like(y_control), where=n_control != 0)
    return np.r_[0.0, n_all], np.r_[0.0, (rate_t - rate_c) * n_all]


def uplift_auc_score(y_true, uplift, treatment, sample_weight=None) -> float:
    """Normalised area between the uplift curve and the random line (rows weighted as in qini_auc_score)."""
    y_true, treatment = _as_arrays(y_true, treatment)
    w = _weights(sample_weight, y_true.size)
    control_responders = np.sum(w * ((y_true == 1) & (treatment == 0)))
    treated_non_responders = np.sum(w * ((y_true == 0) & (treatment == 1)))
    summand = y_true if control_responders > treated_non_responders else treatment
    x_perfect, u_perfect = uplift_curve(y_true, 2 * (y_true == treatment) + summand, treatment, sample_weight)
    x_actual, u_actual = uplift_curve(y_true, uplift, treatment, sample_weight)
    random_area = auc([0, x_perfect[-1]], [0, u_perfect[-1]])
    perfect_area = auc(x_perfect, u_perfect) - random_area
    if perfect_area == 0:
        return 0.0
    return float((auc(x_actual, u_actual) - random_area) / perfect_area)


def _difference(y_true: np.ndarray, treatment: np.ndarray, w: np.ndarray) -> float:
    """Weighted response rate of the treated rows minus the control rows'."""
    treated, control = treatment == 1, treatment == 0
    if not treated.any() or not control.any():
        return float("nan")
    return float(np.average(y_true[treated], weights=w[treated]) - np.average(y_true[control], weights=w[control]))


def uplift_at_k(y_true, uplift, treatment, k: float = 0.3, sample_weight=None) -> float:
    """Response rate of treated minus control among the top k share of rows (ranked jointly)."""
    y_true, uplift, treatment = _as_arrays(y_true, uplift, treatment)
    w = _weights(sample_weight, uplift.size)
    top = np.argsort(uplift, kind="mergesort")[::-1][: max(1, int(round(k * uplift.size)))]
    return _difference(y_true[top], treatment[top], w[top])


def average_treatment_effect(y_true, treatment, sample_weight=None) -> float:
    """Observed difference in response rate, treated minus control (randomized, or weighed by the
    inverse of the propensities: unbiased)."""
    y_true, treatment = _as_arrays(y_true, treatment)
    return _difference(y_true, treatment, _weights(sample_weight, y_true.size))


# A ranking with at most this many tie runs (the perfect one has three) sums each run's rows with
# one matrix-vector product a round, instead of gathering and accumulating every row in order.
# The matrix holds 4 x runs doubles per row (96 bytes for the perfect ranking): kept small.
FEW_RUNS = 4


def _ranking(score: np.ndarray, y_true: np.ndarray, treatment: np.ndarray, sample_weight=None) -> dict:
    """What every bootstrap round needs of one ranking (descending score, tie runs kept together).
    With sample_weight, the weighted columns in rank order (cumulative sums in floats)."""
    order = np.argsort(score, kind="mergesort")[::-1]
    ends = np.r_[np.where(np.diff(score[order]))[0], score.size - 1]
    columns = [np.ones(score.size), treatment, y_true * treatment, y_true * (1 - treatment)]
    if sample_weight is not None:
        return {"order": order, "ends": ends, "weighted": [(c * sample_weight)[order] for c in columns]}
    if ends.size <= FEW_RUNS:
        run = np.empty(score.size, dtype=np.intp)
        run[order] = np.repeat(np.arange(ends.size), np.diff(np.r_[-1, ends]))
        members = np.arange(ends.size)[:, None] == run[None, :]  # runs x rows
        return {"sums": np.concatenate([members * c for c in columns]).astype(float), "runs": ends.size}
    # Counts and 0/1 indicators as small integers: a round's cumulative sums are whole numbers,
    # exact in int32 (at most the rows' count) as in float64, and cheaper to add up.
    return {
        "order": order,
        "ends": None if ends.size == score.size else ends,  # every row ends its own run: no gather
        **dict(zip(["t", "y_t", "y_c"], (c[order].astype(np.int8) for c in columns[1:]), strict=True)),
    }


def _weighted_qini_points(ranked: dict, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve points of the ranked rows, each repeated `weights` times (whole numbers: see qini_interval)."""
    if "weighted" in ranked:
        w, ends = weights[ranked["order"]], ranked["ends"]
        n_all, n_treated, y_treated, y_control = (np.cumsum(w * c)[ends] for c in ranked["weighted"])
    elif "sums" in ranked:  # whole numbers: the sums are exact, whatever their order
        n_all, n_treated, y_treated, y_control = np.cumsum(
            (ranked["sums"] @ weights).reshape(4, ranked["runs"]), axis=1
        )
    else:
        w, ends = weights[ranked["order"]].astype(np.int32), ranked["ends"]
        sums = [np.cumsum(w * ranked[c], dtype=np.int32) for c in ("t", "y_t", "y_c")]
        n_all, n_treated, y_treated, y_control = (
            (s if ends is None else s[ends]).astype(float) for s in [np.cumsum(w, dtype=np.int32), *sums]
        )
    n_control = n_all - n_treated
    ratio = np.divide(n_treated, n_control, out=np.zeros_like(n_treated), where=n_control != 0)
    return np.r_[0.0, n_all], np.r_[0.0, y_treated - y_control * ratio]


def _area(x: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (q[1:] + q[:-1])) / 2)


def resample(rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
    """One cluster-bootstrap resample as row weights: G customers drawn with replacement from the G
    customers of `groups` (codes 0..G-1), every row weighing as often as its customer was drawn
    (with one row per customer, the plain row bootstrap)."""
    g = int(groups.max()) + 1 if len(groups) else 0
    return np.bincount(rng.integers(0, g, g), minlength=g)[groups]


def qini_interval(
    y_true, uplift, treatment, *, rounds: int, seed: int, level: float = 0.95, sample_weight=None, groups=None
) -> tuple[float, float]:
    """Percentile bootstrap interval of qini_auc_score (with its sample_weight), resampling within each group.

    groups: each row's customer code (0..G-1) where a customer can have several rows: then a round
    resamples customers, all of a customer's rows together, whatever group they were sent.

    A resample is the original rows, each repeated as often as it was drawn: ranking and tie
    runs are those of the original rows, so both curves are sorted once, and every round is
    weighted cumulative sums (the same scores as re-sorting each resample, in O(n) a round);
    a ranking of few tie runs (the perfect one) sums its runs directly.
    """
    y_true, uplift, treatment = _as_arrays(y_true, uplift, treatment)
    rng = np.random.default_rng(seed)
    treated, control = np.flatnonzero(treatment == 1), np.flatnonzero(treatment == 0)
    # The model's ranking, and the perfect one (three tie runs: treated responders first).
    perfect = y_true * treatment - y_true * (1 - treatment)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
    rankings = [_ranking(score, y_true, treatment, w) for score in (uplift, perfect)]
    scores = []
    for _ in range(rounds):
        if groups is None:
            rows = np.r_[rng.choice(treated, treated.size), rng.choice(control, control.size)]
            weights = np.bincount(rows, minlength=y_true.size).astype(float)
        else:
            weights = resample(rng, groups).astype(float)
        (x_model, q_model), (x_perfect, q_perfect) = (_weighted_qini_points(r, weights) for r in rankings)
        random_area = x_perfect[-1] * q_perfect[-1] / 2
        perfect_area = _area(x_perfect, q_perfect) - random_area
        scores.append(0.0 if perfect_area == 0 else (_area(x_model, q_model) - random_area) / perfect_area)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def uplift_by_decile(y_true, uplift, treatment, bins: int = 10, sample_weight=None) -> list[dict]:
    """Per decile of predicted uplift (1 = highest): rows, predicted and observed uplift."""
    y_true, uplift, treatment = _as_arrays(y_true, uplift, treatment)
    w = _weights(sample_weight, uplift.size)
    order = np.argsort(uplift, kind="mergesort")[::-1]
    table = []
    for decile, rows in enumerate(np.array_split(order, bins), start=1):
        observed = _difference(y_true[rows], treatment[rows], w[rows])
        table.append(
            {
                "decile": decile,
                "rows": int(rows.size),
                "predicted_uplift": float(uplift[rows].mean()),
                "observed_uplift": float(observed),
            }
        )
    return table
