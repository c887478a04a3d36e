"""Our learners against the truth and against external ones, on three simulated experiments.

For each simulator of benchmarks.simulators and each seed: a randomized training sample (ROWS sends,
one per customer: demo 40,000, email 24,000, noisy_baseline 60,000) and a separate test sample of
TEST_ROWS (30,000) customers with their true uplifts. Each candidate is fitted on the same training
rows and predicts every test customer's uplift per arm:
- ours, through jobs.model.train.fit_model: each learner alone (training.learners = [t], [x],
  [dr], each with the conf's effect_grid) and `selected`, the conf's training.learners with the
  one worth the most kept (which one is counted per simulator); their calibrated targeting
  uplifts (uplift_<arm>);
- scikit-uplift's TwoModels, ClassTransformation and SoloModel, fitted per arm on that arm's and
  the control's rows, and causalml's T-, X- and DR-learners (multi-arm, control_name), all with
  LightGBM estimators at training.lightgbm's parameters (no early stopping), on the features with
  categories as integer codes; the X- and DR-learners are given the true propensity of the arm
  among the arm's and the control's rows (randomized: its pooled share). ClassTransformation's
  score, 2 P(z=1) - 1, is an uplift only when the arm and the control are sent equally often.

Two figures per candidate, each the mean over seeds with a 95% interval (t distribution):
- gain ratio per arm: the area between the expected gain curve of the candidate's ranking (the
  sum of the TRUE uplifts of the top k customers by predicted uplift, k = 0..n; tied predictions
  share their group's sum evenly) and the random line, divided by the same area for the ranking by
  the true uplift (the oracle). 1 is the oracle's ranking, 0 a random or constant one; it can be
  negative. This is scikit-uplift's qini_auc_score normalisation (by the perfect curve) applied to
  the true uplifts instead of observed outcomes.
- decision value ratio: every test customer is given the arm of highest predicted net value
  (value_per_response * uplift - cost_per_send[arm]; none when not positive or below min_uplift:
  jobs.model.policy.choose, no budget, exploration or holdout), valued with the true uplifts (net
  value per customer), divided by the value of the same rule applied to the true uplifts (the
  oracle policy). `best constant` is the best single arm for everyone, or no one, by the truth.

    python -m benchmarks.learners --seeds 5   # about 7 minutes on 2 cores; writes
                                              # benchmarks/results/learners-<date>-<commit>.{json,md}
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import lightgbm as lgb
import numpy as np
import pandas as pd
from causalml.inference.meta import BaseDRClassifier, BaseTClassifier, BaseXClassifier
from scipy import stats
from sklift.models import ClassTransformation, SoloModel, TwoModels

from benchmarks import publish
from benchmarks.simulators import NIGHT, SIMULATORS, Simulated
from jobs.model import policy
from jobs.model.train import fit_model
from jobs.names import uplift_column
from jobs.settings import Settings

# Training sends per simulator: the e-mail experiment's own size; more where the effects are faint.
ROWS = {"demo": 40_000, "email": 24_000, "noisy_baseline": 60_000}
TEST_ROWS = 30_000
TEST_STREAM = 1_000_000  # test customers are drawn with seed TEST_STREAM + seed
OURS = {"t": ["t"], "x": ["x"], "dr": ["dr"], "selected": None}  # None: the conf's training.learners

Predict = Callable[[pd.DataFrame], pd.DataFrame]  # test rows -> uplift_<arm>


def ours(learners: list[str] | None) -> Callable[[pd.DataFrame, Settings], tuple[Predict, str]]:
    """fit_model with training.learners set to learners (None: the conf's); its selected learner's name."""

    def fit(rows: pd.DataFrame, settings: Settings) -> tuple[Predict, str]:
        if learners is not None:
            training = settings.training.model_copy(update={"learners": learners})
            settings = settings.model_copy(update={"training": training})
        model = fit_model(rows, settings)
        columns = [uplift_column(a) for a in settings.experiment.arms]
        return lambda frame: model.predict(None, frame)[columns].reset_index(drop=True), model.learner

    return fit


def _design(frame: pd.DataFrame, settings: Settings, levels: dict[str, list[str]]) -> np.ndarray:
    """The features as floats: numeric ones as they are, categorical ones as codes of the training levels."""
    spec = settings.features
    columns = [frame[c].to_numpy(float) for c in spec.numeric]
    columns += [
        pd.Categorical(frame[c].astype(str), categories=levels[c]).codes.astype(float) for c in spec.categorical
    ]
    return np.column_stack(columns)


def _lightgbm(settings: Settings, kind=lgb.LGBMClassifier):
    return kind(**settings.training.lightgbm, random_state=settings.training.seed, n_jobs=1, verbose=-1)


def _pooled_shares(rows: pd.DataFrame, settings: Settings) -> dict[str, float]:
    """Each arm's share among its own and the control's rows: its propensity there, whatever the features."""
    counts = rows["arm"].value_counts()
    control = counts.get(settings.experiment.control, 0)
    return {a: counts.get(a, 0) / (counts.get(a, 0) + control) for a in settings.experiment.arms}


def external(name: str) -> Callable[[pd.DataFrame, Settings], tuple[Predict, str]]:
    """A scikit-uplift model per arm (`sklift.<Model>`) or a causalml multi-arm meta-learner (`causalml.<T|X|DR>`)."""

    def fit(rows: pd.DataFrame, settings: Settings) -> tuple[Predict, str]:
        levels = {c: sorted(rows[c].astype(str).unique()) for c in settings.features.categorical}
        design = partial(_design, settings=settings, levels=levels)
        fitted = _fit_sklift if name.startswith("sklift.") else _fit_causalml
        return fitted(name, rows, design, settings), name

    return fit


def _fit_sklift(name: str, rows: pd.DataFrame, design: Callable, settings: Settings) -> Predict:
    exp = settings.experiment
    x, arm, y = design(rows), rows["arm"].to_numpy(), rows["label"].to_numpy()
    models = {}
    for a in exp.arms:
        mine = np.isin(arm, [a, exp.control])
        if name == "sklift.TwoModels":
            model = TwoModels(estimator_trmnt=_lightgbm(settings), estimator_ctrl=_lightgbm(settings), method="vanilla")
        elif name == "sklift.ClassTransformation":
            model = ClassTransformation(estimator=_lightgbm(settings))
        else:
            model = SoloModel(estimator=_lightgbm(settings), method="dummy")
        models[a] = model.fit(x[mine], y[mine], (arm[mine] == a).astype(int))
    return lambda frame: pd.DataFrame({uplift_column(a): models[a].predict(design(frame)) for a in exp.arms})


def _fit_causalml(name: str, rows: pd.DataFrame, design: Callable, settings: Settings) -> Predict:
    exp, seed = settings.experiment, settings.training.seed
    shares = _pooled_shares(rows, settings)
    x, arm, y = design(rows), rows["arm"].to_numpy(), rows["label"].to_numpy()
    p = {a: np.full(len(rows), shares[a]) for a in exp.arms}
    classifier, regressor = _lightgbm(settings), _lightgbm(settings, lgb.LGBMRegressor)
    if name == "causalml.T":
        model = BaseTClassifier(learner=classifier, control_name=exp.control)
        model.fit(x, treatment=arm, y=y)
    elif name == "causalml.X":
        model = BaseXClassifier(outcome_learner=classifier, effect_learner=regressor, control_name=exp.control)
        model.fit(x, treatment=arm, y=y, p=p)
    else:
        model = BaseDRClassifier(
            control_outcome_learner=classifier,
            treatment_outcome_learner=classifier,
            treatment_effect_learner=regressor,
            control_name=exp.control,
        )
        model.fit(x, treatment=arm, y=y, p=p, seed=seed)
    groups = list(model.t_groups)  # the arms in sorted order: predict's columns

    def predict(frame: pd.DataFrame) -> pd.DataFrame:
        extra = {"p": {a: np.full(len(frame), shares[a]) for a in exp.arms}} if name == "causalml.X" else {}
        te = model.predict(design(frame), **extra)
        return pd.DataFrame({uplift_column(a): te[:, groups.index(a)] for a in exp.arms})

    return predict


EXTERNAL = [
    "sklift.TwoModels",
    "sklift.ClassTransformation",
    "sklift.SoloModel",
    "causalml.T",
    "causalml.X",
    "causalml.DR",
]
CANDIDATES = {**{name: ours(learners) for name, learners in OURS.items()}, **{n: external(n) for n in EXTERNAL}}


def gain_area(score: np.ndarray, tau: np.ndarray) -> float:
    """The area between the expected gain curve of the ranking by score (cumulative true uplift tau of
    the top share; tied scores share their group's sum linearly) and the random line, over shares 0..1."""
    order = np.argsort(-score, kind="stable")
    ranked, gains = score[order], np.cumsum(tau[order])
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # the last row of each group of ties
    share = np.r_[0.0, (ends + 1) / len(tau)]
    curve = np.r_[0.0, gains[ends]]
    return float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(share)) - gains[-1] / 2)


def decision_value(uplifts: pd.DataFrame, truth: pd.DataFrame, customer_ids: pd.Series, settings: Settings) -> float:
    """The true net value per customer of giving each customer the arm policy.choose picks from uplifts."""
    arms, targeting = settings.experiment.arms, settings.targeting
    chosen = policy.choose(uplifts.assign(customer_id=customer_ids.to_numpy()), targeting, arms, NIGHT)
    net = policy.net_values(truth, targeting, arms)
    picked = pd.Categorical(chosen["recommended_arm"], categories=arms).codes  # -1: none
    return float(np.where(picked >= 0, net[np.arange(len(net)), picked], 0.0).mean())


def run_seed(simulator: str, seed: int, rows: int, test_rows: int, candidates: list[str]) -> list[dict]:
    """One line per candidate, and one for the best constant policy, on one simulator and seed."""
    train: Simulated = SIMULATORS[simulator](seed, rows)
    test = SIMULATORS[simulator](TEST_STREAM + seed, test_rows)
    settings, arms = train.settings, train.settings.experiment.arms
    ids = test.rows["customer_id"]
    oracle = decision_value(test.uplifts, test.uplifts, ids, settings)
    constant = max(0.0, float(policy.net_values(test.uplifts, settings.targeting, arms).mean(axis=0).max()))
    out = [{"simulator": simulator, "seed": seed, "candidate": "best constant", "value_ratio": constant / oracle}]
    for name in candidates:
        started = time.perf_counter()
        predict, learner = CANDIDATES[name](train.rows, settings)
        seconds = time.perf_counter() - started
        predicted = predict(test.rows)
        line = {
            "simulator": simulator,
            "seed": seed,
            "candidate": name,
            "learner": learner,
            "fit_seconds": round(seconds, 1),
            "value_ratio": decision_value(predicted, test.uplifts, ids, settings) / oracle,
            "oracle_value": oracle,
            **{
                f"gain_ratio.{a}": gain_area(predicted[uplift_column(a)].to_numpy(), tau) / gain_area(tau, tau)
                for a in arms
                for tau in [test.uplifts[uplift_column(a)].to_numpy()]
            },
        }
        print(json.dumps(line), flush=True)
        out.append(line)
    return out


def interval(values: pd.Series) -> dict[str, float]:
    """Mean and its 95% interval over seeds (t distribution; a single seed: the value alone)."""
    values = values.dropna()
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "low": mean, "high": mean}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def summarize(frame: pd.DataFrame) -> list[dict]:
    """Per simulator and candidate: every figure's mean and 95% interval over seeds (gain ratios, value, fit time)."""
    gains = [c for c in frame.columns if c.startswith("gain_ratio.")]
    out = []
    for (simulator, candidate), rows in frame.groupby(["simulator", "candidate"], sort=False):
        for figure in [*gains, "value_ratio", "fit_seconds"]:
            if rows[figure].notna().any():
                out.append({"simulator": simulator, "candidate": candidate, "figure": figure, **interval(rows[figure])})
    return out


def _cell(figure: dict) -> str:
    if figure["figure"] == "fit_seconds":
        return f"{figure['mean']:.1f}"
    return f"{figure['mean']:.2f} [{figure['low']:.2f}, {figure['high']:.2f}]"


def markdown(summary: list[dict], chosen: dict[str, dict[str, int]], header: str) -> str:
    """One table per simulator: a row per candidate, a column per figure."""
    lines = [header]
    for simulator, rows in pd.DataFrame(summary).groupby("simulator", sort=False):
        gains = [f for f in dict.fromkeys(rows["figure"]) if f.startswith("gain_ratio.")]
        figures = [*gains, "value_ratio", "fit_seconds"]
        names = [f.removeprefix("gain_ratio.") + " gain" if f.startswith("gain_ratio.") else f for f in figures]
        lines += ["", f"### {simulator} (selected learner per seed: {chosen.get(simulator, {})})", ""]
        lines += ["| candidate | " + " | ".join(names) + " |", "|---" * (len(figures) + 1) + "|"]
        for candidate, mine in rows.groupby("candidate", sort=False):
            by = {r["figure"]: r for r in mine.to_dict(orient="records")}
            lines += [f"| {candidate} | " + " | ".join(_cell(by[f]) if f in by else "" for f in figures) + " |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None, help="training sends of every simulator (default: ROWS)")
    parser.add_argument("--test-rows", type=int, default=TEST_ROWS)
    parser.add_argument("--simulators", nargs="+", choices=list(SIMULATORS), default=list(SIMULATORS))
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    args = parser.parse_args(argv)
    logging.getLogger("causalml").setLevel(logging.WARNING)
    started = time.perf_counter()
    sizes = {s: args.rows or ROWS[s] for s in args.simulators}
    lines = [
        line
        for simulator in args.simulators
        for seed in range(args.seeds)
        for line in run_seed(simulator, seed, sizes[simulator], args.test_rows, args.candidates)
    ]
    frame = pd.DataFrame(lines)
    summary = summarize(frame)
    chosen = {
        s: dict(Counter(rows["learner"])) for s, rows in frame[frame["candidate"] == "selected"].groupby("simulator")
    }
    seconds = round(time.perf_counter() - started, 1)
    header = (
        f"Learners against the truth: {args.seeds} seeds, training sends {sizes}, {args.test_rows:,} test customers; "
        f"mean [95% interval] over seeds; gain: gain ratio per arm vs the oracle ranking; value: decision value "
        f"ratio vs the oracle policy (benchmarks/learners.py); {seconds:.0f} s"
    )
    table = markdown(summary, chosen, header)
    result = {
        "seeds": args.seeds,
        "training_rows": sizes,
        "test_rows": args.test_rows,
        "definitions": {
            "gain_ratio": "area between the ranking's expected gain curve (cumulative true uplift of the top share "
            "by predicted uplift) and the random line, over the oracle ranking's (true uplift); per arm",
            "value_ratio": "true net value per customer of jobs.model.policy.choose on the predicted uplifts (no "
            "budget, exploration or holdout) over the same rule's on the true uplifts",
            "interval": "mean over seeds and its 95% t interval",
        },
        "summary": summary,
        "selected_learner": chosen,
        "seconds": seconds,
        "runs": lines,
    }
    headline = {
        f"{r['simulator']} {r['candidate']} {r['figure']}": round(r["mean"], 4)
        for r in summary
        if r["candidate"] == "selected" and r["figure"] == "value_ratio"
    }
    path = publish("learners-", result, headline, table)
    print(table, f"\n-> {path}")


if __name__ == "__main__":
    main()
