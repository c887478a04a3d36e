"""What drives each arm's uplift: SHAP values of the raw uplift itself, from the models that make it.

A T-learner's uplift of arm a for customer x is ``p_a(x) - p_control(x)``. Each LightGBM outcome
model explains its own log-odds exactly with TreeSHAP (LightGBM's `pred_contrib`, which
handles its categorical splits): ``f(x) = b + sum_j phi_j(x)``. The probability is the
sigmoid of the log-odds, so each model's values are carried to the probability scale by
the model's own secant ``(sigmoid(f(x)) - sigmoid(b)) / (f(x) - b)`` for that customer (the
rescale rule), which keeps them additive: ``sum_j phi_j(x) = p(x) - sigmoid(b)``. An outcome
model that is a cross-fitted pair is the mean of its two, and so are its values. The uplift's
value for feature j is the arm model's minus the control model's, and for every customer

    base + sum_j shap_j(x) = uplift(x)        base = sigmoid(b_a) - sigmoid(b_control)

up to floating point (tested at 1e-9). A learner with effect models (X, DR: the uplift is a weighted
sum of regressors, jobs.model.portable) is explained by the same weighted sum of the regressors'
TreeSHAP values, additive as they are. Calibration is a monotone map after the raw uplift: it
changes no driver's order. Interventional SHAP on the probability scale would
need a background set, which shap's TreeExplainer refuses for LightGBM's categorical splits.

Computed at training time on a sample of the holdout (`training.drivers_sample` rows) and
logged to MLflow with the model (`drivers/`); the campaign page's "Why" reads them there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from jobs.model.portable import design_matrix

DRIVERS_DIR = "drivers"  # artifact folder of the training run
SUMMARY = "uplift_drivers.json"
VALUES = "uplift_shap_{arm}.parquet"
PICTURE = "uplift_drivers.png"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def probability_shap(booster, x: pd.DataFrame) -> tuple[np.ndarray, float]:
    """rows x features SHAP values of the model's probability (rescaled TreeSHAP), and its base probability."""
    contrib = booster.predict(x, pred_contrib=True)
    phi, base = contrib[:, :-1], contrib[0, -1]
    raw = contrib.sum(axis=1)
    delta = raw - base
    p, p_base = _sigmoid(raw), float(_sigmoid(base))
    slope = p_base * (1 - p_base)  # the limit of the secant where the log-odds equal the base
    safe = np.where(np.abs(delta) > 1e-12, delta, 1.0)
    secant = np.where(np.abs(delta) > 1e-12, (p - p_base) / safe, slope)
    return phi * secant[:, None], p_base


def mean_probability_shap(boosters: list, x: pd.DataFrame) -> tuple[np.ndarray, float]:
    """probability_shap of the mean of boosters (a cross-fitted pair): the mean of theirs."""
    parts = [probability_shap(b, x) for b in boosters]
    return np.mean([phi for phi, _ in parts], axis=0), float(np.mean([base for _, base in parts]))


def effect_shap(parts: list, x: pd.DataFrame) -> tuple[np.ndarray, float]:
    """TreeSHAP of a weighted sum of regressors [(weight, booster)]: the weighted sum of theirs."""
    phi, base = np.zeros(x.shape), 0.0
    for weight, booster in parts:
        contrib = booster.predict(x, pred_contrib=True)
        phi += weight * contrib[:, :-1]
        base += weight * float(contrib[0, -1])
    return phi, base


def uplift_shap(loaded, frame: pd.DataFrame, model, arm: str) -> tuple[pd.DataFrame, float]:
    """Per customer of frame, the SHAP value of every feature for arm's raw uplift, and the base uplift.

    loaded: jobs.model.portable.Loaded; model: the PortableModel (numeric, categories, control)."""
    x = design_matrix(frame, model.numeric, model.categories)
    if arm in loaded.effects:
        values, base = effect_shap(loaded.effects[arm], x)
        return pd.DataFrame(values, columns=x.columns, index=frame.index), base
    treated, base_t = mean_probability_shap(loaded.outcome[arm], x)
    control, base_c = mean_probability_shap(loaded.outcome[model.control], x)
    return pd.DataFrame(treated - control, columns=x.columns, index=frame.index), base_t - base_c


def summarize(values: pd.DataFrame, base: float) -> list[dict]:
    """Features by mean |SHAP| (largest first), with the mean signed value: the uplift's drivers."""
    table = pd.DataFrame(
        {"feature": values.columns, "mean_abs_shap": values.abs().mean().to_numpy(), "mean_shap": values.mean()}
    ).sort_values("mean_abs_shap", ascending=False, kind="mergesort")
    return [
        {"feature": r.feature, "mean_abs_shap": float(r.mean_abs_shap), "mean_shap": float(r.mean_shap)}
        for r in table.itertuples()
    ]


def explain(loaded, sample: pd.DataFrame, model, arms: list[str], arm_modes: dict[str, str]) -> dict:
    """Every arm's uplift drivers on sample, and the per-customer values (for the artifacts)."""
    out = {"rows": len(sample), "arms": {}, "values": {}}
    for arm in arms:
        values, base = uplift_shap(loaded, sample, model, arm)
        out["values"][arm] = values
        out["arms"][arm] = {
            "base_uplift": base,
            "mode": arm_modes.get(arm, "ranked"),
            "drivers": summarize(values, base),
        }
    return out


def write(explained: dict, folder: Path, top: int = 10) -> Path:
    """drivers/uplift_drivers.json, one parquet of per-customer values per arm, and a picture."""
    out = folder / DRIVERS_DIR
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "rows": explained["rows"],
        "definition": "mean |SHAP| of the raw uplift on a holdout sample: a T-learner's p_arm - p_control "
        "(TreeSHAP of both models' log-odds carried to probability by each customer's secant), an X- or "
        "DR-learner's effect regressors' TreeSHAP (base + sum = uplift)",
        "arms": explained["arms"],
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    for arm, values in explained["values"].items():
        values.to_parquet(out / VALUES.format(arm=arm), index=False)
    arms = list(explained["arms"])
    fig = Figure(figsize=(4.2 * max(1, len(arms)), 0.35 * top + 1.4))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(arms))))
    for ax, arm in zip(axes, arms, strict=False):
        drivers = explained["arms"][arm]["drivers"][:top][::-1]
        colors = ["#2a9d8f" if d["mean_shap"] >= 0 else "#e76f51" for d in drivers]
        ax.barh([d["feature"] for d in drivers], [d["mean_abs_shap"] for d in drivers], color=colors)
        mode = explained["arms"][arm]["mode"]
        ax.set(title=f"{arm}" + (" (constant arm)" if mode == "constant" else ""), xlabel="mean |SHAP| of uplift")
    fig.suptitle("Uplift drivers (green: raises uplift on average, red: lowers it)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / PICTURE, dpi=100)
    return out
