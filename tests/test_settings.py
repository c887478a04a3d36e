import pytest

from jobs.settings import load_settings


def test_settings_load_with_absolute_paths(settings, home):
    assert settings.paths.lake == home / "var" / "lake"
    assert settings.mlflow.tracking_uri == f"sqlite:///{home}/var/mlflow/mlflow.db"
    assert settings.experiment.all_arms == ["control", "subject_1", "subject_2", "subject_3"]


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
    monkeypatch.setenv("UPLIFT_CONF", str(bad))
    with pytest.raises(ValueError, match=named) as err:
        load_settings()
    assert "bad.yml" in str(err.value)


def test_split_must_cover_every_arm(home, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yml"
    bad.write_text("experiment:\n  expected_split: {control: 0.5, subject_1: 0.5}\n")
    monkeypatch.setenv("UPLIFT_CONF", str(bad))
    with pytest.raises(ValueError, match="expected_split"):
        load_settings()
