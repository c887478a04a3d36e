"""Scoring loads a model version's boosters from its portable.json, and still loads older versions without one."""

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd

from helpers import settings_in
from jobs.model import registry
from jobs.model.portable import PortableModel
from jobs.model.pyfunc import UpliftModel
from jobs.model.tracking import use_tracking
from jobs.model.train import log_model


def _model() -> tuple[UpliftModel, pd.DataFrame]:
    """A model with an effect regressor and a calibration curve, as the X- and DR-learners leave them."""
    rng = np.random.default_rng(3)
    rows = pd.DataFrame({"age": rng.uniform(18, 80, 2000), "plan": rng.choice(["a", "b", "c"], 2000)})
    bare = PortableModel("hold", ["mail"], ["age"], {"plan": ["a", "b", "c"]}, {})
    x = UpliftModel(bare).design_matrix(rows)
    boosters = {}
    for arm in ("hold", "mail"):
        label = (rng.random(2000) < 0.1 + 0.2 * (rows["plan"] == "b") * (arm == "mail")).astype(int)
        boosters[arm] = [lgb.LGBMClassifier(n_estimators=20, num_leaves=4, verbose=-1).fit(x, label).booster_]
    effect = lgb.LGBMRegressor(n_estimators=20, num_leaves=4, verbose=-1).fit(x, 0.2 * (rows["plan"] == "b"))
    model = PortableModel(
        "hold",
        ["mail"],
        ["age"],
        {"plan": ["a", "b", "c"]},
        {k: [b.model_to_string() for b in v] for k, v in boosters.items()},
        learner="x",
        effects={"mail": [[1.0, effect.booster_.model_to_string()]]},
        calibration={"mail": {"x": [0.0, 0.2], "y": [0.01, 0.15]}},
    )
    return UpliftModel(model), rows


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
