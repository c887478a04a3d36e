"""MLflow plumbing shared by the steps: the tracking store, the experiment, finding a run."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import mlflow
from mlflow.entities import Run

from jobs.settings import Settings

# The training run's holdout rows with their predictions, which the gate re-scores.
HOLDOUT_ARTIFACT = "holdout/predictions.parquet"


def use_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    cfg = settings.mlflow
    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment(cfg.experiment, artifact_location=cfg.artifact_root)
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def latest_training_run(settings: Settings, run_date: date) -> Run:
    """The most recent training run of run_date; MissingInputError when there is none."""
    run = training_run_for(settings, run_date)
    if run is None:
        from jobs.data.lake import MissingInputError

        raise MissingInputError(
            f"no training run logged for run_date={run_date}: run `uplift train --run-date {run_date}`"
        )
    return run


def training_run_for(settings: Settings, run_date: date) -> Run | None:
    """The most recent training run of run_date, if any."""
    experiment_id = use_tracking(settings)
    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.run_date = '{run_date.isoformat()}' and tags.stage = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None
