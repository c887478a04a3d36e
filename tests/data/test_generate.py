"""The demo generator: deterministic, randomized, with the documented heterogeneous effects."""

import pandas as pd

from conftest import DEMO, RUN_DATE
from helpers import settings_in
from jobs.demo.generate import generate


def _raw(settings, source):
    return pd.read_parquet(settings.paths.lake / "raw" / source)


def test_same_seed_same_data(settings, generated, tmp_path):
    again = settings_in(settings, tmp_path)
    generate(again, last_day=RUN_DATE, **DEMO)
    for source in ("users", "sends", "responses"):
        pd.testing.assert_frame_equal(_raw(settings, source), _raw(again, source))


def test_ground_truth_is_kept_out_of_the_lake(settings, generated):
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet")
    assert len(truth) == DEMO["customers"]
    assert not settings.paths.ground_truth.is_relative_to(settings.paths.lake)
    assert {"p_control", "p_subject_1", "p_subject_2", "p_subject_3"} <= set(truth.columns)


def test_arms_follow_the_expected_split(settings, generated):
    shares = _raw(settings, "sends")["arm"].value_counts(normalize=True)
    assert set(shares.index) == {"control", "subject_1", "subject_2", "subject_3"}
    assert (shares - 0.25).abs().max() < 0.02


def test_effects_are_heterogeneous_as_documented(settings, generated):
    users = _raw(settings, "users").drop_duplicates("customer_id", keep="last").set_index("customer_id")
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet").set_index("customer_id")
    uplift = truth[["p_subject_1", "p_subject_2", "p_subject_3"]].sub(truth["p_control"], axis=0)
    seniors = users["age"] >= 60
    assert (uplift.loc[seniors[seniors].index, "p_subject_1"] < 0).all(), "subject_1 harms customers 60+"
    tenure = (pd.Timestamp(RUN_DATE) - pd.to_datetime(users["signup_date"])).dt.days
    loyal = users.index[(users["customer_type"] == "regular") & (tenure >= 365)]
    assert (uplift.loc[loyal].idxmax(axis=1) == "p_subject_2").all(), "subject_2 wins for loyal regulars"


def test_only_qualifying_responses_and_no_future(settings, generated):
    responses = _raw(settings, "responses")
    assert set(responses["response_type"]) == {"click", "purchase", "open", "unsubscribe"}
    assert responses["responded_at"].max() < pd.Timestamp(RUN_DATE) + pd.Timedelta(days=1)
    assert responses["response_id"].is_unique
