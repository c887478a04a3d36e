import pytest

from conftest import with_demo
from jobs.settings import DEMO_CONF, load_settings


def test_settings_load_with_absolute_paths(settings, home):
    assert settings.paths.lake == home / "var" / "lake"
    assert settings.mlflow.tracking_uri == f"sqlite:///{home}/var/mlflow/mlflow.db"
    assert settings.experiment.all_arms == ["control", "subject_1", "subject_2", "subject_3"]
    assert settings.spark.event_log_dir == str(home / "var" / "spark-events")


def test_address_variables_replace_the_yaml_addresses(home, monkeypatch):
    """What the DAG sets from its Airflow connections; the files' values where a variable is unset."""
    monkeypatch.setenv("UPLIFT_SPARK_REMOTE", "sc://spark.example:15002")
    monkeypatch.delenv("UPLIFT_MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    assert settings.spark.remote == "sc://spark.example:15002"
    assert settings.mlflow.tracking_uri == f"sqlite:///{home}/var/mlflow/mlflow.db"


@pytest.mark.parametrize(
    "overlay, named",
    [
        ("experiment:\n  attribution_window_dayz: 3\n", "attribution_window_dayz"),  # a wrong key
        ("training:\n  holdout_fraction: a lot\n", "holdout_fraction"),  # a wrong type
    ],
)
def test_a_wrong_setting_is_named_in_the_error(home, tmp_path, monkeypatch, overlay, named):
    bad = tmp_path / "bad.yml"
    bad.write_text(overlay)
    monkeypatch.setenv("UPLIFT_CONF", with_demo(bad))
    with pytest.raises(ValueError, match=named) as err:
        load_settings()
    assert "bad.yml" in str(err.value)


def test_split_must_cover_every_arm(home, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yml"
    bad.write_text("experiment:\n  expected_split: {control: 0.5, subject_1: 0.5}\n")
    monkeypatch.setenv("UPLIFT_CONF", with_demo(bad))
    with pytest.raises(ValueError, match="expected_split"):
        load_settings()


def _load_with(tmp_path, monkeypatch, text: str):
    overlay = tmp_path / "overlay.yml"
    overlay.write_text(text)
    monkeypatch.setenv("UPLIFT_CONF", with_demo(overlay))
    return load_settings()


def test_an_overlay_replaces_the_experiment_and_the_feature_spec_whole(home, tmp_path, monkeypatch):
    settings = _load_with(
        tmp_path,
        monkeypatch,
        """
experiment:
  arms: [mens, womens]
  expected_split: {control: 0.5, mens: 0.25, womens: 0.25}
targeting:
  cost_per_send: {mens: 0.1, womens: 0.2}
sources:
  users: {columns: {customer_id: cust}}
features:
  eligibility: "true"
  attributes:
    recency: {kind: numeric}
  history: {n_sends: [7]}
""",
    )
    assert settings.experiment.expected_split == {"control": 0.5, "mens": 0.25, "womens": 0.25}
    assert settings.targeting.cost_per_send == {"mens": 0.1, "womens": 0.2}
    assert settings.features.names == ["recency", "n_sends_7d"], "no demo attribute or history is inherited"
    assert settings.raw_types("users") == {"customer_id": "string", "recency": "double"}
    assert settings.sources["users"].columns == {"customer_id": "cust"}
    assert settings.experiment.attribution_window_days == 7, "keys the overlay does not set still merge"
    assert settings.features.pii == ["email"], "lists the overlay does not set are kept"


@pytest.mark.parametrize(
    "overlay, named",
    [
        ("experiment:\n  arms: [mens, womens]\n", "expected_split"),
        (
            "experiment:\n  arms: [mens, womens]\n  expected_split: {control: 0.5, mens: 0.25, womens: 0.25}\n",
            r"targeting.cost_per_send must give a cost for exactly the arms \['mens', 'womens'\]: missing",
        ),
        (
            "experiment:\n  campaign_splits: {c1: {control: 0.5, subject_9: 0.5}}\n",
            r"campaign_splits.c1 names \['subject_9'\]",
        ),
        ("sources:\n  users: {columns: {agee: age_years}}\n", r"sources.users.columns maps \['agee'\]"),
        ("features:\n  attributes: {tier: {kind: categorical, min: 1}}\n", "numeric features only"),
    ],
)
def test_an_inconsistent_overlay_fails_at_load_naming_the_key(home, tmp_path, monkeypatch, overlay, named):
    with pytest.raises(ValueError, match=named):
        _load_with(tmp_path, monkeypatch, overlay)


def test_conf_base_declares_no_experiment(home, monkeypatch):
    """conf/base is the product's defaults: without an overlay the error says what to declare."""
    monkeypatch.delenv("UPLIFT_CONF", raising=False)
    with pytest.raises(ValueError, match="no experiment declared") as err:
        load_settings()
    assert str(DEMO_CONF) in str(err.value) and "docs/own-data.md" in str(err.value)
    demo = load_settings(demo=True)  # the demo's commands read its overlay themselves
    assert demo.experiment.arms == ["subject_1", "subject_2", "subject_3"] and "unsubscribe" in demo.targeting.outcomes


def test_a_users_overlay_states_only_its_own_experiment(home, tmp_path, monkeypatch):
    """Nothing of the demo's experiment is inherited: no unsubscribe outcome, attribute, history or pii."""
    overlay = tmp_path / "mine.yml"
    overlay.write_text(
        """
experiment:
  control: holdout
  arms: [offer]
  expected_split: {holdout: 0.5, offer: 0.5}
  attribution_window_days: 3
  qualifying_response_types: [visit]
features:
  attributes: {recency: {kind: numeric}}
targeting:
  value_per_response: 2.0
  cost_per_send: {offer: 0.1}
"""
    )
    monkeypatch.setenv("UPLIFT_CONF", str(overlay))
    settings = load_settings()
    assert settings.targeting.outcomes == {} and settings.targeting.guardrails == {}
    assert settings.features.names == ["recency"] and settings.features.pii == []
    assert settings.features.eligibility == "true"
    assert settings.targeting.exploration_share == 0.05, "the product's defaults still apply"
