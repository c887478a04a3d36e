"""The model lifecycle in the MLflow registry: the Qini gate, promotion, rollback, status.

Aliases, not stages: `champion` is what scoring loads, `previous` is what a rollback restores.
The gate promotes a challenger only if, for every arm, its holdout Qini clears
`gate.qini_floor` with the bootstrap interval above zero; and, when a champion exists, the
champion was not trained for a later run date (a backfill never replaces newer knowledge)
and the challenger's mean Qini is not below the champion's, re-evaluated on the same holdout,
by more than `gate.champion_tolerance`; with `drift.on_fail: block_promotion`, also while the
scoring features drift from the training set past `drift.drifted_share_fail`. The decision and
its reasons are tags on the training run plus `gate.json` there and in the run date's report folder.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from jobs import metrics
from jobs.settings import Settings
from jobs.tracking import HOLDOUT_ARTIFACT, use_tracking

CHAMPION, PREVIOUS = "champion", "previous"


def alias_version(settings: Settings, alias: str):
    """The model version behind an alias, or None."""
    use_tracking(settings)
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(settings.mlflow.registered_model, alias)
    except MlflowException:
        return None


def _mean_qini(model, holdout: pd.DataFrame, settings: Settings) -> float:
    exp = settings.experiment
    predictions = model.predict(holdout)
    scores = []
    for arm in exp.arms:
        rows = holdout["arm"].isin([arm, exp.control]).to_numpy()
        t = (holdout["arm"][rows] == arm).to_numpy().astype(int)
        scores.append(metrics.qini_auc_score(holdout["label"][rows], predictions[f"uplift_{arm}"][rows], t))
    return float(np.mean(scores))


def decide(settings: Settings, run_date: date, run) -> dict:
    """Gate decision for the challenger logged by `run` (a training run of run_date)."""
    cfg = settings.gate
    reasons, passed = [], True
    challenger = {}
    for arm in settings.experiment.arms:
        qini, low = run.data.metrics[f"qini.{arm}"], run.data.metrics[f"qini_ci_low.{arm}"]
        challenger[arm] = qini
        if qini < cfg.qini_floor or low <= 0:
            passed = False
            reasons.append(f"{arm}: Qini {qini:.4f} (95% CI low {low:.4f}) must be >= {cfg.qini_floor} with CI low > 0")
        else:
            reasons.append(f"{arm}: Qini {qini:.4f} (95% CI low {low:.4f}) clears the floor {cfg.qini_floor}")
    challenger_mean = float(np.mean(list(challenger.values())))
    champion = alias_version(settings, CHAMPION)
    champion_info = None
    if champion is not None:
        champion_date = date.fromisoformat(champion.tags.get("run_date", "1970-01-01"))
        holdout = pd.read_parquet(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=HOLDOUT_ARTIFACT)
        )
        champion_model = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model}/{champion.version}")
        champion_mean = _mean_qini(champion_model, holdout, settings)
        champion_info = {
            "version": str(champion.version),
            "run_date": champion_date.isoformat(),
            "mean_qini_on_holdout": champion_mean,
        }
        if champion_date > run_date:
            passed = False
            reasons.append(
                f"champion v{champion.version} was trained for {champion_date}, after {run_date}: "
                "a backfill never replaces it"
            )
        elif challenger_mean < champion_mean - cfg.champion_tolerance:
            passed = False
            reasons.append(
                f"mean Qini {challenger_mean:.4f} is below champion v{champion.version}'s {champion_mean:.4f} "
                f"on the same holdout by more than {cfg.champion_tolerance}"
            )
        else:
            reasons.append(
                f"mean Qini {challenger_mean:.4f} vs champion v{champion.version}'s {champion_mean:.4f}: not worse"
            )
    else:
        reasons.append("no champion yet")
    if settings.drift.on_fail == "block_promotion":
        from jobs.drift import feature_drift, level  # Evidently: imported only when it is needed

        share = feature_drift(settings, run_date)[1]
        if level(share, settings) == "fail":
            passed = False
            reasons.append(
                f"scoring features drift from the training set (drifted share {share:.2f} >= "
                f"{settings.drift.drifted_share_fail}) and drift.on_fail is block_promotion"
            )
    return {
        "run_date": run_date.isoformat(),
        "run_id": run.info.run_id,
        "model_version": run.data.tags["model_version"],
        "decision": "promote" if passed else "reject",
        "reasons": reasons,
        "challenger_mean_qini": challenger_mean,
        "champion": champion_info,
        "qini_definition": "scikit-uplift qini_auc_score (normalised by the perfect curve)",
    }


def record(settings: Settings, decision: dict, report_path: Path) -> None:
    """Keep the decision on the training run (tags + gate.json) and in the report folder."""
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(decision, indent=2))
    client = mlflow.MlflowClient()
    client.set_tag(decision["run_id"], "gate.decision", decision["decision"])
    client.set_tag(decision["run_id"], "gate.reasons", "; ".join(decision["reasons"])[:5000])
    client.log_artifact(decision["run_id"], str(report_path))


def promote(settings: Settings, version: str) -> dict:
    """Make version the champion; the former champion becomes `previous`."""
    use_tracking(settings)
    client, name = mlflow.MlflowClient(), settings.mlflow.registered_model
    current = alias_version(settings, CHAMPION)
    if current is not None and str(current.version) == str(version):
        previous = alias_version(settings, PREVIOUS)
        return {"champion": str(version), "previous": str(previous.version) if previous else None}
    client.get_model_version(name, str(version))  # fails clearly if the version does not exist
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(current.version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return {"champion": str(version), "previous": str(current.version) if current else None}


def rollback(settings: Settings) -> dict:
    """Put the `previous` version back as champion; the rolled-back one becomes `previous`."""
    previous = alias_version(settings, PREVIOUS)
    if previous is None:
        raise RuntimeError(f"model '{settings.mlflow.registered_model}' has no '{PREVIOUS}' version to roll back to")
    return promote(settings, previous.version)


def status(settings: Settings) -> dict:
    """Champion and previous versions with the run date each was trained for."""
    out = {}
    for alias in (CHAMPION, PREVIOUS):
        version = alias_version(settings, alias)
        out[alias] = (
            None
            if version is None
            else {"version": str(version.version), "run_date": version.tags.get("run_date"), "run_id": version.run_id}
        )
    return out
