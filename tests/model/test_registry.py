"""Scoring loads a model version's boosters from its portable.json, and still loads older versions without one."""

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd

from helpers import settings_in
from jobs.model import registry
from jobs.model.pyfunc import TLearnerModel
from jobs.model.tracking import use_tracking
from jobs.model.train import log_model


def _model() -> tuple[TLearnerModel, pd.DataFrame]:
    rng = np.random.default_rng(3)
    rows = pd.DataFrame({"age": rng.uniform(18, 80, 2000), "plan": rng.choice(["a", "b", "c"], 2000)})
    model = TLearnerModel({}, "hold", ["mail"], ["age"], {"plan": ["a", "b", "c"]})
    for arm in ("hold", "mail"):
        label = (rng.random(2000) < 0.1 + 0.2 * (rows["plan"] == "b") * (arm == "mail")).astype(int)
        classifier = lgb.LGBMClassifier(n_estimators=20, num_leaves=4, verbose=-1)
        model.models[arm] = classifier.fit(model.design_matrix(rows), label)
    return model, rows


def test_a_version_loads_as_its_portable_json_and_an_older_one_through_its_pyfunc(settings, tmp_path):
    isolated = settings_in(settings, tmp_path)
    model, rows = _model()
    try:
        use_tracking(isolated)
        with mlflow.start_run():
            version = log_model(model, rows.head(5), isolated)
            older = mlflow.pyfunc.log_model(  # as versions were logged before portable.json
                name="older", python_model=model, registered_model_name=isolated.mlflow.registered_model
            ).registered_model_version
        uri = f"models:/{isolated.mlflow.registered_model}"
        for v, has_file in ((version, True), (str(older), False)):
            files = Path(mlflow.artifacts.download_artifacts(f"{uri}/{v}", dst_path=str(tmp_path / v)))
            assert (files / "artifacts" / registry.PORTABLE_ARTIFACT).exists() is has_file
        for v in (version, str(older)):
            loaded = registry.portable_model(isolated, v)
            assert loaded == model.portable()
            served = mlflow.pyfunc.load_model(f"{uri}/{v}").predict(rows)
            pd.testing.assert_frame_equal(loaded.predict(rows, loaded.load()), served)
    finally:
        use_tracking(settings)
