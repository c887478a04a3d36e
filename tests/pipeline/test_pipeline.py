"""The steps of one nightly run, in process on the shared Spark session and generated data.

Asserts on what users notice: validation reports, a gated champion, an audience row for
every eligible customer whose uplift tracks the true uplift, and a drift report.
"""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import RUN_DATE
from jobs import steps
from jobs.data.lake import partition_dir
from jobs.model import registry
from jobs.model.gate import alternatives
from jobs.names import STEPS, p_column, uplift_column, uplift_high_column
from jobs.settings import report_dir

ARMS = ["subject_1", "subject_2", "subject_3"]


@pytest.fixture(autouse=True)
def _tracking(settings):
    """Other modules may point MLflow at their own stores; these tests read this one."""
    from jobs.model.tracking import use_tracking

    use_tracking(settings)


@pytest.fixture(scope="session")
def audience(settings, nightly):
    return pd.read_parquet(partition_dir(settings, "audience", RUN_DATE))


@pytest.fixture(scope="session")
def truth(settings, generated):
    return pd.read_parquet(settings.paths.ground_truth / "customers.parquet")


def _eligible_customers(settings):
    users = pd.read_parquet(settings.paths.lake / "raw" / "users" / f"dt={RUN_DATE}")
    return set(users.loc[users["age"] >= 18, "customer_id"])


def test_validation_reports_are_written(settings, nightly):
    folder = report_dir(settings, RUN_DATE) / "validation"
    raw = json.loads((folder / "raw.json").read_text())
    features = json.loads((folder / "features.json").read_text())
    assert raw["success"] and features["success"]
    suites = {c["suite"] for c in raw["checks"]}
    assert suites == {"raw_users", "raw_sends", "raw_responses", "randomization", "response_types"}
    srm = features["sample_ratio_mismatch"]
    campaigns = pd.read_parquet(partition_dir(settings, "features/training", RUN_DATE), columns=["campaign_id"])
    assert set(srm["campaigns"]) == set(campaigns["campaign_id"]), "one test per campaign (the demo: one a day)"
    assert all(test["p_value"] > srm["p_value_min"] for test in srm["campaigns"].values())
    assert srm["p_value_min"] == settings.experiment.srm_p_value_min / len(srm["campaigns"])
    assert (folder / "data_docs" / "index.html").exists()


def test_challenger_is_logged_gated_and_promoted(settings, nightly):
    run = mlflow.get_run(nightly["train"]["run_id"])
    for arm in ARMS:
        assert run.data.metrics[f"qini.{arm}"] > 0
        assert run.data.metrics[f"qini_ci_low.{arm}"] > 0
    assert run.data.tags["gate.decision"] == "promote"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {
        "qini_and_deciles.png",
        "metrics.json",
        "holdout",
        "gate.json",
        "reports",
        "budget_curve.csv",
        "feature_importance.csv",
    } <= artifacts
    champion = registry.alias_version(settings, registry.CHAMPION)
    assert str(champion.version) == nightly["train"]["model_version"]
    assert champion.tags["run_date"] == RUN_DATE.isoformat()


def test_following_the_model_beats_every_constant_policy(settings, nightly):
    """Beats every constant policy; by its whole interval every one that is an alternative (a
    constant policy a guardrail refuses is not one, and a model may come close to it)."""
    gate = json.loads((report_dir(settings, RUN_DATE) / "gate.json").read_text())
    values = gate["policy_values"]
    _, refused = alternatives(values, ARMS)
    assert "challenger" not in refused
    for constant in [f"everyone gets {arm}" for arm in ARMS] + ["no one"]:
        difference = gate["differences"][f"challenger - {constant}"]
        assert difference["value"] > 0 and (constant in refused or difference["low"] > 0), (constant, difference)
    assert values["challenger"]["low"] > values["no one"]["value"] == 0.0
    assert nightly["score"]["policy"] == f"model:{nightly['train']['model_version']}"


def test_audience_has_every_eligible_customer_once(settings, audience, nightly):
    assert set(audience["customer_id"]) == _eligible_customers(settings)
    assert audience["customer_id"].is_unique
    assert set(audience["recommended_arm"]) <= {*ARMS, "none"}
    assert (audience["model_version"] == nightly["score"]["model_version"]).all()
    assert sorted(audience["rank"]) == list(range(1, len(audience) + 1))
    assert set(audience["decile"]) == set(range(1, 11))


def test_targeting_follows_the_policy(settings, audience):
    policy = settings.targeting
    chosen = audience[audience["recommended_arm"] != "none"]
    assert (chosen["expected_net_value"] > 0).all()
    guardrail = policy.guardrails["unsubscribe"]
    for arm in ARMS:
        rows = chosen[chosen["recommended_arm"] == arm]
        # value of clicks and purchases + value of unsubscribes (negative) - cost, among the arms whose
        # upper bound on the unsubscribe uplift is within the per-customer limit
        net = {
            a: (rows[uplift_column(a)] * policy.value_per_response - policy.cost_per_send[a])
            .add(rows[uplift_column(a, "unsubscribe")] * policy.outcomes["unsubscribe"].value)
            .where(rows[uplift_high_column(a, "unsubscribe")] <= guardrail.max_uplift, -np.inf)
            for a in ARMS
        }
        assert (pd.DataFrame(net).idxmax(axis=1) == arm).all()
        assert (rows[uplift_high_column(arm, "unsubscribe")] <= guardrail.max_uplift).all()
    assert not audience.loc[audience["recommended_arm"] == "none", "selected"].any()
    summary = pd.read_parquet(partition_dir(settings, "audience_summary", RUN_DATE)).set_index("recommended_arm")
    assert summary["customers"].sum() == audience["selected"].sum()
    assert (summary["sends"] + summary["holdout"] + summary["explore"] == summary["customers"]).all()
    assert 0 < audience["holdout"].sum() < 0.1 * audience["selected"].sum()
    sent = audience[audience["assignment"] == "target"]
    assert (sent["selected"] & (sent["assigned_arm"] == sent["recommended_arm"])).all()
    assert summary["spend"].sum() == pytest.approx(sent["send_cost"].sum())


def test_predicted_uplift_tracks_the_true_uplift(audience, truth):
    merged = audience.merge(truth, on="customer_id", suffixes=("", "_true"))
    for arm in ARMS:
        true_uplift = merged[f"p_{arm}_true"] - merged["p_control_true"]
        rho = stats.spearmanr(merged[uplift_column(arm)], true_uplift).statistic
        assert rho > 0.4, f"{arm}: rank correlation with the true uplift {rho:.2f}"


def test_the_harmful_message_is_not_sent_to_those_it_harms(settings, audience, truth):
    users = pd.read_parquet(settings.paths.lake / "raw" / "users" / f"dt={RUN_DATE}")
    seniors = set(users.loc[users["age"] >= 60, "customer_id"])
    senior_rows = audience[audience["customer_id"].isin(seniors)]
    assert senior_rows["uplift_subject_1"].mean() < 0
    assert (senior_rows["recommended_arm"] == "subject_1").mean() < 0.02


def test_drift_report_is_written(settings, nightly):
    folder = report_dir(settings, RUN_DATE)
    assert (folder / "drift.html").stat().st_size > 10_000
    drift = json.loads((folder / "drift.json").read_text())
    assert drift["summary"]["outcome"] == "ok", drift["summary"]["comparisons"]
    assert "age" in drift["summary"]["column_drift_scores"]
    assert nightly["drift"]["outcome"] == drift["summary"]["outcome"]


def test_run_report_counts_rows_and_times_every_step(settings, nightly, audience):
    report = json.loads((report_dir(settings, RUN_DATE) / "run_report.json").read_text())
    stages = {s["step"]: s for s in report["stages"]}
    assert list(stages) == [s for s in STEPS if s != "report"] and report["missing_steps"] == []
    assert all(s["seconds"] > 0 for s in stages.values())
    raw = settings.paths.lake / "raw"
    delivered = sum(len(pd.read_parquet(raw / source / f"dt={RUN_DATE}")) for source in ("users", "sends", "responses"))
    assert stages["validate-raw"]["rows_in"] == delivered
    raw_rows = sum(len(pd.read_parquet(raw / source)) for source in ("sends", "responses"))
    assert stages["etl"]["rows_in"] == raw_rows
    assert stages["score"]["rows_out"] == len(audience) == report["audience_rows"]
    shares = audience["recommended_arm"].value_counts(normalize=True)
    assert report["arm_shares"] == pytest.approx(shares.to_dict(), abs=1e-4)
    assert report["gate"]["decision"] == nightly["gate"]["decision"]
    assert report["drift"]["outcome"] == nightly["drift"]["outcome"]
    assert report["trained_model_version"] == nightly["train"]["model_version"]
    assert report["qini"] == nightly["train"]["qini"]

    run = mlflow.get_run(nightly["train"]["run_id"])
    assert run.data.metrics["stage_seconds.etl"] == stages["etl"]["seconds"]
    assert run.data.metrics["rows_out.score"] == len(audience)
    assert run.data.metrics["arm_share.none"] == pytest.approx(shares.get("none", 0.0), abs=1e-4)
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "run_report.json" in artifacts


def test_rescoring_replaces_the_audience(settings, spark, nightly, audience):
    steps.run("score", RUN_DATE, settings)
    again = pd.read_parquet(partition_dir(settings, "audience", RUN_DATE))
    assert len(again) == len(audience)
    key = ["customer_id"]
    cols = ["recommended_arm", "uplift_subject_1", "rank"]
    pd.testing.assert_frame_equal(
        again.sort_values(key)[key + cols].reset_index(drop=True),
        audience.sort_values(key)[key + cols].reset_index(drop=True),
    )


def test_batch_scores_are_the_served_models_predictions(settings, nightly, audience):
    # Spark's workers score with the champion's boosters, not the pyfunc: the numbers must agree.
    model = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model}/{nightly['score']['model_version']}")
    features = pd.read_parquet(partition_dir(settings, "features/scoring", RUN_DATE))
    served = model.predict(features).set_index(features["customer_id"]).sort_index()
    scored = audience.set_index("customer_id").sort_index()
    assert len(scored) == len(served) > 1000
    pd.testing.assert_series_equal(scored["p_control"], served["p_control"])
    for arm in settings.experiment.arms:
        pd.testing.assert_series_equal(scored[p_column(arm)], served[p_column(arm)])
        pd.testing.assert_series_equal(scored[uplift_column(arm)], served[uplift_column(arm)])


def test_model_rejects_input_without_its_features(settings, nightly):
    model = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model}@champion")
    with pytest.raises(Exception, match="age"):
        model.predict(pd.DataFrame({"customer_id": ["x"]}))


# --- lifecycle: these run last in this module, they add model versions -------------------


def test_a_backfill_never_replaces_a_newer_champion(settings, spark, nightly):
    from datetime import timedelta

    champion_before = registry.alias_version(settings, registry.CHAMPION)
    older = RUN_DATE - timedelta(days=2)
    for step in ("etl", "train", "gate", "promote"):
        result = steps.run(step, older, settings)
    assert result["promoted"] is False
    gate = json.loads((report_dir(settings, older) / "gate.json").read_text())
    assert gate["decision"] == "reject"
    assert any("a backfill never replaces it" in reason for reason in gate["reasons"])
    assert registry.alias_version(settings, registry.CHAMPION).version == champion_before.version


def test_manual_promotion_and_rollback(settings, nightly):
    champion = str(registry.alias_version(settings, registry.CHAMPION).version)
    newest = str(
        max(
            int(v.version)
            for v in mlflow.MlflowClient().search_model_versions(f"name = '{settings.mlflow.registered_model}'")
        )
    )
    assert newest != champion
    assert registry.promote(settings, newest) == {"champion": newest, "previous": champion}
    assert registry.rollback(settings) == {"champion": champion, "previous": newest}
    assert registry.status(settings)["champion"]["version"] == champion
