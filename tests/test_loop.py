"""The loop: each night's audience is sent, checked against itself when it comes back, and learned from."""

import json
import shutil
from datetime import date, timedelta

import mlflow
import pandas as pd
import pytest

from helpers import settings_in
from jobs import registry, steps
from jobs.audience import show
from jobs.generate import deliver
from jobs.lake import own_campaigns, partition_dir, version_dir
from jobs.simulate import simulate
from jobs.tracking import use_tracking
from jobs.validate import ValidationFailed, validate_raw

FIRST = date(2026, 10, 30)
# A 2-day window: the first night's own sends (delivered the next day) train the fourth night on,
# and five nights learn from the loop's own sends.
NIGHTS = 8


def _short_window(settings, root):
    """settings under root with a 2-day attribution window, every outcome's too, and a 10% explore share."""
    exp = settings.experiment.model_copy(update={"attribution_window_days": 2})
    outcomes = {name: o.model_copy(update={"window_days": 2}) for name, o in settings.targeting.outcomes.items()}
    targeting = settings.targeting.model_copy(update={"outcomes": outcomes, "exploration_share": 0.1})
    return settings_in(settings, root, experiment=exp, targeting=targeting)


@pytest.fixture(scope="module")
def loop(spark, settings, tmp_path_factory):
    local = _short_window(settings, tmp_path_factory.mktemp("loop"))
    table = simulate(local, nights=NIGHTS, customers=4000, days=8, sends_per_day=2000, first_night=FIRST, seed=3)
    return local, table


def test_every_night_of_the_loop_completes_and_records_its_assignments(loop):
    local, table = loop
    assert [line["night"] for line in table] == [(FIRST + timedelta(days=k)).isoformat() for k in range(NIGHTS)]
    assert table[0]["sends"] > 0
    for line in table:
        night = date.fromisoformat(line["night"])
        audience = pd.read_parquet(partition_dir(local, "audience", night))
        assert (audience["campaign_id"] == local.export.campaign_of(night)).all()
        assert audience["propensity"].between(0, 1, inclusive="right").all()
        listed = audience["assigned_arm"].notna()
        assert line["sends"] == int(listed.sum())
        awake = audience["inclusion_probability"] > 0  # not resting from an earlier night's list
        assert abs(line["explore"] - 0.1 * awake.sum()) <= 4 * (0.09 * awake.sum()) ** 0.5 + 1, line
        # Positivity: every customer not resting could have been sent control and every arm tonight.
        assert (audience.loc[awake, "inclusion_probability"] >= 0.1 - 1e-12).all()


def test_a_listed_customer_rests_until_the_label_window_has_passed(loop):
    """No two label windows of a customer overlap: listed on a night, not again for contact_window_days."""
    local, table = loop
    window = local.contact_window_days
    listed = {
        date.fromisoformat(line["night"]): set(
            pd.read_parquet(
                partition_dir(local, "audience", date.fromisoformat(line["night"])),
                columns=["customer_id", "assigned_arm"],
            ).dropna()["customer_id"]
        )
        for line in table
    }
    nights = sorted(listed)
    for i, night in enumerate(nights):
        for later in nights[i + 1 : i + 1 + window]:
            assert not listed[night] & listed[later], (night, later)
    assert listed[nights[window + 1]] & listed[nights[0]], "after the window, the same customers are listed again"


def test_own_sends_come_back_validated_and_train_with_their_recorded_propensity(loop):
    local, _ = loop
    second = FIRST + timedelta(days=1)
    raw = json.loads((local.paths.reports / f"run_date={second}" / "validation" / "raw.json").read_text())
    assert any(check["suite"] == "own_campaigns" and check["success"] for check in raw["checks"])
    last = FIRST + timedelta(days=NIGHTS - 1)
    training = pd.read_parquet(partition_dir(local, "features/training", last))
    own = training[training["campaign_id"] == local.export.campaign_of(FIRST)]
    assert set(own["assignment"]) >= {"target", "explore"} and len(own) > 0
    audience = pd.read_parquet(partition_dir(local, "audience", FIRST))
    merged = own.merge(audience, on=["campaign_id", "customer_id"], suffixes=("", "_listed"))
    assert len(merged) == len(own), "every own send found its audience row"
    assert (merged["arm"] == merged["assigned_arm"]).all()
    assert (merged["propensity"] == merged["propensity_listed"]).all()
    randomized = training[training["assignment"] == "randomized"]
    assert set(randomized["propensity"].round(6)) == {0.25}, "the demo's 25/25/25/25 split"


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        ("arm", "arm changed from the audience's assigned_arm"),
        ("customer", "customer not in the audience"),
        ("share", "its routes came back as"),
    ],
)
def test_a_spoiled_own_campaign_is_refused_by_name_and_nothing_is_written(loop, spark, tmp_path, spoil, named):
    local, _ = loop
    bad = settings_in(local, tmp_path)
    shutil.copytree(local.paths.lake / "raw", bad.paths.lake / "raw")
    shutil.copytree(partition_dir(local, "audience", FIRST), partition_dir(bad, "audience", FIRST))
    day = FIRST + timedelta(days=1)
    folder = bad.paths.lake / "raw" / "sends" / f"dt={day}"
    sends = pd.concat([pd.read_parquet(f) for f in folder.iterdir()], ignore_index=True)
    if spoil == "arm":
        sends.loc[sends["arm"] == "subject_1", "arm"] = "subject_2"
    elif spoil == "customer":
        sends.loc[sends.index[0], "customer_id"] = "C9999999"
    else:  # the e-mail tool left out most of the control rows
        control = sends.index[sends["arm"] == "control"]
        sends = sends.drop(control[: int(len(control) * 0.8)])
    shutil.rmtree(folder)
    deliver(bad, "sends", sends, day)
    with pytest.raises(ValidationFailed, match="own_campaigns") as err:
        validate_raw(spark, bad, day)
    assert named in str(err.value) and local.export.campaign_of(FIRST) in str(err.value)
    assert not partition_dir(bad, "features/training", day).exists()


def test_a_backfill_keeps_the_sent_audience_and_scores_with_that_nights_champion(loop):
    """Runs last: it republishes the first night's audience of the loop's home."""
    local, table = loop
    # A model trained for the last night becomes champion (whatever its gate said): a newer champion.
    use_tracking(local)
    versions = mlflow.MlflowClient().search_model_versions(f"name='{local.mlflow.registered_model}'")
    newest = max(versions, key=lambda v: int(v.version))
    assert newest.tags["run_date"] == table[-1]["night"]
    registry.promote(local, newest.version, date.fromisoformat(table[-1]["night"]))
    current = partition_dir(local, "audience", FIRST)
    published = {p.name: p.read_bytes() for p in current.iterdir() if p.is_file()}
    scored = steps.run("score", FIRST, local)
    assert scored["policy"] == table[0]["policy"], "the model that served the first night scores it again"
    kept = version_dir(local, "audience", FIRST, 1)
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()} == published, "kept byte for byte"
    first_id = local.export.campaign_of(FIRST)
    assert (pd.read_parquet(current)["campaign_id"] == f"{first_id}_v2").all()
    assert own_campaigns(local, FIRST) == {first_id: kept, f"{first_id}_v2": current}
    assert f"Audience {FIRST}" in show(local, FIRST, version=1)
