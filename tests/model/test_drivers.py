"""The uplift's drivers: SHAP values of p_arm - p_control, from both models of the arm."""

import lightgbm as lgb
import numpy as np
import pandas as pd

from jobs.model import drivers
from jobs.model.pyfunc import TLearnerModel
from jobs.names import uplift_column

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


def _fit(people: pd.DataFrame) -> TLearnerModel:
    categories = {"region": sorted(people["region"].unique())}
    model = TLearnerModel({}, "none", ["early", "late"], ["age", "spend"], categories)
    for arm in ["none", "early", "late"]:
        rows = people[people["arm"] == arm]
        clf = lgb.LGBMClassifier(n_estimators=150, learning_rate=0.1, num_leaves=7, min_child_samples=50, verbose=-1)
        model.models[arm] = clf.fit(model.design_matrix(rows), rows["label"])
    return model


def test_the_attribute_that_drives_an_arms_effect_is_its_top_driver_and_values_add_up_to_the_uplift():
    people = _experiment()
    model = _fit(people)
    sample = people.sample(1500, random_state=1)
    explained = drivers.explain(model.portable().load(), sample, model, ["early", "late"], {})
    assert explained["arms"]["early"]["drivers"][0]["feature"] == "age"
    assert explained["arms"]["late"]["drivers"][0]["feature"] == "region"
    # spend moves the response of every arm alike: it barely moves the uplift
    early = {d["feature"]: d["mean_abs_shap"] for d in explained["arms"]["early"]["drivers"]}
    assert early["spend"] < early["age"] / 3
    predicted = model.predict(None, sample)
    for arm in ["early", "late"]:
        total = explained["values"][arm].sum(axis=1) + explained["arms"][arm]["base_uplift"]
        gap = np.abs(total.to_numpy() - predicted[uplift_column(arm)].to_numpy())
        assert gap.max() < ADDITIVITY_TOLERANCE, f"{arm}: SHAP values miss the uplift by {gap.max():.2e}"


def test_drivers_are_written_as_a_table_per_customer_values_and_a_picture(tmp_path):
    people = _experiment(n=6000)
    model = _fit(people)
    explained = drivers.explain(
        model.portable().load(), people.head(300), model, ["early", "late"], {"late": "constant"}
    )
    folder = drivers.write(explained, tmp_path)
    summary = pd.read_json(folder / drivers.SUMMARY, typ="series")
    assert summary["rows"] == 300 and summary["arms"]["late"]["mode"] == "constant"
    values = pd.read_parquet(folder / drivers.VALUES.format(arm="early"))
    assert list(values.columns) == ["age", "spend", "region"] and len(values) == 300
    assert (folder / drivers.PICTURE).stat().st_size > 5_000
