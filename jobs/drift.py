"""Drift: Evidently data-drift reports of what the model sees and what it recommends.

Every side is sampled to at most `drift.sample_rows` rows with a fixed seed, streaming the
Parquet files batch by batch, so memory stays flat whatever the table size (Evidently's
maintainers advise sampling; full large inputs take hours). Two comparisons per run: the
scoring set's features against the training set, and (when an earlier run exists) the
predicted uplift of every arm and the recommended-arm mix against the previous run's
audience. Each gives a drifted share; the outcome is `ok`, `warn` (share >=
`drifted_share_warn`: the run continues, the summary shows it) or `fail` (share >=
`drifted_share_fail`: `on_fail` decides, fail the run or block promotion).
"""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pyarrow.dataset as pads
from evidently import Report
from evidently.presets import DataDriftPreset

from jobs.lake import partition_dates, partition_dir, sample_parquet
from jobs.settings import Settings, report_dir


def drifted_share(report: dict) -> tuple[float, dict[str, dict]]:
    """The share of drifted columns, and each column's test and score, from a snapshot's dict()."""
    share, per_column = None, {}
    for metric in report["metrics"]:
        name, value = metric["metric_name"], metric["value"]
        if name.startswith("DriftedColumnsCount"):
            share = float(value["share"])
        elif name.startswith("ValueDrift("):
            args = dict(part.split("=", 1) for part in name[len("ValueDrift(") : -1].split(","))
            per_column[args["column"]] = {
                "method": args.get("method"),
                "threshold": args.get("threshold"),
                "score": float(value),
            }
    if share is None:
        raise RuntimeError("Evidently report has no DriftedColumnsCount metric")
    return share, per_column


LEVELS = ("ok", "warn", "fail")


class DriftFailed(RuntimeError):
    """Drift reached drift.drifted_share_fail and drift.on_fail is fail_run."""


def level(share: float, settings: Settings) -> str:
    cfg = settings.drift
    return "fail" if share >= cfg.drifted_share_fail else "warn" if share >= cfg.drifted_share_warn else "ok"


def compare(reference: pd.DataFrame, current: pd.DataFrame) -> tuple:
    """Evidently data-drift snapshot of current vs reference, its drifted share and column scores."""
    snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
    share, per_column = drifted_share(snapshot.dict())
    return snapshot, share, per_column


def feature_drift(settings: Settings, run_date: date) -> tuple:
    """The scoring set of run_date against the training set (the model's reference), sampled."""
    cfg, names = settings.drift, settings.features.names
    reference = sample_parquet(partition_dir(settings, "features/training", run_date), names, cfg.sample_rows, cfg.seed)
    current = sample_parquet(partition_dir(settings, "features/scoring", run_date), names, cfg.sample_rows, cfg.seed)
    return (*compare(reference, current), len(reference), len(current))


def audience_policy(settings: Settings, run_date: date) -> str:
    """The policy an audience was published under: `model:<v>` or `constant:<arm>` (before the
    policy column existed, every audience was a model's)."""
    dataset = pads.dataset(str(partition_dir(settings, "audience", run_date)), format="parquet")
    if "policy" not in dataset.schema.names:
        return "model"
    first = dataset.head(1, columns=["policy"]).column("policy")
    return str(first[0].as_py()) if len(first) else "model"


def previous_audience(settings: Settings, run_date: date) -> date | None:
    """The latest run date before run_date that published an audience."""
    earlier = [day for day in partition_dates(settings, "audience") if day < run_date]
    return earlier[-1] if earlier else None


def prediction_drift(settings: Settings, run_date: date, previous: date) -> tuple:
    """Predicted uplift per arm and the recommended-arm mix of run_date against the previous run."""
    cfg = settings.drift
    columns = [f"uplift_{arm}" for arm in settings.experiment.arms] + ["recommended_arm"]
    samples = [
        sample_parquet(partition_dir(settings, "audience", day), columns, cfg.sample_rows, cfg.seed)
        for day in (previous, run_date)
    ]
    return compare(*samples)


def drift(settings: Settings, run_date: date) -> dict:
    """Write the drift reports of run_date (HTML + drift.json); return or raise on the outcome.

    Outcome: the worst level of feature drift and prediction drift (ok < warn < fail). On fail,
    `drift.on_fail: fail_run` fails the step (after the reports are written);
    `block_promotion` lets the run finish, the gate having refused promotion already.
    """
    cfg = settings.drift
    folder = report_dir(settings, run_date)
    folder.mkdir(parents=True, exist_ok=True)
    snapshot, share, per_column, reference_rows, current_rows = feature_drift(settings, run_date)
    snapshot.save_html(str(folder / "drift.html"))
    levels = [level(share, settings)]
    predictions, payload = None, {"features": snapshot.dict()}
    previous = previous_audience(settings, run_date)
    # A constant policy's uplifts are one value per arm: comparing them with a model's (or with
    # each other) measures the switch of policy, not drift.
    policies = [audience_policy(settings, day) for day in (previous, run_date)] if previous else []
    if previous is not None and any(p.startswith("constant:") for p in policies):
        predictions = {"previous_run_date": previous.isoformat(), "skipped": f"policies {policies}: not comparable"}
        previous = None
    if previous is not None:
        p_snapshot, p_share, p_columns = prediction_drift(settings, run_date, previous)
        p_snapshot.save_html(str(folder / "drift_predictions.html"))
        payload["predictions"] = p_snapshot.dict()
        levels.append(level(p_share, settings))
        predictions = {
            "previous_run_date": previous.isoformat(),
            "drifted_share": p_share,
            "outcome": levels[-1],
            "column_drift_scores": p_columns,
        }
    outcome = max(levels, key=LEVELS.index)
    summary = {
        "run_date": run_date.isoformat(),
        "outcome": outcome,
        "drifted_share": share,
        "threshold_warn": cfg.drifted_share_warn,
        "threshold_fail": cfg.drifted_share_fail,
        "on_fail": cfg.on_fail,
        "reference_rows": reference_rows,
        "current_rows": current_rows,
        "column_drift_scores": per_column,
        "predictions": predictions,
    }
    (folder / "drift.json").write_text(json.dumps({"summary": summary, "evidently": payload}, indent=2, default=str))
    if outcome == "fail" and cfg.on_fail == "fail_run":
        raise DriftFailed(
            f"drift outcome 'fail' for run_date={run_date}: features drifted share {share:.2f}"
            + (f", predictions vs {previous} {predictions['drifted_share']:.2f}" if previous else "")
            + f" (fail at {cfg.drifted_share_fail}); reports: {folder / 'drift.html'}, {folder / 'drift.json'}"
        )
    return {
        "outcome": outcome,
        "drifted_share": share,
        "predictions": predictions and predictions.get("drifted_share"),
        "reference_rows": reference_rows,
        "current_rows": current_rows,
        "html": str(folder / "drift.html"),
    }
