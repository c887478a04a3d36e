"""The targeting policy on hand-made uplifts: best net value, floors, budgets, fresh holdout."""

import pandas as pd
import pytest

from conftest import RUN_DATE
from jobs.names import uplift_column
from jobs.runtime.spark import start_python_workers
from jobs.targeting.score import apply_policy


def _policy(settings, **changes):
    """The demo's targeting on primary-only uplifts (no further outcome: tests/unit/test_policy.py has them),
    without exploration (whose share of a budget tests/unit/test_assignment.py checks)."""
    changes = {"holdout_share": 0.0, "outcomes": {}, "exploration_share": 0.0, **changes}
    targeting = settings.targeting.model_copy(update=changes)
    return settings.model_copy(update={"targeting": targeting})


def _scored(spark):
    # value_per_response 10, cost 0.05 per send: net = 10 * uplift - 0.05
    rows = [
        ("a", 0.05, 0.01, 0.00),  # subject_1 best (net 0.45)
        ("b", 0.01, 0.03, 0.02),  # subject_2 best (net 0.25)
        ("c", 0.004, 0.00, 0.00),  # net -0.01: not worth a send
        ("d", -0.02, -0.01, 0.003),  # subject_3 net -0.02: none
        ("e", 0.00, 0.00, 0.02),  # subject_3 (net 0.15)
    ]
    frame = pd.DataFrame(rows, columns=["customer_id", "uplift_subject_1", "uplift_subject_2", "uplift_subject_3"])
    return spark.createDataFrame(frame)


def _apply(spark, settings):
    return apply_policy(_scored(spark), settings, RUN_DATE).toPandas().set_index("customer_id")


def test_each_customer_gets_the_arm_of_highest_net_value_or_none(spark, settings):
    out = _apply(spark, _policy(settings))
    assert out["recommended_arm"].to_dict() == {
        "a": "subject_1",
        "b": "subject_2",
        "c": "none",
        "d": "none",
        "e": "subject_3",
    }
    assert out["rank"].to_dict() == {"a": 1, "b": 2, "e": 3, "c": 4, "d": 5}
    assert out["selected"].to_dict() == {"a": True, "b": True, "c": False, "d": False, "e": True}
    assert out.loc["a", "expected_net_value"] == 10 * 0.05 - 0.05


def test_uplift_floor_and_budgets(spark, settings):
    floor = _apply(spark, _policy(settings, min_uplift=0.025))
    assert floor.loc["e", "recommended_arm"] == "none" and floor.loc["b", "recommended_arm"] == "subject_2"
    by_sends = _apply(spark, _policy(settings, max_sends=2))
    assert by_sends["selected"].to_dict() == {"a": True, "b": True, "c": False, "d": False, "e": False}
    by_spend = _apply(spark, _policy(settings, max_spend=0.05))
    assert by_spend["selected"].to_dict() == {"a": True, "b": False, "c": False, "d": False, "e": False}


def test_a_stable_share_of_the_selected_is_held_out(spark, settings):
    frame = pd.DataFrame({"customer_id": [f"C{i}" for i in range(4000)]})
    for arm in ("subject_1", "subject_2", "subject_3"):
        frame[uplift_column(arm)] = 0.05 if arm == "subject_1" else 0.0
    scored = spark.createDataFrame(frame)
    policy = _policy(settings, holdout_share=0.1)
    first = apply_policy(scored, policy, RUN_DATE).toPandas()
    second = apply_policy(scored, policy, RUN_DATE).toPandas()
    assert 0.08 < first["holdout"].mean() < 0.12
    assert (
        first.sort_values("customer_id")["holdout"].to_numpy()
        == second.sort_values("customer_id")["holdout"].to_numpy()
    ).all()
    assert not (first["holdout"] & ~first["selected"]).any()


def test_a_scoring_set_with_other_features_than_the_models_is_refused_by_name():
    import pytest

    from jobs.model.portable import FeatureMismatchError, PortableModel, check_features, serving_problem

    model = PortableModel("control", ["a"], ["age", "spend"], {"region": ["N", "S"]}, {})
    check_features(["customer_id", "spend", "region", "age"], model)  # order does not matter
    with pytest.raises(FeatureMismatchError, match=r"missing \['spend'\]; not known to the model \['tier'\]"):
        check_features(["customer_id", "age", "region", "tier"], model)
    assert serving_problem(["customer_id", "age", "spend", "region"], model, "control", ["a"]) is None
    assert "the model knows arms ['control', 'a']" in serving_problem(["customer_id"], model, "control", ["a", "b"])


def test_the_workers_started_ahead_of_scoring_report_a_failure(spark):
    """score starts the Python workers while it resolves the champion: the warm-up job completes,
    and a worker that cannot import what scoring needs is an error, not a silent skip."""
    frame = spark.createDataFrame(pd.DataFrame({"customer_id": ["a", "b", "c"]}))
    assert start_python_workers(frame, ("lightgbm", "jobs.model.portable")).result() is None
    with pytest.raises(Exception, match="jobs.no_such_module"):
        start_python_workers(frame, ("jobs.no_such_module",)).result()
