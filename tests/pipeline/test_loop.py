"""The loop: each night's audience is sent, checked against itself when it comes back, and learned from."""

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from browser import launch, login, number, table
from helpers import serve_api, settings_in
from jobs import steps
from jobs.data.checks import ValidationFailed
from jobs.data.lake import own_campaigns, partition_dir, read_table, version_dir
from jobs.data.validate import validate_raw
from jobs.demo.generate import deliver
from jobs.demo.simulate import SERVING_STEPS, negated_champion, play, simulate, true_incremental
from jobs.model import registry
from jobs.model.tracking import use_tracking
from jobs.settings import report_dir
from jobs.targeting.audience import show

pytestmark = pytest.mark.slow  # the loop, night after night

FIRST = date(2026, 10, 30)
# A 2-day window: the first night's own sends (delivered the next day) train the fourth night on,
# and five nights learn from the loop's own sends.
NIGHTS = 8


def _short_window(settings, root):
    """settings under root with a 2-day attribution window, every outcome's too, a 10% explore share,
    and the gate's `point` rule: on 4,000 customers no challenger's gain clears a 95% interval
    within the loop's nights, and the loop's results and monitoring are about a model's audiences."""
    exp = settings.experiment.model_copy(update={"attribution_window_days": 2})
    outcomes = {name: o.model_copy(update={"window_days": 2}) for name, o in settings.targeting.outcomes.items()}
    targeting = settings.targeting.model_copy(update={"outcomes": outcomes, "exploration_share": 0.1})
    gate = settings.gate.model_copy(update={"beats": "point"})
    return settings_in(settings, root, experiment=exp, targeting=targeting, gate=gate)


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


def _results_and_truth(local):
    """Every (audience, arm) of the results with the generator's true incremental responses."""
    results = read_table(local, "results")
    truth = pd.read_parquet(local.paths.ground_truth / "customers.parquet")
    rows = []
    for day, part in results.groupby("audience_date"):
        true = true_incremental(local, pd.read_parquet(partition_dir(local, "audience", day)), truth)
        rows.append(part.assign(truth=part["arm"].map(true)))
    return pd.concat(rows, ignore_index=True)


def test_every_sent_audience_gets_results_whose_intervals_hold_the_truth(loop):
    local, table = loop
    results = _results_and_truth(local)
    sent = [line["night"] for line in table[: NIGHTS - 3] if line["sends"]]  # matured by the last night
    assert sorted({d.isoformat() for d in results["audience_date"]}) == sent
    measured = results[(results["sent"] > 0) & (results["holdout"] > 0) & (results["arm"] != "all")]
    assert len(measured) >= 3
    held = (measured["incremental_low"] <= measured["truth"]) & (measured["truth"] <= measured["incremental_high"])
    assert held.mean() >= 0.75, measured[["audience_date", "arm", "incremental_low", "truth", "incremental_high"]]
    assert (results["validated"]).all()


@pytest.fixture(scope="module")
def served(loop):
    """After the loop (whose champion changes most nights), its last champion serves on without
    training until its own audiences have matured and been measured, then one whole night: the gate
    weighs that champion with its realized value."""
    local, table = loop
    start = date.fromisoformat(table[-1]["night"]) + timedelta(days=1)
    serving = local.experiment.attribution_window_days + 2
    nights = play(local, first_night=start, nights=serving, seed=3, steps_run=SERVING_STEPS)
    return nights + play(local, first_night=start + timedelta(days=serving), nights=1, seed=3)


def test_a_good_champion_is_never_flagged(loop, served):
    local, table = loop
    actions = [
        json.loads((report_dir(local, date.fromisoformat(n["night"])) / "monitoring.json").read_text())
        for n in table + served
    ]
    assert all(not a["evidence"] for a in actions), [a["evidence"] for a in actions]
    assert any(a.get("realized_value") for a in actions), "the champion's realized value was assessed"
    files = [report_dir(local, date.fromisoformat(n["night"])) / "gate.json" for n in table + served]
    gates = [json.loads(f.read_text()) for f in files if f.exists()]
    assessed = [g for g in gates if (g.get("champion") or {}).get("realized_value")]
    assert assessed, "some night's champion had realized results when the gate met it"
    for gate in assessed:  # the gate shows the realized value beside its offline value whenever there is one
        assert any("realized" in r and "of its own audiences" in r for r in gate["reasons"]), gate["reasons"]


def _serve_settings(local, root):
    """UPLIFT_HOME / UPLIFT_CONF under which another process (the CLI, Airflow) reads the loop's lake."""
    overlay = {
        "paths": {k: str(v) for k, v in local.paths.model_dump().items()},
        "mlflow": local.mlflow.model_dump(mode="json"),
        "experiment": local.experiment.model_dump(mode="json"),
        "targeting": local.targeting.model_dump(mode="json"),
    }
    path = root / "loop.yml"
    path.write_text(yaml.safe_dump(overlay))
    return {"UPLIFT_HOME": os.environ["UPLIFT_HOME"], "UPLIFT_CONF": f"{os.environ['UPLIFT_CONF']}{os.pathsep}{path}"}


def _cli_results(project) -> dict[str, dict[str, float]]:
    """`uplift audience results`' table rows as numbers, by audience/arm."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "uplift"), "audience", "results"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **project},
    ).stdout
    figure = r"(-?[\d,.]+) \[(-?[\d,.]+), (-?[\d,.]+)\]"
    line = re.compile(rf"^(\S+)\s+(\S+)\s+([\d,]+)\s+([\d,]+)\s+{figure}\s+(-?[\d,.]+)\s+{figure}\s+(-?[\d,.]+)$")
    rows = {}
    for text in out.splitlines():
        m = line.match(text.strip())
        if m:
            v = [number(g) for g in m.groups()[2:]]
            rows[f"{m.group(1)}/{m.group(2)}"] = dict(
                zip(
                    [
                        "sent",
                        "holdout",
                        "incremental",
                        "low",
                        "high",
                        "expected",
                        "net_value",
                        "net_low",
                        "net_high",
                        "expected_net",
                    ],
                    v,
                    strict=True,
                )
            )
    return rows


def test_the_results_page_shows_what_uplift_audience_results_prints(loop, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    local, _ = loop
    root = tmp_path_factory.mktemp("results-ui")
    project = _serve_settings(local, root)
    cli = _cli_results(project)
    assert cli, "the CLI printed results"
    with serve_api(root, project, "manager", "a-password") as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        login(page, url, "manager", "a-password")
        page.goto(f"{url}/campaigns/results")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(root / "results.png"), full_page=True)
        shown = page.eval_on_selector_all(
            "#results tr[data-arm]",
            """rows => Object.fromEntries(rows.map(r => [r.dataset.audience + '/' + r.dataset.arm, Object.fromEntries(
                [...r.querySelectorAll('[data-field]')].map(c => [c.dataset.field, c.innerText]))]))""",
        )
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
        page.goto(f"{url}/campaigns/")
        page.wait_for_load_state("networkidle")
        runs = table(page, "#runs")
        browser.close()
    assert {k for k, v in shown.items() if v["incremental"] != "-"} == set(cli)
    for key, row in cli.items():
        assert number(shown[key]["sent"]) == row["sent"] and number(shown[key]["holdout"]) == row["holdout"], key
        assert number(shown[key]["incremental"]) == pytest.approx(row["incremental"], abs=0.005), key
        low, high = (number(x) for x in shown[key]["incremental_interval"].strip("[]").split(", "))
        assert (low, high) == pytest.approx((row["low"], row["high"]), abs=0.005), key
        assert number(shown[key]["net_value"]) == pytest.approx(row["net_value"], abs=0.005), key
        assert number(shown[key]["expected_incremental"]) == pytest.approx(row["expected"], abs=0.005), key
    assert len(images) == 2 and all(width > 0 for _, width in images), images
    matured = {k.split("/")[0] for k in cli}
    assert all(runs[day]["realized"] != "not matured" for day in matured if day in runs)
    assert any(r.get("realized") == "not matured" for r in runs.values())


def test_the_notebook_plots_realized_against_expected(loop, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    local, table = loop
    for name, value in _serve_settings(local, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("UPLIFT_RUN_DATE", table[-1]["night"])
    notebook = nbformat.read(Path(__file__).resolve().parents[2] / "notebooks" / "run_report.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    last = [o for o in notebook.cells[-1].outputs]
    assert any("image/png" in o.get("data", {}) for o in last), "the realized vs expected picture"
    measured = read_table(local, "results")["audience_date"].nunique()
    assert f"realized results of {measured} audiences" in "".join(o.get("text", "") for o in last)


def test_a_bad_champion_is_flagged_within_the_window_and_rolled_back(loop, served):
    """A champion that expects every arm to lose customers (its uplifts negated: it sends no one)
    serves; the nights' results show it worse than the best constant policy, and it goes."""
    local, _ = loop
    # Nine in ten of the awake customers explored and four measured nights pooled: on 4,000 customers
    # the paired difference to a constant policy then has a standard error of about 0.1 per customer,
    # and the loss of sending no one (0.43 per customer against `subject_2`) stands some 4 standard
    # errors out of the noise, beyond the 2.5 that the test over the four constants asks.
    local = local.model_copy(
        update={
            "targeting": local.targeting.model_copy(update={"exploration_share": 0.9}),
            "monitoring": local.monitoring.model_copy(update={"window": 4}),
        }
    )
    start = date.fromisoformat(served[-1]["night"]) + timedelta(days=1)
    with negated_champion(local) as (good, bad):
        nights = play(
            local,
            first_night=start,
            nights=local.monitoring.window + local.experiment.attribution_window_days + 2,
            seed=3,
            steps_run=SERVING_STEPS,
        )
    assert nights[0]["policy"] == f"model:{bad.version}" and nights[0]["target"] == 0
    assert [n["monitoring"] for n in nights].count("rollback") == 1, nights
    flagged = mlflow.MlflowClient().get_model_version(local.mlflow.registered_model, bad.version)
    assert "below the constant policy" in flagged.tags[registry.FLAGGED_TAG]
    after = nights[[n["monitoring"] for n in nights].index("rollback") + 1 :]
    assert after and all(n["policy"] == f"model:{good.version}" for n in after), nights
