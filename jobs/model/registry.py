"""The model lifecycle in the MLflow registry: promotion, rollback, status (the gate is jobs.model.gate).

Aliases, not stages: `champion` is what scoring loads, `previous` is what a rollback restores.
Scoring loads a version's boosters from the model's `artifacts/portable.json` (written with the
model by jobs.model.train): the pickled pyfunc would import scikit-learn and LightGBM on the driver,
which only ships the model strings to Spark's workers.
"""

from __future__ import annotations

from datetime import date

import mlflow
from mlflow.exceptions import MlflowException

from jobs.model.portable import PortableModel
from jobs.model.tracking import use_tracking
from jobs.names import LEARNER_PARAM, RUN_DATE_TAG, monitoring_tag
from jobs.settings import Settings

CHAMPION, PREVIOUS = "champion", "previous"
# The model's file of its boosters as model strings (PortableModel), under the model's artifacts/.
PORTABLE_ARTIFACT = "portable.json"


def alias_version(settings: Settings, alias: str):
    """The model version behind an alias, or None."""
    use_tracking(settings)
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(settings.mlflow.registered_model, alias)
    except MlflowException:
        return None


def portable_model(settings: Settings, version: str) -> PortableModel:
    """A model version's boosters as PortableModel: its portable.json, or (a model logged
    before there was one) the pyfunc's, unpickled."""
    use_tracking(settings)
    uri = f"models:/{settings.mlflow.registered_model}/{version}"
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/artifacts/{PORTABLE_ARTIFACT}")
    except (MlflowException, OSError):
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().portable()
    with open(path) as file:
        return PortableModel.from_json(file.read())


# A version's tag, set by jobs.monitoring.champion: the night and the evidence its realized results gave against it.
FLAGGED_TAG = monitoring_tag("flagged")
# A version's tag: the first run date the gate promoted it on (serving_version reads it).
SERVES_FROM = "serves_from"


def promote(settings: Settings, version: str, run_date: date | None = None) -> dict:
    """Make version the champion; the former champion becomes `previous`. run_date: the night the
    gate promoted it on, recorded once (SERVES_FROM) so a backfill can find who served a date."""
    use_tracking(settings)
    client, name = mlflow.MlflowClient(), settings.mlflow.registered_model
    if run_date is not None and SERVES_FROM not in client.get_model_version(name, str(version)).tags:
        client.set_model_version_tag(name, str(version), SERVES_FROM, run_date.isoformat())
    current = alias_version(settings, CHAMPION)
    if current is not None and str(current.version) == str(version):
        previous = alias_version(settings, PREVIOUS)
        return {"champion": str(version), "previous": str(previous.version) if previous else None}
    client.get_model_version(name, str(version))  # fails clearly if the version does not exist
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(current.version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return {"champion": str(version), "previous": str(current.version) if current else None}


def serving_version(settings: Settings, run_date: date):
    """The model version that serves run_date: the champion, unless it was trained for a later
    date (a backfill), then the version the gate promoted last on or before run_date; None if none."""
    champion = alias_version(settings, CHAMPION)
    if champion is None or champion.tags.get(RUN_DATE_TAG, "") <= run_date.isoformat():
        return champion
    versions = mlflow.MlflowClient().search_model_versions(f"name='{settings.mlflow.registered_model}'")
    served = [v for v in versions if v.tags.get(SERVES_FROM, "9999") <= run_date.isoformat()]
    return max(served, key=lambda v: (v.tags[SERVES_FROM], int(v.version)), default=None)


def rollback(settings: Settings) -> dict:
    """Put the `previous` version back as champion; the rolled-back one becomes `previous`."""
    previous = alias_version(settings, PREVIOUS)
    if previous is None:
        raise RuntimeError(f"model '{settings.mlflow.registered_model}' has no '{PREVIOUS}' version to roll back to")
    return promote(settings, previous.version)


def retire(settings: Settings, version: str, reason: str) -> dict:
    """Take a champion out of service: the previous version serves again (the retired one holds no
    alias, so no rollback brings it back by accident), or, with none, no model does (the night
    publishes the best constant policy). The reason is tagged on the version."""
    use_tracking(settings)
    client, name = mlflow.MlflowClient(), settings.mlflow.registered_model
    client.set_model_version_tag(name, str(version), "retired", reason)
    previous = alias_version(settings, PREVIOUS)
    if previous is not None and str(previous.version) != str(version) and FLAGGED_TAG not in previous.tags:
        client.set_registered_model_alias(name, CHAMPION, str(previous.version))
        client.delete_registered_model_alias(name, PREVIOUS)
        return {"champion": str(previous.version), "retired": str(version)}
    client.delete_registered_model_alias(name, CHAMPION)
    if previous is not None:
        client.delete_registered_model_alias(name, PREVIOUS)
    return {"champion": None, "retired": str(version), "serves": "the best constant policy"}


def tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
    use_tracking(settings)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(settings.mlflow.registered_model, str(version), key, value)


def status(settings: Settings) -> dict:
    """Champion and previous versions with the run date each was trained for and the learner that fitted it."""
    out = {}
    for alias in (CHAMPION, PREVIOUS):
        version = alias_version(settings, alias)
        out[alias] = (
            None
            if version is None
            else {
                "version": str(version.version),
                "run_date": version.tags.get(RUN_DATE_TAG),
                "run_id": version.run_id,
                **_learner(version.run_id),
            }
        )
    return out


def _learner(run_id: str) -> dict:
    """The learner and selected candidate of a version's training run (jobs.model.selection)."""
    params = mlflow.MlflowClient().get_run(run_id).data.params
    return {"learner": params.get(LEARNER_PARAM, "t"), "candidate": params.get("selected_candidate")}
