"""Training: fit the challenger on a run date's training set, evaluate it on a holdout, log to MLflow.

The holdout (a stable share of the customers, `customer_split`: a customer sent on several
nights has all its rows on one side) is never seen by the models. On the other customers every
candidate learner is fitted, calibrated and valued, and the best one kept (jobs.model.selection,
jobs.model.learners). Per-arm Qini of its raw uplift (scikit-uplift normalisation, see
jobs.model.metrics) with a bootstrap interval, uplift@30%, and the observed ATE are computed on the
holdout and logged with the holdout predictions, which the gate uses to value the challenger's, the
champion's and the constant policies on the same rows.

Per arm, the Qini diagnostic decides whether the model's ranking is used: an arm whose Qini
is below `gate.qini_floor` or whose interval does not lie above zero is *constant*: its
targeting uplift is its average effect (stratified by campaign, on the training rows) for
every customer, so a flat or weak arm is sent to everyone it pays for, or to no one, and
never blocks the other arms.

Every further outcome (`targeting.outcomes`) gets the same: models per arm on its own label,
its Qini diagnostic and constant fallback per arm. A guardrail outcome's per-customer upper
bound (`guardrail_bounds`) is calibrated on the holdout: the observed uplift's 95% upper limit
in each quantile bin of the raw uplift (for a constant arm: its average effect's).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
from matplotlib.figure import Figure
from mlflow.models import infer_signature
from threadpoolctl import threadpool_limits

from jobs.data.etl import ASSIGNMENT_KEYS
from jobs.data.lake import MissingInputError, partition_dir, sample_parquet
from jobs.model import drivers, metrics, policy, selection
from jobs.model.pyfunc import UpliftModel
from jobs.model.registry import PORTABLE_ARTIFACT
from jobs.model.splits import customer_split
from jobs.model.tracking import HOLDOUT_ARTIFACT, use_tracking
from jobs.names import (
    ARM_MODE_PARAM,
    CALIBRATION_PLOT,
    LEARNER_PARAM,
    MODEL_VERSION_TAG,
    RANDOMIZED,
    RUN_DATE_TAG,
    SCORING_SET,
    SELECTION_ARTIFACT,
    TRAINING_SET,
    arm_metric,
    key,
    label_column,
    raw_uplift_column,
    uplift_column,
)
from jobs.settings import Settings

# What the logged model needs to load and predict, pinned to this environment's versions. Declared,
# not inferred: MLflow's inference imports the model in a subprocess (4 s of every training run).
MODEL_REQUIREMENTS = [
    f"{name}=={version(name)}" for name in ("mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "cloudpickle")
]
FEATURE_SPEC_ARTIFACT = "feature_spec.json"


def _audience(settings: Settings, run_date: date) -> int | None:
    """The scoring set's rows (the audience the budgets apply to), or None before there is one."""
    path = partition_dir(settings, SCORING_SET, run_date)
    return pads.dataset(str(path), format="parquet").count_rows() if path.exists() else None


def load_training_set(settings: Settings, run_date: date) -> pd.DataFrame:
    """The run date's training set (the columns training uses), or a uniform sample of `training.max_rows`;
    in send order, so the same rows train the same model whatever order the ETL wrote them in."""
    path = partition_dir(settings, TRAINING_SET, run_date)
    if not path.exists():
        raise MissingInputError(f"no training set at {path}: run `uplift etl --run-date {run_date}` first")
    labels = [label_column(o) for o in [None, *settings.targeting.outcomes]]
    columns = ["customer_id", "campaign_id", "arm", *labels, *ASSIGNMENT_KEYS, *settings.features.names]
    rows = settings.training.max_rows or sys.maxsize
    return sample_parquet(path, columns, rows, settings.training.seed, key="send_id")


def fit_model(train: pd.DataFrame, settings: Settings, audience: int | None = None) -> UpliftModel:
    """The challenger: every candidate learner fitted on train, the one whose calibrated policy is
    worth the most kept (jobs.model.selection). audience: the scoring set's rows (budgets)."""
    return selection.fit_model(train, settings, audience)


def evaluate(model: UpliftModel, holdout: pd.DataFrame, settings: Settings) -> tuple[dict, pd.DataFrame]:
    """Metrics per arm and outcome (keyed by `key(arm, outcome)`) on holdout, and the holdout with the
    model's predictions and its raw uplifts (`raw_uplift_column`): the rankings the diagnostics judge.

    The (arm, outcome) pairs are evaluated side by side, one thread each: their bootstrap is
    numpy's cumulative sums, which release the GIL. BLAS is held to one thread meanwhile: the
    perfect curve's matrix-vector product in each thread would otherwise start BLAS threads of its
    own, and the threads then took longer together than one after the other."""
    exp, gate = settings.experiment, settings.gate
    scored = predictions(model, holdout)

    def diagnose(pair: tuple[str, str | None]) -> dict:
        arm, outcome = pair
        k = key(arm, outcome)
        rows = scored[scored["arm"].isin([arm, exp.control]) & scored[label_column(outcome)].notna()]
        y, t, u = (
            rows[label_column(outcome)].to_numpy().astype(int),
            (rows["arm"] == arm).to_numpy().astype(int),
            rows[raw_uplift_column(k)].to_numpy(),
        )
        w, groups = diagnostic_weights(rows), pd.factorize(rows["customer_id"])[0]
        seed = settings.training.seed
        low, high = metrics.qini_interval(
            y, u, t, rounds=gate.bootstrap_rounds, seed=seed, sample_weight=w, groups=groups
        )
        return {
            "qini": metrics.qini_auc_score(y, u, t, sample_weight=w),
            "uplift_auc": metrics.uplift_auc_score(y, u, t, sample_weight=w),
            "qini_ci_low": low,
            "qini_ci_high": high,
            "uplift_at_30": metrics.uplift_at_k(y, u, t, 0.3, sample_weight=w),
            "ate_observed": metrics.average_treatment_effect(y, t, sample_weight=w),
            "ate_predicted": float(rows[uplift_column(k)].mean()),
            "deciles": metrics.uplift_by_decile(y, u, t, sample_weight=w),
        }

    pairs = [(a, o) for o in [None, *model.model.outcomes] for a in exp.arms]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = dict(zip([key(*p) for p in pairs], pool.map(diagnose, pairs), strict=True))
    return results, scored


def predictions(model: UpliftModel, holdout: pd.DataFrame) -> pd.DataFrame:
    """holdout (index 0..n-1) with the model's predictions and raw uplifts."""
    holdout = holdout.reset_index(drop=True)
    p = model.predict_proba(holdout)
    raw = model.raw_uplifts(holdout, p)
    predicted = model.model.predict(holdout, model.loaded, os.cpu_count() or 1)
    raws = {raw_uplift_column(k): raw[k].to_numpy() for k in raw.columns}
    return pd.concat([holdout, predicted.reset_index(drop=True)], axis=1).assign(**raws)


def diagnostic_weights(rows: pd.DataFrame) -> np.ndarray | None:
    """The weights of the per-arm diagnostics: none where every row comes from a randomized campaign
    (the plain Qini, scikit-uplift's), else each row's inverse propensity, so that an own audience's
    targeted sends count for the customers the same arm could have reached at random."""
    if (rows["assignment"] == RANDOMIZED).all():
        return None
    return 1.0 / rows["propensity"].to_numpy(float)


def _effects(rows: pd.DataFrame, outcome: str | None, arms: list[str], settings: Settings) -> dict[str, dict]:
    """Each arm's average effect on outcome's label in rows (policy.average_effects: by campaign, each
    send weighed by the inverse of its propensity)."""
    counts = policy.arm_counts(rows, label_column(outcome))
    return policy.average_effects(counts, settings.experiment.control, arms)


def constant_arms(results: dict, train_rows: pd.DataFrame, settings: Settings) -> dict[str, dict]:
    """(arm, outcome) keys whose ranking the Qini diagnostic does not trust, with the average effect
    (ate, low, high) each gets instead."""
    floor, out = settings.gate.qini_floor, {}
    for outcome in [None, *settings.targeting.outcomes]:
        flat = [
            arm
            for arm in settings.experiment.arms
            if not (results[key(arm, outcome)]["qini"] >= floor and results[key(arm, outcome)]["qini_ci_low"] > 0)
        ]
        if flat:
            out |= {key(arm, outcome): e for arm, e in _effects(train_rows, outcome, flat, settings).items()}
    return out


def guardrail_bounds(scored: pd.DataFrame, flat: dict[str, dict], settings: Settings) -> dict[str, dict]:
    """Per guardrail outcome and arm: the bins of the per-customer upper bound on its uplift.

    A ranked arm: the holdout rows (the arm's and control's) are cut into `bound_bins` quantile
    bins of the learner's raw uplift; a bin's bound is the 95% upper limit of the
    uplift observed in it (policy.average_effects: by campaign). So the bound is
    what the data shows for customers the model ranks alike, whether the model is calibrated or
    not. A constant arm: one bin, its average effect's upper limit. The bins come from the
    holdout the gate values policies on (as the arm modes do), which favours the bounds a little.
    """
    exp, out = settings.experiment, {}
    for outcome, outcome_spec in settings.targeting.outcomes.items():
        if outcome_spec.guardrail is None:
            continue
        bins = outcome_spec.guardrail.bound_bins
        for arm in exp.arms:
            k = key(arm, outcome)
            if k in flat:
                out[k] = {"edges": [], "highs": [float(flat[k]["high"])]}
                continue
            rows = scored[scored["arm"].isin([arm, exp.control]) & scored[label_column(outcome)].notna()]
            raw = rows[raw_uplift_column(k)].to_numpy()
            edges = np.unique(np.quantile(raw, np.arange(1, bins) / bins)).tolist()
            where = np.searchsorted(edges, raw, side="right")
            highs = [
                _effects(rows[where == b], outcome, [arm], settings)[arm]["high"] if (where == b).any() else 1.0
                for b in range(len(edges) + 1)
            ]
            out[k] = {"edges": edges, "highs": [float(h) for h in highs]}
    return out


def feature_importance(model: UpliftModel) -> pd.DataFrame:
    """Gain importance of every feature in every outcome model (a column per key: the arm, or
    arm__outcome) and every effect model (effect_<key>, its regressors summed)."""
    loaded = model.loaded

    def gain(boosters) -> np.ndarray:
        return sum(b.feature_importance(importance_type="gain") for b in boosters)

    columns = {k: gain(v) for k, v in loaded.outcome.items()}
    columns |= {f"effect_{k}": gain(b for _, b in v) for k, v in loaded.effects.items()}
    return pd.DataFrame(columns, index=model.features).rename_axis("feature")


def explain_uplift(model: UpliftModel, holdout: pd.DataFrame, settings: Settings) -> dict:
    """SHAP values of every arm's raw uplift on a sample of the holdout (jobs.model.drivers)."""
    n = min(len(holdout), settings.training.drivers_sample)
    sample = holdout.sample(n=n, random_state=settings.training.seed) if n < len(holdout) else holdout
    modes = {arm: "constant" if arm in model.model.constant else "ranked" for arm in settings.experiment.arms}
    return drivers.explain(model.loaded, sample, model.model, settings.experiment.arms, modes)


def _plots(scored: pd.DataFrame, results: dict, settings: Settings, folder: Path) -> None:
    exp = settings.experiment
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for arm in exp.arms:
        rows = scored[scored["arm"].isin([arm, exp.control])]
        t = (rows["arm"] == arm).astype(int)
        x, q = metrics.qini_curve(rows["label"], rows[raw_uplift_column(arm)], t)
        axes[0].plot(x / x[-1], q, label=f"{arm} (Qini {results[arm]['qini']:.3f})")
        deciles = pd.DataFrame(results[arm]["deciles"])
        axes[1].plot(deciles["decile"], deciles["observed_uplift"], marker="o", label=f"{arm} observed")
    axes[0].plot([0, 1], [0, 0], color="grey", linestyle=":")
    axes[0].set(title="Qini curve per arm (holdout)", xlabel="share targeted", ylabel="incremental responses")
    axes[1].axhline(0, color="grey", linestyle=":")
    axes[1].set(title="Observed uplift by predicted-uplift decile", xlabel="decile (1 = highest)", ylabel="uplift")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "qini_and_deciles.png", dpi=110)


def _calibration_plot(curves: dict[str, dict], folder: Path) -> None:
    """Per arm and outcome: observed uplift by raw-uplift quintile on the selection rows, and the calibration line."""
    fig = Figure(figsize=(4.2 * max(1, len(curves)), 4.0))
    for ax, (k, c) in zip(np.atleast_1d(fig.subplots(1, max(1, len(curves)))), curves.items(), strict=False):
        bins = c["bins"]
        ax.errorbar(
            bins["raw"],
            bins["observed"],
            yerr=[1.96 * e for e in bins["se"]],
            fmt="o",
            color="grey",
            label="observed (95%)",
        )
        ax.plot(c["x"], c["y"], color="#2a9d8f", label=f"calibrated (slope {c['slope']:.2f})")
        ax.plot(c["x"], c["x"], color="#e76f51", linestyle=":", label="as predicted")
        ax.set(title=k, xlabel="raw predicted uplift", ylabel="uplift")
        ax.legend(fontsize=7)
    fig.suptitle("Calibration of the predicted uplift (selection rows)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / CALIBRATION_PLOT, dpi=100)


def log_model(model: UpliftModel, example: pd.DataFrame, settings: Settings) -> str:
    """Log the model to the active run as a pyfunc, with its boosters as the model's own
    portable.json (what scoring loads: jobs.model.registry.portable_model), and register it: the new version."""
    with tempfile.TemporaryDirectory() as tmp:
        portable = Path(tmp) / PORTABLE_ARTIFACT
        portable.write_text(model.portable().to_json())
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            artifacts={"portable": str(portable)},
            signature=infer_signature(example, model.predict(None, example)),
            input_example=example,
            pip_requirements=MODEL_REQUIREMENTS,
            registered_model_name=settings.mlflow.registered_model,
        )
    return str(info.registered_model_version)


def train(settings: Settings, run_date: date) -> dict:
    """Fit, evaluate and log a challenger for run_date; register it as a new model version."""
    data = load_training_set(settings, run_date)
    cfg = settings.training
    held = customer_split(data["customer_id"], cfg.holdout_fraction, cfg.seed, "holdout")
    train_rows, holdout = data[~held], data[held]
    if train_rows.empty or holdout.empty:
        raise ValueError(
            f"the training set for {run_date} has {data['customer_id'].nunique()} customers: too few to hold "
            f"out {cfg.holdout_fraction:.0%} of them and train on the rest"
        )
    model = fit_model(train_rows, settings, _audience(settings, run_date))
    results, scored = evaluate(model, holdout, settings)  # the ranking diagnostics, on the raw uplifts
    flat = constant_arms(results, train_rows, settings)
    model = model.replace(
        constant={k: e["ate"] for k, e in flat.items()}, bounds=guardrail_bounds(scored, flat, settings)
    )
    # What the gate values: the targeting uplifts (calibrated; constant arms at their average effect) and the bounds.
    predicted = predictions(model, holdout)

    use_tracking(settings)
    with mlflow.start_run(run_name=f"train {run_date}") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({RUN_DATE_TAG: run_date.isoformat(), "stage": "train"})
        _log_params(settings, model, results, len(train_rows), len(holdout))
        _log_metrics(model, results)
        explained = _log_files(Path(tmp), settings, model, scored, results, holdout, predicted)
        version = log_model(model, holdout[model.features].head(5), settings)
        mlflow.MlflowClient().set_model_version_tag(
            settings.mlflow.registered_model, version, RUN_DATE_TAG, run_date.isoformat()
        )
        mlflow.set_tag(MODEL_VERSION_TAG, version)
    return {
        "run_id": run.info.run_id,
        "model_version": version,
        "train_rows": len(train_rows),
        "holdout_rows": len(holdout),
        "learner": model.selection["selected"],
        "candidates": {name: round(c["value"], 4) for name, c in model.selection["candidates"].items()},
        "qini": {k: round(m["qini"], 4) for k, m in results.items()},
        "constant_arms": model.model.constant,
        "top_drivers": {arm: a["drivers"][0]["feature"] for arm, a in explained["arms"].items()},
    }


def _log_params(settings: Settings, model: UpliftModel, results: dict, train_rows: int, holdout_rows: int) -> None:
    cfg = settings.training
    mlflow.log_params({f"lgbm.{k}": v for k, v in cfg.lightgbm.items()})
    mlflow.log_params(
        {
            LEARNER_PARAM: model.learner,
            "selected_candidate": model.selection["selected"],
            "candidates": ",".join(model.selection["candidates"]),
            "fit_rows": model.selection["fit_rows"],
            "selection_rows": model.selection["selection_rows"],
        }
    )
    mlflow.log_params(
        {
            "train_rows": train_rows,
            "holdout_rows": holdout_rows,
            "arms": ",".join(settings.experiment.arms),
            "control": settings.experiment.control,
            "seed": cfg.seed,
            "qini_definition": "scikit-uplift qini_auc_score",
            "features": ",".join(model.features),
        }
    )
    modes = {arm_metric(ARM_MODE_PARAM, k): "constant" if k in model.model.constant else "ranked" for k in results}
    mlflow.log_params(modes)
    mlflow.log_dict(settings.features.model_dump(mode="json"), FEATURE_SPEC_ARTIFACT)


def _log_metrics(model: UpliftModel, results: dict) -> None:
    for arm, m in results.items():
        mlflow.log_metrics({arm_metric(k, arm): v for k, v in m.items() if k != "deciles" and np.isfinite(v)})
    for name, boosters in model.loaded.outcome.items():
        mlflow.log_metric(arm_metric("best_iteration", name), min(b.current_iteration() for b in boosters))
    mlflow.log_metrics({arm_metric("constant_uplift", arm): value for arm, value in model.model.constant.items()})
    for name, c in model.selection["candidates"].items():
        mlflow.log_metrics({f"selection.{name}.value": c["value"], f"selection.{name}.low": c["low"]})


def _log_files(
    folder: Path, settings: Settings, model, scored, results: dict, holdout: pd.DataFrame, predictions: pd.DataFrame
) -> dict:
    """The run's files: plots, metrics, guardrail bounds, feature importance, the uplift drivers and the
    holdout's predictions (what the gate reads). Returns the drivers."""
    _plots(scored, results, settings, folder)
    (folder / "metrics.json").write_text(json.dumps(results, indent=2))
    (folder / SELECTION_ARTIFACT).write_text(json.dumps(model.selection, indent=2))
    _calibration_plot(model.selection["calibration"], folder)
    if model.model.bounds:
        (folder / "guardrail_bounds.json").write_text(json.dumps(model.model.bounds, indent=2))
    feature_importance(model).to_csv(folder / "feature_importance.csv")
    explained = explain_uplift(model, holdout, settings)
    drivers.write(explained, folder)
    (folder / "holdout").mkdir()
    predictions.to_parquet(folder / HOLDOUT_ARTIFACT, index=False)
    mlflow.log_artifacts(str(folder))
    return explained
