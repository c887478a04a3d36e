"""The multi-arm T-learner: one LightGBM classifier per arm (control included) and outcome, as an MLflow pyfunc.

Uplift of arm a for customer x is ``p_a(x) - p_control(x)``. `predict` returns, per row,
`p_<arm>` for every arm and the targeting `uplift_<arm>` of every treatment arm (the average
effect for an arm in `constant`, whose ranking the Qini diagnostic did not trust); the same
for every further outcome o (`p_<arm>__o`, `uplift_<arm>__o`), and for a guardrail outcome the
per-customer upper bound `uplift_high_<arm>__o`. Who gets
which arm is jobs.model.policy's decision. The arithmetic lives in `jobs.model.tlearner`, which batch
scoring runs in Spark's workers without MLflow.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import lightgbm as lgb
import mlflow.pyfunc
import pandas as pd

from jobs.model import tlearner
from jobs.names import p_column


class TLearnerModel(mlflow.pyfunc.PythonModel):
    def __init__(
        self,
        models: dict[str, lgb.LGBMClassifier],
        control: str,
        arms: list[str],
        numeric: list[str],
        categories: dict[str, list[str]],
        constant: dict[str, float] | None = None,
        outcomes: list[str] = (),
        bounds: dict[str, dict] | None = None,
    ):
        self.models = models  # key(arm, outcome) -> classifier
        self.constant = dict(constant or {})
        self.outcomes = list(outcomes)
        self.bounds = dict(bounds or {})
        self.control = control
        self.arms = arms
        self.numeric = numeric
        self.categories = categories

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categories]

    def output_columns(self) -> list[str]:
        return self.portable().columns()

    def design_matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The features in training order and dtypes; unseen categories become missing."""
        return tlearner.design_matrix(frame, self.numeric, self.categories)

    def predict_proba(self, frame: pd.DataFrame) -> pd.DataFrame:
        """p_<key> of every model; the models predict side by side, one thread each (LightGBM
        releases the GIL), as they were fitted."""
        x = self.design_matrix(frame)
        with ThreadPoolExecutor(max_workers=min(len(self.models), os.cpu_count() or 1) or 1) as pool:
            p = pool.map(lambda model: model.predict_proba(x, num_threads=1)[:, 1], self.models.values())
            return pd.DataFrame({p_column(k): v for k, v in zip(self.models, p, strict=True)}, index=frame.index)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.with_uplifts(self.predict_proba(model_input))

    def with_uplifts(self, probabilities: pd.DataFrame) -> pd.DataFrame:
        """predict's output from predict_proba's (the targeting uplifts, with the constant arms and bounds)."""
        return tlearner.with_uplifts(
            probabilities,
            self.control,
            self.arms,
            self.constant,
            getattr(self, "outcomes", []),  # models pickled before outcomes existed
            getattr(self, "bounds", {}),
        )

    def portable(self) -> tlearner.PortableTLearner:
        """The fitted boosters as model strings (their best iteration), for Spark's scoring workers."""
        return tlearner.PortableTLearner(
            control=self.control,
            arms=list(self.arms),
            numeric=list(self.numeric),
            categories={name: list(levels) for name, levels in self.categories.items()},
            boosters={arm: model.booster_.model_to_string() for arm, model in self.models.items()},
            constant=dict(self.constant),
            outcomes=list(getattr(self, "outcomes", [])),
            bounds=dict(getattr(self, "bounds", {})),
        )
