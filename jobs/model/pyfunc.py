"""The served uplift model as an MLflow pyfunc: a fitted jobs.model.portable.PortableModel, whatever learner fitted it.

`predict` returns, per row, `p_<arm>` for every arm and the targeting `uplift_<arm>` of every
treatment arm (calibrated; the average effect for an arm in `constant`, whose ranking the Qini
diagnostic did not trust); the same for every further outcome o (`p_<arm>__o`, `uplift_<arm>__o`),
and for a guardrail outcome the per-customer upper bound `uplift_high_<arm>__o`. Who gets which arm
is jobs.model.policy's decision. The arithmetic lives in `jobs.model.portable`, which batch scoring
runs in Spark's workers without MLflow, so both give the same numbers.
"""

from __future__ import annotations

import dataclasses
import os

import mlflow.pyfunc
import pandas as pd

from jobs.model.portable import Loaded, PortableModel, design_matrix


class UpliftModel(mlflow.pyfunc.PythonModel):
    def __init__(self, model: PortableModel):
        self.model = model
        self._loaded: Loaded | None = None
        self.selection: dict | None = None  # jobs.model.selection's record of the candidates, when fitted here

    def __getstate__(self) -> dict:
        return {"model": self.model}  # the loaded boosters are rebuilt from the model strings

    def __setstate__(self, state: dict) -> None:
        self.model, self._loaded, self.selection = state["model"], None, None

    @property
    def loaded(self) -> Loaded:
        if self._loaded is None:
            self._loaded = self.model.load()
        return self._loaded

    @property
    def learner(self) -> str:
        return self.model.learner

    @property
    def features(self) -> list[str]:
        return [*self.model.numeric, *self.model.categories]

    def replace(self, **changes) -> UpliftModel:
        """This model with some of its parts changed (the constant arms, bounds, calibration)."""
        out = UpliftModel(dataclasses.replace(self.model, **changes))
        out._loaded = self._loaded if not {"boosters", "effects"} & set(changes) else None
        out.selection = self.selection
        return out

    def design_matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        return design_matrix(frame, self.model.numeric, self.model.categories)

    def predict_proba(self, frame: pd.DataFrame) -> pd.DataFrame:
        """p_<key> of every outcome model."""
        return self.model.probabilities(self.design_matrix(frame), self.loaded, os.cpu_count() or 1)

    def raw_uplifts(self, frame: pd.DataFrame, probabilities: pd.DataFrame | None = None) -> pd.DataFrame:
        """Every treatment key's raw uplift (before calibration and the constant arms)."""
        x = self.design_matrix(frame)
        p = self.model.probabilities(x, self.loaded, os.cpu_count() or 1) if probabilities is None else probabilities
        return self.model.raw_uplifts(x, p.set_axis(x.index), self.loaded, os.cpu_count() or 1)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict(model_input, self.loaded, os.cpu_count() or 1)

    def output_columns(self) -> list[str]:
        return self.model.columns()

    def portable(self) -> PortableModel:
        return self.model
