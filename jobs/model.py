"""The multi-arm T-learner: one LightGBM classifier per arm (control included), as an MLflow pyfunc.

Uplift of arm a for customer x is ``p_a(x) - p_control(x)``. `predict` returns, per row,
`p_<arm>` for every arm, `uplift_<arm>` for every treatment arm and `best_arm`, the arm
with the highest uplift (or "none" when no uplift is positive).
"""

from __future__ import annotations

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd


class TLearnerModel(mlflow.pyfunc.PythonModel):
    def __init__(
        self,
        models: dict[str, lgb.LGBMClassifier],
        control: str,
        arms: list[str],
        numeric: list[str],
        categories: dict[str, list[str]],
    ):
        self.models = models
        self.control = control
        self.arms = arms
        self.numeric = numeric
        self.categories = categories

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categories]

    def output_columns(self) -> list[str]:
        return [f"p_{a}" for a in [self.control, *self.arms]] + [f"uplift_{a}" for a in self.arms] + ["best_arm"]

    def design_matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The features in training order and dtypes; unseen categories become missing."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"model input lacks feature columns {missing}; expected all of {self.features}")
        x = frame[self.numeric].astype("float64")
        for name, levels in self.categories.items():
            x[name] = pd.Categorical(frame[name].astype("string"), categories=levels)
        return x

    def predict_proba(self, frame: pd.DataFrame) -> pd.DataFrame:
        x = self.design_matrix(frame)
        return pd.DataFrame(
            {f"p_{arm}": model.predict_proba(x)[:, 1] for arm, model in self.models.items()},
            index=frame.index,
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        out = self.predict_proba(model_input)
        for arm in self.arms:
            out[f"uplift_{arm}"] = out[f"p_{arm}"] - out[f"p_{self.control}"]
        uplifts = out[[f"uplift_{a}" for a in self.arms]].to_numpy()
        best = np.array(self.arms)[uplifts.argmax(axis=1)]
        out["best_arm"] = np.where(uplifts.max(axis=1) > 0, best, "none")
        return out[self.output_columns()]
