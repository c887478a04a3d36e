"""The uplift's drivers: SHAP values of each learner's raw uplift, from the models that make it."""

import numpy as np
import pandas as pd
import pytest

from jobs.features import FeatureSpec
from jobs.model import drivers
from jobs.model.pyfunc import UpliftModel
from jobs.model.train import fit_model
from jobs.settings import Experiment, Targeting

ADDITIVITY_TOLERANCE = 1e-9


def _experiment(n: int = 24_000, seed: int = 5) -> pd.DataFrame:
    """Arm 'early' helps the young (age), arm 'late' helps one region; spend moves everyone's baseline."""
    rng = np.random.default_rng(seed)
    people = pd.DataFrame(
        {
            "age": rng.uniform(18, 80, n),
            "spend": rng.gamma(2.0, 50.0, n),
            "region": rng.choice(["north", "south", "east", "west"], n),
            "arm": rng.choice(["none", "early", "late"], n),
        }
    )
    base = 0.05 + 0.10 * (people["spend"] > 120)
    lift = np.where(people["arm"] == "early", 0.25 * (people["age"] < 35), 0.0)
    lift += np.where(people["arm"] == "late", 0.20 * (people["region"] == "south"), 0.0)
    people["label"] = (rng.random(n) < base + lift).astype(int)
    return people


def _fit(people: pd.DataFrame, settings, learner: str = "t") -> UpliftModel:
    exp = Experiment(
        control="none",
        arms=["early", "late"],
        expected_split={"none": 1 / 3, "early": 1 / 3, "late": 1 / 3},
        attribution_window_days=7,
        qualifying_response_types=["click"],
        srm_p_value_min=0.001,
    )
    spec = FeatureSpec(
        attributes={"age": {"kind": "numeric"}, "spend": {"kind": "numeric"}, "region": {"kind": "categorical"}}
    )
    targeting = Targeting.model_validate(
        {
            "value_per_response": 1.0,
            "cost_per_send": {"early": 0.0, "late": 0.0},
            "min_uplift": 0.0,
            "holdout_share": 0.0,
        }
    )
    training = settings.training.model_copy(
        update={
            "learners": [learner],
            "effect_grid": [{}],
            "lightgbm": {**settings.training.lightgbm, "min_child_samples": 50, "num_leaves": 7},
        }
    )
    local = settings.model_copy(
        update={"experiment": exp, "features": spec, "targeting": targeting, "training": training}
    )
    rows = people.assign(
        customer_id=[f"u{i}" for i in range(len(people))], campaign_id="k", propensity=1 / 3, inclusion_probability=1.0
    )
    return fit_model(rows, local)


@pytest.mark.parametrize("learner", ["t", "x", "dr"])
def test_the_attribute_that_drives_an_arms_effect_is_its_top_driver_and_values_add_up_to_the_uplift(settings, learner):
    people = _experiment()
    model = _fit(people, settings, learner)
    assert model.learner == learner
    sample = people.sample(1500, random_state=1)
    explained = drivers.explain(model.loaded, sample, model.model, ["early", "late"], {})
    assert explained["arms"]["early"]["drivers"][0]["feature"] == "age"
    assert explained["arms"]["late"]["drivers"][0]["feature"] == "region"
    # spend moves the response of every arm alike: it barely moves the uplift
    early = {d["feature"]: d["mean_abs_shap"] for d in explained["arms"]["early"]["drivers"]}
    assert early["spend"] < early["age"] / 3
    raw = model.raw_uplifts(sample)
    for arm in ["early", "late"]:
        total = explained["values"][arm].sum(axis=1) + explained["arms"][arm]["base_uplift"]
        gap = np.abs(total.to_numpy() - raw[arm].to_numpy())
        assert gap.max() < ADDITIVITY_TOLERANCE, f"{arm}: SHAP values miss the uplift by {gap.max():.2e}"


def test_drivers_are_written_as_a_table_per_customer_values_and_a_picture(settings, tmp_path):
    people = _experiment(n=6000)
    model = _fit(people, settings)
    explained = drivers.explain(model.loaded, people.head(300), model.model, ["early", "late"], {"late": "constant"})
    folder = drivers.write(explained, tmp_path)
    summary = pd.read_json(folder / drivers.SUMMARY, typ="series")
    assert summary["rows"] == 300 and summary["arms"]["late"]["mode"] == "constant"
    values = pd.read_parquet(folder / drivers.VALUES.format(arm="early"))
    assert list(values.columns) == ["age", "spend", "region"] and len(values) == 300
    assert (folder / drivers.PICTURE).stat().st_size > 5_000
