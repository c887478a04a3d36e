"""A fitted uplift model's prediction arithmetic, without MLflow: design matrix, probabilities, uplifts.

Every learner (jobs.model.learners) fits the same parts: per arm (control included) and outcome, an
outcome model p_a(x) (LightGBM), and, for a learner that models the uplift itself, effect models
whose weighted sum is the arm's raw uplift (else the raw uplift is ``p_a(x) - p_control(x)``). The
raw uplift goes through the arm's calibration curve (fitted on held-out rows, jobs.model.calibration)
before the policy compares arms. The primary outcome's columns are `p_<arm>` and `uplift_<arm>`;
a further outcome o's are `p_<arm>__o` and `uplift_<arm>__o` (`key`), and a guardrail
outcome's also `uplift_high_<arm>__o`, the per-customer upper bound the policy checks.
An arm whose ranking did not clear the gate's Qini diagnostic is a
*constant* arm: its targeting uplift is its average effect for every customer (`constant`),
while `p_<arm>` stays its outcome model's probability. The MLflow pyfunc (`jobs.model.pyfunc`) and
Spark's scoring workers (`jobs.targeting.score`) both predict through this module, so a served
prediction and a batch-scored one are the same numbers. It imports pandas and NumPy, and LightGBM when boosters load: a
scoring worker starts without loading MLflow, and receives the boosters as LightGBM model
strings; a Spark step that only names columns (`key`, `label_column`) does not load LightGBM
and scikit-learn (a second of every process start).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from jobs.names import key, p_column, uplift_column, uplift_high_column
from jobs.settings import UserError

if TYPE_CHECKING:
    import lightgbm as lgb


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


def output_columns(control: str, arms: list[str], outcomes: list[str] = (), bounded: list[str] = ()) -> list[str]:
    """p_ of every arm and outcome, uplift_ of every treatment and outcome, uplift_high_ of the bounded."""
    every = [None, *outcomes]
    return (
        [p_column(a, o) for o in every for a in [control, *arms]]
        + [uplift_column(a, o) for o in every for a in arms]
        + [uplift_high_column(a, o) for o in bounded for a in arms]
    )


def bounded_outcomes(bounds: dict[str, dict], outcomes: list[str]) -> list[str]:
    """The outcomes that have upper bounds (the guardrails), in declaration order."""
    return [o for o in outcomes if any(k.endswith(f"__{o}") for k in bounds)]


def with_uplifts(
    probabilities: pd.DataFrame,
    raw: pd.DataFrame,
    control: str,
    arms: list[str],
    constant: dict[str, float] | None = None,
    outcomes: list[str] = (),
    bounds: dict[str, dict] | None = None,
    calibration: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """`output_columns` from `p_<key>` of every arm and outcome and the learner's raw uplifts (key -> uplift).

    The targeting uplift of a ranked (arm, outcome) is its raw uplift carried through its calibration
    curve (`calibrate`), when it has one; a constant one's is its average effect. bounds: key ->
    {"edges", "highs"} of a guardrail outcome: a row's upper bound is the high of the bin its raw
    uplift falls in (a constant one has a single bin). Which arm a customer gets is the targeting
    policy's decision (jobs.model.policy), not the model's.
    """
    out, bounds, calibration = probabilities.copy(), bounds or {}, calibration or {}
    for outcome in [None, *outcomes]:
        for arm in arms:
            k = key(arm, outcome)
            uplift = raw[k].to_numpy(float)
            if constant and k in constant:
                out[uplift_column(k)] = float(constant[k])
            else:
                out[uplift_column(k)] = calibrate(uplift, calibration[k]) if k in calibration else uplift
            if k in bounds:
                edges, highs = bounds[k]["edges"], np.asarray(bounds[k]["highs"], dtype=float)
                out[uplift_high_column(k)] = highs[np.searchsorted(edges, uplift, side="right")]
    return out[output_columns(control, arms, outcomes, bounded_outcomes(bounds, outcomes))]


def calibrate(raw: np.ndarray, curve: dict) -> np.ndarray:
    """A raw uplift carried through a calibration curve: linear between the curve's points (the
    mean raw uplift of each bin, its calibrated uplift), flat beyond them (jobs.model.calibration)."""
    return np.interp(raw, np.asarray(curve["x"], dtype=float), np.asarray(curve["y"], dtype=float))


@dataclass
class Loaded:
    """A PortableModel's boosters, loaded: what `PortableModel.predict` computes with."""

    outcome: dict[str, list[lgb.Booster]]  # key -> the outcome model's boosters (their mean is p_<key>)
    effects: dict[str, list[tuple[float, lgb.Booster]]]  # key -> (weight, booster): the uplift is their weighted sum


@dataclass(frozen=True)
class PortableModel:
    """A fitted uplift model as plain data (model strings): cheap to ship to Spark's Python workers.

    Every learner (jobs.model.learners) leaves the same form: the outcome models per arm and outcome
    (`boosters`: p_<key> is the mean of a key's boosters, the cross-fitted pair), and, for a learner
    that models the uplift itself (X, DR), `effects`: per key, weighted LightGBM regressors whose sum
    is the raw uplift. A key without effects has the T-learner's raw uplift, p_arm - p_control.
    """

    control: str
    arms: list[str]
    numeric: list[str]
    categories: dict[str, list[str]]
    boosters: dict[str, str | list[str]]  # key(arm, outcome) (control included) -> LightGBM model string(s)
    constant: dict[str, float] = field(default_factory=dict)  # constant key -> its average effect
    outcomes: list[str] = field(default_factory=list)  # the outcomes besides the primary one
    bounds: dict[str, dict] = field(default_factory=dict)  # guardrail key -> upper-bound bins
    learner: str = "t"  # the learner that fitted it (jobs.model.learners)
    effects: dict[str, list] = field(default_factory=dict)  # key -> [[weight, regressor model string], ...]
    calibration: dict[str, dict] = field(default_factory=dict)  # key -> {"x": raw uplifts, "y": calibrated}

    def load(self) -> Loaded:
        import lightgbm as lgb

        def strings(value: str | list[str]) -> list[str]:
            return [value] if isinstance(value, str) else list(value)

        return Loaded(
            outcome={k: [lgb.Booster(model_str=s) for s in strings(v)] for k, v in self.boosters.items()},
            effects={k: [(float(w), lgb.Booster(model_str=s)) for w, s in v] for k, v in self.effects.items()},
        )

    def probabilities(self, x: pd.DataFrame, loaded: Loaded, num_threads: int = 1) -> pd.DataFrame:
        """p_<key> of every outcome model on a design matrix."""
        return pd.DataFrame(
            {
                p_column(k): np.mean([b.predict(x, num_threads=num_threads) for b in boosters], axis=0)
                for k, boosters in loaded.outcome.items()
            },
            index=x.index,
        )

    def raw_uplifts(
        self, x: pd.DataFrame, probabilities: pd.DataFrame, loaded: Loaded, num_threads: int = 1
    ) -> pd.DataFrame:
        """Every treatment key's raw uplift (before calibration and the constant arms): the effect
        models' weighted sum, or p_arm - p_control."""
        out = {}
        for outcome in [None, *self.outcomes]:
            for arm in self.arms:
                k = key(arm, outcome)
                if k in loaded.effects:
                    out[k] = sum(w * b.predict(x, num_threads=num_threads) for w, b in loaded.effects[k])
                else:
                    out[k] = (probabilities[p_column(k)] - probabilities[p_column(self.control, outcome)]).to_numpy()
        return pd.DataFrame(out, index=x.index)

    def predict(self, frame: pd.DataFrame, loaded: Loaded, num_threads: int = 1) -> pd.DataFrame:
        """`output_columns` for every row of frame, with the boosters from `load()`."""
        x = design_matrix(frame, self.numeric, self.categories)
        p = self.probabilities(x, loaded, num_threads)
        raw = self.raw_uplifts(x, p, loaded, num_threads)
        return with_uplifts(
            p, raw, self.control, self.arms, self.constant, self.outcomes, self.bounds, self.calibration
        )

    def columns(self) -> list[str]:
        return output_columns(self.control, self.arms, self.outcomes, bounded_outcomes(self.bounds, self.outcomes))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PortableModel:
        return cls(**json.loads(text))


class FeatureMismatchError(UserError, RuntimeError):
    """The scoring set's features are not the ones the model was trained on."""


def check_features(columns: list[str], model: PortableModel, keys: tuple[str, ...] = ("customer_id",)) -> None:
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


def serving_problem(
    columns: list[str], model: PortableModel, control: str, arms: list[str], outcomes=None
) -> str | None:
    """Why the model cannot score a set with these columns for this experiment (None when it can).

    outcomes: the targeting's outcomes (name -> Outcome); a model must know the same ones, and
    hold the upper bounds of each guardrail outcome.
    """
    if model.control != control or list(model.arms) != list(arms):
        return f"the model knows arms {[model.control, *model.arms]}, the experiment is {[control, *arms]}"
    if outcomes is not None:
        if list(model.outcomes) != list(outcomes):
            return f"the model knows outcomes {list(model.outcomes)} besides the primary one, conf has {list(outcomes)}"
        unbounded = [o for o, spec in outcomes.items() if spec.guardrail and key(arms[0], o) not in model.bounds]
        if unbounded:
            return f"the model has no upper bounds for the guardrail outcomes {unbounded}"
    try:
        check_features(columns, model)
    except FeatureMismatchError as err:
        return str(err)
    return None
