"""The T-learner's prediction arithmetic, without MLflow: design matrix, probabilities, uplifts.

Uplift of arm a for customer x is ``p_a(x) - p_control(x)``, one LightGBM model per arm
(control included). An arm whose ranking did not clear the gate's Qini diagnostic is a
*constant* arm: its targeting uplift is its average effect for every customer (`constant`),
while `p_<arm>` stays its outcome model's probability. The MLflow pyfunc (`jobs.model`) and Spark's scoring workers
(`jobs.score`) both predict through this module, so a served prediction and a batch-scored
one are the same numbers. It imports pandas, NumPy and LightGBM only: a scoring worker
starts without loading MLflow, and receives the boosters as LightGBM model strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import pandas as pd


def design_matrix(frame: pd.DataFrame, numeric: list[str], categories: dict[str, list[str]]) -> pd.DataFrame:
    """The features in training order and dtypes; unseen categories become missing."""
    features = [*numeric, *categories]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise ValueError(f"model input lacks feature columns {missing}; expected all of {features}")
    x = frame[numeric].astype("float64")
    for name, levels in categories.items():
        x[name] = pd.Categorical(frame[name].astype("string"), categories=levels)
    return x


def output_columns(control: str, arms: list[str]) -> list[str]:
    return [f"p_{a}" for a in [control, *arms]] + [f"uplift_{a}" for a in arms]


def with_uplifts(
    probabilities: pd.DataFrame, control: str, arms: list[str], constant: dict[str, float] | None = None
) -> pd.DataFrame:
    """From `p_<arm>` of every arm: add the targeting `uplift_<arm>` of every treatment arm.

    p_arm - p_control for a ranked arm; the arm's average effect for a constant one. Which arm
    a customer gets is the targeting policy's decision (jobs.policy), not the model's.
    """
    out = probabilities
    for arm in arms:
        if constant and arm in constant:
            out[f"uplift_{arm}"] = float(constant[arm])
        else:
            out[f"uplift_{arm}"] = out[f"p_{arm}"] - out[f"p_{control}"]
    return out[output_columns(control, arms)]


@dataclass(frozen=True)
class PortableTLearner:
    """A fitted T-learner as plain data (model strings): cheap to ship to Spark's Python workers."""

    control: str
    arms: list[str]
    numeric: list[str]
    categories: dict[str, list[str]]
    boosters: dict[str, str]  # arm (control included) -> LightGBM model string, best iteration
    constant: dict[str, float] = field(default_factory=dict)  # constant arm -> its average effect

    def load(self) -> dict[str, lgb.Booster]:
        return {arm: lgb.Booster(model_str=text) for arm, text in self.boosters.items()}

    def predict(self, frame: pd.DataFrame, boosters: dict[str, lgb.Booster], num_threads: int = 1) -> pd.DataFrame:
        """`output_columns` for every row of frame, with boosters from `load()`."""
        x = design_matrix(frame, self.numeric, self.categories)
        probabilities = pd.DataFrame(
            {f"p_{arm}": booster.predict(x, num_threads=num_threads) for arm, booster in boosters.items()},
            index=frame.index,
        )
        return with_uplifts(probabilities, self.control, self.arms, self.constant)


class FeatureMismatchError(RuntimeError):
    """The scoring set's features are not the ones the model was trained on."""


def check_features(columns: list[str], model: PortableTLearner, keys: tuple[str, ...] = ("customer_id",)) -> None:
    """Refuse a scoring set whose feature columns differ from the model's, naming the columns."""
    trained = [*model.numeric, *model.categories]
    given = [c for c in columns if c not in keys]
    missing, unexpected = [c for c in trained if c not in given], [c for c in given if c not in trained]
    if missing or unexpected:
        raise FeatureMismatchError(
            "the scoring set's features differ from the model's: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing}" if missing else "",
                    f"not known to the model {unexpected}" if unexpected else "",
                )
                if part
            )
            + f". The model was trained on {trained}. A changed feature spec needs a model trained on it: "
            "run the nightly through train and gate, or restore the spec the champion was trained with."
        )


def serving_problem(columns: list[str], model: PortableTLearner, control: str, arms: list[str]) -> str | None:
    """Why the model cannot score a set with these columns for this experiment (None when it can)."""
    if model.control != control or list(model.arms) != list(arms):
        return f"the model knows arms {[model.control, *model.arms]}, the experiment is {[control, *arms]}"
    try:
        check_features(columns, model)
    except FeatureMismatchError as err:
        return str(err)
    return None
