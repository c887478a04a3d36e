"""Small helpers shared by tests: isolated copies of the settings and of a lake."""

from __future__ import annotations

import shutil
from pathlib import Path

from jobs.settings import Settings


def settings_in(settings: Settings, root: Path, **sections) -> Settings:
    """The same settings with lake, reports, ground truth and MLflow under root (sections replaced)."""
    paths = settings.paths.model_copy(
        update={"lake": root / "lake", "reports": root / "reports", "ground_truth": root / "ground_truth"}
    )
    mlflow = settings.mlflow.model_copy(
        update={"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "mlartifacts")}
    )
    return settings.model_copy(update={"paths": paths, "mlflow": mlflow, **sections})


def copy_raw(source: Settings, target: Settings) -> None:
    shutil.copytree(source.paths.lake / "raw", target.paths.lake / "raw")
