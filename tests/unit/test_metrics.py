"""Uplift metrics against scikit-uplift and a literal implementation of the same definitions."""

import warnings
from itertools import pairwise

import numpy as np
import pytest

from jobs.model import metrics


def literal_qini_auc(y, u, t):
    """Straight from the definition: one point per distinct score, trapezoids, loops."""
    y, u, t = map(np.asarray, (y, u, t))

    def curve(scores):
        points = [(0.0, 0.0)]
        for threshold in sorted(set(scores), reverse=True):
            top = scores >= threshold
            n_t, n_c = (top & (t == 1)).sum(), (top & (t == 0)).sum()
            y_t, y_c = y[top & (t == 1)].sum(), y[top & (t == 0)].sum()
            points.append((float(top.sum()), y_t - y_c * (n_t / n_c if n_c else 0.0)))
        return points

    def area(pts):
        return sum((x1 - x0) * (q0 + q1) / 2 for (x0, q0), (x1, q1) in pairwise(pts))

    perfect = curve(y * t - y * (1 - t))
    random_area = perfect[-1][0] * perfect[-1][1] / 2
    return (area(curve(u)) - random_area) / (area(perfect) - random_area)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("treated_share", [0.5, 0.2, 0.8])
def test_qini_matches_the_literal_definition(seed, treated_share):
    rng = np.random.default_rng(seed)
    n = 400
    t = (rng.random(n) < treated_share).astype(int)
    u = np.round(rng.normal(size=n), 1)  # rounding creates ties
    y = (rng.random(n) < 0.2 + 0.2 * t * (u > 0) - 0.1 * t * (u < -1)).astype(int)  # a harmed group
    assert metrics.qini_auc_score(y, u, t) == pytest.approx(literal_qini_auc(y, u, t), abs=1e-9)


def _cases():
    """Random data, unequal group sizes, ties, all-zero outcomes, a harmed subgroup."""
    rng = np.random.default_rng(42)
    for treated_share in (0.5, 0.15, 0.85):
        n = 1000
        t = (rng.random(n) < treated_share).astype(int)
        u = rng.normal(size=n)
        yield "random", rng.integers(0, 2, n), u, t
        yield "ties", rng.integers(0, 2, n), np.round(u, 0), t
        yield "harmed", (rng.random(n) < 0.3 + 0.3 * t * (u > 0) - 0.25 * t * (u < -0.5)).astype(int), u, t
    yield "all zero", np.zeros(200, dtype=int), rng.normal(size=200), rng.integers(0, 2, 200)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_qini_uplift_curve_and_uplift_at_k_match_scikit_uplift(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklift uses a deprecated sklearn helper
        from sklift import metrics as sklift

        _, y, u, t = case
        if y.sum() == 0:  # sklift divides 0 by 0 here; ours defines the score as 0
            assert metrics.qini_auc_score(y, u, t) == 0.0
            return
        assert metrics.qini_auc_score(y, u, t) == pytest.approx(sklift.qini_auc_score(y, u, t), abs=1e-9)
        x_ours, q_ours = metrics.qini_curve(y, u, t)
        x_ref, q_ref = sklift.qini_curve(y, u, t)
        np.testing.assert_allclose(x_ours, x_ref, atol=1e-9)
        np.testing.assert_allclose(q_ours, q_ref, atol=1e-9)
        assert metrics.uplift_auc_score(y, u, t) == pytest.approx(sklift.uplift_auc_score(y, u, t), abs=1e-9)
        x_ours, c_ours = metrics.uplift_curve(y, u, t)
        x_ref, c_ref = sklift.uplift_curve(y, u, t)
        np.testing.assert_allclose(x_ours, x_ref, atol=1e-9)
        np.testing.assert_allclose(c_ours, c_ref, atol=1e-9)
        ours_at_k = metrics.uplift_at_k(y, u, t, 0.3)
        ref_at_k = sklift.uplift_at_k(y, u, t, strategy="overall", k=0.3)
        assert ours_at_k == pytest.approx(ref_at_k, abs=1e-9)


def test_perfect_random_and_reversed_rankings():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, 2000)
    y = rng.integers(0, 2, 2000)
    perfect = y * t - y * (1 - t)
    assert metrics.qini_auc_score(y, perfect, t) == pytest.approx(1.0)
    assert metrics.qini_auc_score(y, -perfect, t) < 0
    assert abs(metrics.qini_auc_score(y, rng.random(2000), t)) < 0.1


def test_all_zero_outcomes_score_zero():
    t = np.array([0, 1] * 50)
    assert metrics.qini_auc_score(np.zeros(100), np.arange(100), t) == 0.0


def test_interval_contains_the_score_and_uplift_at_k():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, 3000)
    u = rng.random(3000)
    y = (rng.random(3000) < 0.1 + 0.2 * t * u).astype(int)
    score = metrics.qini_auc_score(y, u, t)
    low, high = metrics.qini_interval(y, u, t, rounds=100, seed=0)
    assert low < score < high and low > 0
    assert metrics.uplift_at_k(y, u, t, 0.3) > metrics.average_treatment_effect(y, t) > 0
    deciles = metrics.uplift_by_decile(y, u, t)
    assert [d["decile"] for d in deciles] == list(range(1, 11))
    assert deciles[0]["observed_uplift"] > deciles[-1]["observed_uplift"]


@pytest.mark.parametrize("ties", [False, True])
def test_interval_equals_scoring_every_resample(ties):
    """The weighted bootstrap gives the scores of re-ranking each resample from scratch."""
    rng = np.random.default_rng(4)
    t = rng.integers(0, 2, 2000)
    u = rng.integers(0, 20, 2000) / 20 if ties else rng.random(2000)
    y = (rng.random(2000) < 0.1 + 0.2 * t * u).astype(int)
    draws = np.random.default_rng(9)
    treated, control = np.flatnonzero(t == 1), np.flatnonzero(t == 0)
    scores = []
    for _ in range(30):
        rows = np.r_[draws.choice(treated, treated.size), draws.choice(control, control.size)]
        scores.append(metrics.qini_auc_score(y[rows], u[rows], t[rows]))
    expected = np.percentile(scores, [2.5, 97.5])
    assert metrics.qini_interval(y, u, t, rounds=30, seed=9) == pytest.approx(tuple(expected), abs=1e-12)


def test_weighted_metrics_count_each_row_its_weight_in_times():
    """A row of weight w counts as w copies of itself: integer weights give the scores of the repeated rows."""
    rng = np.random.default_rng(12)
    n = 400
    y, t = rng.integers(0, 2, n), rng.integers(0, 2, n)
    u = np.round(rng.normal(size=n), 1)  # ties, as a model with few leaves gives
    w = rng.integers(1, 5, n)
    repeated = [np.repeat(a, w) for a in (y, u, t)]
    assert metrics.qini_auc_score(y, u, t, sample_weight=w) == pytest.approx(metrics.qini_auc_score(*repeated))
    assert metrics.uplift_auc_score(y, u, t, sample_weight=w) == pytest.approx(metrics.uplift_auc_score(*repeated))
    ate = metrics.average_treatment_effect(y, t, sample_weight=w)
    assert ate == pytest.approx(metrics.average_treatment_effect(repeated[0], repeated[2]))
    # Unit weights take the weighted path of the bootstrap: the same draws, the same interval.
    plain = metrics.qini_interval(y, u, t, rounds=40, seed=3)
    assert metrics.qini_interval(y, u, t, rounds=40, seed=3, sample_weight=np.ones(n)) == pytest.approx(plain)
