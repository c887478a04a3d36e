"""The learners behind one interface, cross-checked against causalml's and the textbook, and calibration
before arms are compared.

Our X- and DR-learners are checked on the same rows against causalml's (BaseXRegressor,
BaseDRLearner, with LightGBM as their base learner) and against the papers' formulas written out
here with another base learner (scikit-learn's histogram boosting).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from jobs.features import FeatureSpec
from jobs.model import evaluation
from jobs.model.learners import Nuisance, UnknownLearnerError, dr, learner
from jobs.model.train import fit_model
from jobs.names import p_column
from jobs.settings import Experiment, Targeting

ARMS = ["u", "h"]


def _experiment() -> Experiment:
    return Experiment(
        control="c",
        arms=ARMS,
        expected_split={"c": 1 / 3, "u": 1 / 3, "h": 1 / 3},
        attribution_window_days=7,
        qualifying_response_types=["click"],
        srm_p_value_min=0.001,
    )


def _settings(settings, learners: list[str]):
    spec = FeatureSpec(attributes={**{f"f{i}": {"kind": "numeric"} for i in range(6)}, "seg": {"kind": "categorical"}})
    targeting = Targeting.model_validate(
        {"value_per_response": 1.0, "cost_per_send": {"u": 0.0, "h": 0.0}, "min_uplift": 0.0, "holdout_share": 0.0}
    )
    training = settings.training.model_copy(update={"learners": learners, "effect_grid": [{}]})
    return settings.model_copy(
        update={"experiment": _experiment(), "features": spec, "targeting": targeting, "training": training}
    )


def _people(n: int, rng, h_effect: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Customers whose baseline varies a lot; arm u: +3 points for everyone; arm h: +h_effect for the
    15% with f2 > 1.04, nothing for the others. Returns the features, baseline and true uplifts."""
    f = pd.DataFrame({f"f{i}": rng.normal(size=n) for i in range(6)})
    f["seg"] = rng.choice(list("abcd"), n)
    base = 1 / (1 + np.exp(-(-1.2 + 1.4 * f.f0 + 0.8 * f.f1 - 0.7 * (f.seg == "c"))))
    return f, base.to_numpy(), np.full(n, 0.03), np.where(f.f2 > 1.04, h_effect, 0.0)


def _sends(n: int, seed: int, h_effect: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    f, base, true_u, true_h = _people(n, rng, h_effect)
    arm = rng.choice(["c", *ARMS], n)
    p = base + (arm == "u") * true_u + (arm == "h") * true_h
    return f.assign(
        arm=arm,
        label=(rng.random(n) < p).astype(int),
        customer_id=[f"x{i}" for i in range(n)],
        campaign_id="k",
        propensity=1 / 3,
        inclusion_probability=1.0,
    )


def _value(uplift_u: np.ndarray, uplift_h: np.ndarray, true_u: np.ndarray, true_h: np.ndarray) -> float:
    """The true value per customer of giving each the arm of highest predicted uplift (none below 0)."""
    pick_h = (uplift_h > uplift_u) & (uplift_h > 0)
    pick_u = ~pick_h & (uplift_u > 0)
    return float(np.mean(np.where(pick_h, true_h, np.where(pick_u, true_u, 0.0))))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_calibrated_policy_is_worth_the_best_constant_where_the_uncalibrated_one_loses_to_it(settings, seed):
    """One uniform arm (u: +3 points) and one heterogeneous but noisy arm (h: +4.5 points for 15%).
    The T-learner's raw uplifts switch customers to h wherever its noise is high; calibrated, h's
    uplift is worth what it delivers, and the policy keeps u where u is better."""
    local = _settings(settings, ["t"])
    model = fit_model(_sends(60_000, seed, 0.045), local)
    people, _, true_u, true_h = _people(50_000, np.random.default_rng(100 + seed), 0.045)
    calibrated, raw = model.predict(None, people), model.raw_uplifts(people)
    best_constant = max(true_u.mean(), true_h.mean())
    worth = _value(calibrated["uplift_u"].to_numpy(), calibrated["uplift_h"].to_numpy(), true_u, true_h)
    uncalibrated = _value(raw["u"].to_numpy(), raw["h"].to_numpy(), true_u, true_h)
    assert worth >= best_constant - 0.0005, (worth, best_constant)
    assert uncalibrated < best_constant - 0.002, (uncalibrated, best_constant)
    curve = model.selection["calibration"]["h"]
    assert 0 <= curve["slope"] < 1, "the noisy arm's predictions overstate its differences"


def _strong(n: int, seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Strong heterogeneity: u's effect rises with f2, h's with f3, around a baseline that varies."""
    rng = np.random.default_rng(seed)
    f, base, _, _ = _people(n, rng, 0.0)
    truth = {"u": 0.15 / (1 + np.exp(-2 * f.f2.to_numpy())), "h": 0.12 * (f.f3.to_numpy() > 0) - 0.03}
    arm = rng.choice(["c", *ARMS], n)
    p = np.clip(base * 0.6 + np.where(arm == "u", truth["u"], 0) + np.where(arm == "h", truth["h"], 0), 0, 1)
    rows = f.assign(
        arm=arm,
        label=(rng.random(n) < p).astype(int),
        customer_id=[f"s{i}" for i in range(n)],
        campaign_id="k",
        propensity=1 / 3,
        inclusion_probability=1.0,
    )
    return rows, truth


def _textbook(rows: pd.DataFrame, test: pd.DataFrame, which: str) -> dict[str, np.ndarray]:
    """The X- and DR-learners from their papers' formulas, with scikit-learn's boosting as base learners:
    Kunzel et al. (2019) for X; Kennedy (2023) for DR, with two-fold cross-fitting and the known propensity."""
    features = [c for c in rows.columns if c.startswith("f")]
    x, y, a = rows[features].to_numpy(), rows["label"].to_numpy(), rows["arm"].to_numpy()

    def outcome(mask):
        return HistGradientBoostingClassifier(max_depth=3, learning_rate=0.05, max_iter=200).fit(x[mask], y[mask])

    def regress(xs, target):
        return HistGradientBoostingRegressor(max_depth=3, learning_rate=0.05, max_iter=200, min_samples_leaf=200).fit(
            xs, target
        )

    out = {}
    for arm in ARMS:
        if which == "x":
            mu1, mu0 = outcome(a == arm), outcome(a == "c")
            t, c = a == arm, a == "c"
            d1 = y[t] - mu0.predict_proba(x[t])[:, 1]
            d0 = mu1.predict_proba(x[c])[:, 1] - y[c]
            g = t.sum() / (t.sum() + c.sum())
            tau1, tau0 = regress(x[t], d1), regress(x[c], d0)
            out[arm] = g * tau0.predict(test[features].to_numpy()) + (1 - g) * tau1.predict(test[features].to_numpy())
        else:
            fold = np.arange(len(rows)) % 2
            phi = np.empty(len(rows))
            for k in (0, 1):
                mu1, mu0 = outcome((a == arm) & (fold != k)), outcome((a == "c") & (fold != k))
                m1, m0 = mu1.predict_proba(x[fold == k])[:, 1], mu0.predict_proba(x[fold == k])[:, 1]
                yk, ak = y[fold == k], a[fold == k]
                phi[fold == k] = m1 - m0 + (ak == arm) * (yk - m1) * 3 - (ak == "c") * (yk - m0) * 3
            out[arm] = regress(x, phi).predict(test[features].to_numpy())
    return out


def _causalml(rows: pd.DataFrame, test: pd.DataFrame, which: str) -> dict[str, np.ndarray]:
    """causalml's X- or DR-learner on the same rows, LightGBM as its base learner, the known propensity
    (1/2 within each arm and control)."""
    from causalml.inference.meta import BaseDRLearner, BaseXRegressor
    from lightgbm import LGBMRegressor

    features = [c for c in rows.columns if c.startswith("f")]
    base = LGBMRegressor(n_estimators=200, learning_rate=0.05, num_leaves=7, min_child_samples=200, verbose=-1)
    model = (BaseXRegressor if which == "x" else BaseDRLearner)(learner=base, control_name="c")
    half = {arm: np.full(len(rows), 0.5) for arm in ARMS}
    seeded = {"seed": 7} if which == "dr" else {}  # its cross-fitting folds
    model.fit(rows[features].to_numpy(), rows["arm"].to_numpy(), rows["label"].to_numpy(), p=half, **seeded)
    kwargs = {"p": {arm: np.full(len(test), 0.5) for arm in ARMS}} if which == "x" else {}
    cate = model.predict(test[features].to_numpy(), **kwargs)
    return {group: cate[:, i] for i, group in enumerate(model.t_groups)}


@pytest.mark.parametrize("which", ["x", "dr"])
def test_our_x_and_dr_learners_rank_customers_as_causalmls_and_the_textbooks_do(settings, which):
    rows, _ = _strong(60_000, 3)
    test, truth = _strong(8_000, 4)
    model = fit_model(rows, _settings(settings, [which]))
    assert model.learner == which
    ours = model.raw_uplifts(test)
    for source, theirs in (("causalml", _causalml(rows, test, which)), ("textbook", _textbook(rows, test, which))):
        for arm in ARMS:
            agreement = spearmanr(ours[arm], theirs[arm]).statistic
            assert agreement >= 0.8, f"{which} {arm}: Spearman {agreement:.3f} with {source}'s learner"
    for arm in ARMS:
        assert spearmanr(ours[arm], truth[arm]).statistic >= 0.7


def test_the_dr_pseudo_outcome_is_the_textbook_formula():
    """phi = mu_a - mu_c + 1[A=a](Y - mu_a)/e - 1[A=c](Y - mu_c)/e, with e the received arm's probability,
    and the same as the gate's AIPW scores G(a) - G(c) on the same predictions."""
    rng = np.random.default_rng(0)
    n = 1000
    arm = rng.choice(["c", "u", "h"], n, p=[0.5, 0.3, 0.2])
    e = np.select([arm == "c", arm == "u"], [0.5, 0.3], 0.2)
    y = rng.integers(0, 2, n).astype(float)
    rows = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "arm": arm,
            "label": y,
            "propensity": e,
            "inclusion_probability": 1.0,
        }
    )
    oof = pd.DataFrame({p_column(a): rng.uniform(0.05, 0.6, n) for a in ["c", "u", "h"]})
    nuisance = Nuisance(rows, rows[[]], oof, e, "c", 0)
    mu_u, mu_c = oof["p_u"].to_numpy(), oof["p_c"].to_numpy()
    textbook = mu_u - mu_c + (arm == "u") * (y - mu_u) / e - (arm == "c") * (y - mu_c) / e
    np.testing.assert_allclose(dr.pseudo_outcome(nuisance, "u", None), textbook, rtol=0, atol=1e-12)
    exp = Experiment(
        control="c",
        arms=["u", "h"],
        expected_split={"c": 0.5, "u": 0.3, "h": 0.2},
        attribution_window_days=7,
        qualifying_response_types=["click"],
        srm_p_value_min=0.001,
    )
    g = evaluation.scores(pd.concat([rows, oof], axis=1), exp, "aipw")
    np.testing.assert_allclose(g["u"] - g["c"], textbook, rtol=0, atol=1e-12)


def test_an_unknown_learner_is_refused_by_name_with_the_known_ones():
    with pytest.raises(UnknownLearnerError, match=r"no learner 'causal_forest'.*\['dr', 't', 'x'\]"):
        learner("causal_forest")


def test_effect_models_learn_from_a_customer_sample_when_the_rows_exceed_effect_max_rows(settings):
    from jobs.model.learners import effect_sample

    rows, _ = _strong(60_000, 3)
    sample = effect_sample(rows, 20_000, seed=1)
    assert 18_000 < sample.sum() < 22_000 and effect_sample(rows, None, 1).all()
    test, truth = _strong(8_000, 4)
    local = _settings(settings, ["dr"])
    local = local.model_copy(update={"training": local.training.model_copy(update={"effect_max_rows": 20_000})})
    model = fit_model(rows, local)
    for arm in ARMS:
        assert spearmanr(model.raw_uplifts(test)[arm], truth[arm]).statistic >= 0.6
