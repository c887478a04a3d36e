"""A campaign manager in a real browser: headless Chromium logs in to a running `airflow api-server`,
opens Campaigns from Airflow's navigation, the runs list, the run page and a segment page, and reads
the same numbers as `uplift audience show`, `uplift audience what-if` and `uplift audience results`
print for that run: percentages, money and counts, the guardrail columns, the nights that failed,
the night before, the budget curve and the budget control."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from browser import capture, fields, launch, login, number, table
from conftest import RUN_DATE
from helpers import serve_api
from jobs.data.lake import partition_dir
from jobs.model import policy
from jobs.settings import load_settings, report_dir
from jobs.targeting import queries

pytestmark = pytest.mark.slow  # Chromium against a live Airflow API server

DAY = RUN_DATE.isoformat()
PREVIOUS, FAILED = RUN_DATE - timedelta(days=1), RUN_DATE - timedelta(days=2)
FAILURE = "validate-raw failed for run_date=2026-10-28: no sends delivery (raw/sends/dt=2026-10-28)"
UPLIFT = str(Path(sys.executable).parent / "uplift")
USER, PASSWORD = "manager", "a-campaign-managers-password"
RESPONSES = {"expected_incremental_responses", "expected_incremental__unsubscribe"}  # counts, one decimal


@pytest.fixture(scope="module")
def nights(nightly, tmp_path_factory) -> dict:
    """A copy of the session's project home with two nights before the published one: the night before
    published a smaller audience under a constant policy, the night before that failed."""
    root = tmp_path_factory.mktemp("nights")
    shutil.copytree(
        os.environ["UPLIFT_HOME"], root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("airflow", "spark-events")
    )
    project = {"UPLIFT_HOME": str(root), "UPLIFT_CONF": os.environ["UPLIFT_CONF"]}
    with pytest.MonkeyPatch.context() as env:
        for name, value in project.items():
            env.setenv(name, value)
        settings = load_settings()
    # Only the published night stays: other tests of the session may have run earlier dates in its home.
    for folder in [*settings.paths.lake.rglob("run_date=*"), *settings.paths.reports.glob("run_date=*")]:
        if folder.is_dir() and folder.name != f"run_date={RUN_DATE}":
            shutil.rmtree(folder)
    shutil.copytree(partition_dir(settings, "audience", RUN_DATE), partition_dir(settings, "audience", PREVIOUS))
    summary = pd.read_parquet(partition_dir(settings, "audience_summary", RUN_DATE))
    earlier = summary.assign(
        sends=summary["sends"] // 2, expected_net_value=summary["expected_net_value"] / 3, policy="constant:subject_2"
    )
    partition_dir(settings, "audience_summary", PREVIOUS).mkdir(parents=True)
    earlier.to_parquet(partition_dir(settings, "audience_summary", PREVIOUS) / "part-00000.parquet", index=False)
    report_dir(settings, FAILED).mkdir(parents=True)
    (report_dir(settings, FAILED) / "failure.txt").write_text(FAILURE + "\n")
    return {"project": project, "settings": settings, "earlier": earlier.set_index("recommended_arm")}


@pytest.fixture(scope="module")
def api_server(nights, tmp_path_factory):
    """`airflow api-server` on a free local port, serving the nights' project home; its URL."""
    with serve_api(tmp_path_factory.mktemp("ui"), nights["project"], USER, PASSWORD) as url:
        yield url


def _uplift(nights, *args: str) -> str:
    env = {**os.environ, **nights["project"]}
    return subprocess.run([UPLIFT, *args], capture_output=True, text=True, check=True, env=env).stdout


def _show_table(nights) -> dict:
    """The per-arm table, the headline and the budget curve's peak printed by `uplift audience show`, as numbers."""
    out = _uplift(nights, "audience", "show", "--run-date", DAY)
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["recommended_arm"])
    header = lines[start].split()
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = {h: number(v) for h, v in zip(header[1:], cells[1:], strict=True)}
    headline = re.search(r"([\d,]+) customers scored, ([\d,]+) selected, ([\d,]+) to send.*spend ([\d,.]+)", out)
    peak = re.search(r"net value peaks at ([\d,]+) sends, (-?[\d,.]+ \[-?[\d,.]+, -?[\d,.]+\])", out)
    return {
        "arms": rows,
        "scored": number(headline.group(1)),
        "spend": headline.group(4),
        "peak_sends": number(peak.group(1)),
        "peak_value": peak.group(2),
    }


def _tolerance(field: str) -> float:
    """How far the page's rounding may lie from the CLI's two decimals: both round the same figure, the
    page money to the cent and responses to a tenth (half a tenth plus half a cent)."""
    return 0.055 if field in RESPONSES else 0.005


def test_a_campaign_manager_reads_the_cli_numbers_on_the_pages(nights, api_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    cli = _show_table(nights)
    picks = {"customer_type": "regular", "age_band": "25-34"}
    where = queries.where_clause(picks)
    what_if = json.loads(
        _uplift(nights, "audience", "what-if", "--run-date", DAY, "--arm", "subject_2", "--where", where)
    )
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(f"{api_server}/campaigns/")
        assert "Not authenticated" in page.content()  # the page itself, without a login
        login(page, api_server, USER, PASSWORD)
        # Campaigns in Airflow's navigation, the page embedded in the UI: the failed night says why
        page.get_by_role("link", name="Campaigns").click()
        frame = page.frame_locator("iframe")
        frame.locator("#runs").wait_for()
        failed = frame.locator(f'tr[data-run="{FAILED.isoformat()}"]')
        expect(failed).to_contain_text("failed")
        expect(failed).to_contain_text(FAILURE)
        expect(frame.locator(f'tr[data-run="{PREVIOUS.isoformat()}"]')).to_contain_text("constant:subject_2")
        page.screenshot(path=str(tmp_path / "nav.png"))
        frame.get_by_role("link", name=DAY).click()
        frame.locator("#arms").wait_for()

        page.goto(f"{api_server}/campaigns/runs/{DAY}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
        # the per-arm table: what `uplift audience show` prints, money to the cent and responses as counts
        shown = table(page, "#arms")
        assert set(shown) == set(cli["arms"])
        for arm, row in cli["arms"].items():
            for field, value in row.items():
                assert number(shown[arm][field]) == pytest.approx(value, abs=_tolerance(field)), (arm, field)
            assert re.fullmatch(r"-?[\d,]+\.\d", shown[arm]["expected_incremental_responses"])
            # the guardrail outcome's increase per send, a percentage
            per_send = row["expected_incremental__unsubscribe"] / row["sends"]
            assert shown[arm]["guardrail_unsubscribe"].endswith("%")
            assert number(shown[arm]["guardrail_unsubscribe"].split()[0]) == pytest.approx(per_send, abs=6e-5)
        headline = page.inner_text("#headline")
        assert f"{int(cli['scored']):,} customers scored" in headline and f"spend {cli['spend']}" in headline
        assert f"{int(cli['peak_sends']):,}" in page.inner_text("#peak")
        # the gate's decision in words, its detail one click away
        summary = page.locator("#gate-summary")
        expect(summary).to_contain_text("per customer")
        assert not page.locator("#policy-values").is_visible()
        page.locator("#gate-detail > summary").click()
        expect(page.locator("#policy-values")).to_be_visible()
        # the night before, beside tonight
        before = table(page, "#previous")
        for arm, row in cli["arms"].items():
            assert number(before[arm]["sends"]) == row["sends"]
            assert number(before[arm]["sends_before"]) == nights["earlier"].loc[arm, "sends"]
            earlier_value = nights["earlier"].loc[arm, "expected_net_value"]
            assert number(before[arm]["expected_net_value_before"]) == pytest.approx(earlier_value, abs=0.005)
        expect(page.locator("#previous-policy")).to_contain_text("constant:subject_2")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
        assert all(width > 0 for _, width in images), f"pictures that did not load: {images}"

        # the budget curve: hovering its peak shows the sends, spend and value `uplift audience show` prints
        page.locator("#curve circle.peak").hover(force=True)
        tip = page.locator("#curve-tip")
        expect(tip).to_be_visible()
        assert f"{int(cli['peak_sends']):,} sends" in tip.inner_text()
        assert f"net value {cli['peak_value']}" in tip.inner_text()
        assert re.search(r"spend [\d,]+\.\d\d", tip.inner_text())
        # a budget in money: the control answers without a submit or a reload, as the policy's rule would
        page.evaluate("window.stayed = true")
        page.select_option("select[name=unit]", "money")
        page.fill("#budget-value", "301.23")
        expect(page.locator("#budget-asked")).to_contain_text("301.23 in money")
        assert page.evaluate("window.stayed") is True and "unit=money" in page.url
        selected = _selected(nights["settings"], max_spend=301.23)
        budget = table(page, "#budget")
        assert number(budget["total"]["customers"]) == len(selected)
        assert number(budget["total"]["spend"]) == pytest.approx(selected["send_cost"].sum(), abs=0.005)
        for arm, n in selected.groupby("recommended_arm").size().items():
            assert number(budget[arm]["customers"]) == n
        # and in sends, by a click on the curve's peak: the budget that sends that many
        page.locator("#curve circle.peak").click(force=True)
        expect(page.locator("#budget-asked")).to_contain_text("sends")
        chosen = int(page.input_value("#budget-value"))
        expect(page.locator("#budget tr[data-arm=total] [data-field=customers]")).to_have_text(
            f"{len(_selected(nights['settings'], max_sends=chosen)):,}"
        )
        sends = number(fields(page, "#curve-at")["sends"])
        assert sends == pytest.approx(cli["peak_sends"], rel=0.01)

        # a segment page, picked in the form like a person would
        page.goto(f"{api_server}/campaigns/runs/{DAY}/segments")
        for name, value in picks.items():
            page.select_option(f"select[name={name}]", value)
        page.select_option("select[name=arm]", "subject_2")
        page.get_by_role("button", name="Show").click()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / "segment.png"), full_page=True)
        result = fields(page, "#segment-result")
        assert number(result["customers"]) == what_if["customers"]
        for field, shown_to in (
            ("response_rate_without", 5e-4),
            ("response_rate_with", 5e-4),
            ("expected_uplift", 5e-5),
        ):
            assert result[field].endswith("%"), field
            assert number(result[field]) == pytest.approx(what_if[field], abs=shown_to), field
        assert number(result["expected_incremental_responses"]) == pytest.approx(
            what_if["expected_incremental_responses"], abs=0.05
        )
        unsubscribe = what_if["guardrails"]["unsubscribe"]
        assert number(result["guardrail_unsubscribe"].split()[0]) == pytest.approx(
            unsubscribe["increase_per_send"], abs=5e-5
        )
        assert ("above limit" in result["guardrail_unsubscribe"]) == bool(unsubscribe["above"])
        assert page.inner_text("#where") == where
        for arm in ("subject_1", "subject_2", "subject_3"):
            expect(page.locator(f'table.effects[data-arm="{arm}"] th', has_text="unsubscribe increase")).to_be_visible()

        # which learner serves: the Why page names the one `uplift model status` names, with its calibration
        page.goto(f"{api_server}/campaigns/runs/{DAY}/why")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / "why.png"), full_page=True)
        champion = json.loads(_uplift(nights, "model", "status"))["champion"]
        expect(page.locator("#learner b")).to_have_text(champion["candidate"])
        expect(page.locator(f'table.candidates tr[data-candidate="{champion["candidate"]}"]')).to_contain_text("serves")
        calibration = page.locator('img[alt="calibration per arm"]')
        assert calibration.evaluate("img => img.complete && img.naturalWidth > 300")
        for arm in nights["settings"].experiment.arms:
            expect(page.locator(f'table.calibration tr[data-arm="{arm}"]')).to_be_visible()

        # nothing measured yet: the Results page says what `uplift audience results` says
        page.goto(f"{api_server}/campaigns/results")
        assert _uplift(nights, "audience", "results").startswith("No results yet")
        expect(page.locator("body")).to_contain_text("No results yet")

        # the send list, downloaded from the run page
        page.goto(f"{api_server}/campaigns/runs/{DAY}")
        with page.expect_download() as download:
            page.locator('#arms tr[data-arm="subject_2"] a', has_text="CSV").click()
        saved = tmp_path / "subject_2.csv"
        download.value.save_as(saved)
        assert saved.read_text().splitlines()[0].startswith('"customer_id","campaign_id","assigned_arm"')
        exported = tmp_path / "cli.csv"
        _uplift(nights, "audience", "export", "--run-date", DAY, "--arm", "subject_2", "--output", str(exported))
        assert saved.read_bytes() == exported.read_bytes()
        # The policy's sends of subject_2, and its explore share on top.
        assert len(saved.read_text().splitlines()) - 1 > cli["arms"]["subject_2"]["sends"]
        browser.close()
    for name in ("nav", "run", "segment", "why"):
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000


def _selected(settings, **budget) -> pd.DataFrame:
    """The customers the policy's budget rule (jobs.model.policy.within_budget, in pandas) selects from the ranking."""
    audience = pd.read_parquet(
        partition_dir(settings, "audience", RUN_DATE), columns=["rank", "recommended_arm", "send_cost"]
    ).sort_values("rank")
    recommended = audience["recommended_arm"] != policy.NONE
    rule = settings.targeting.model_copy(update={"max_sends": None, "max_spend": None, **budget})
    spent = (audience["send_cost"] * recommended).cumsum()
    return audience[policy.within_budget(recommended, recommended.cumsum(), spent, rule)]


def test_the_screenshot_script_captures_the_readme_pictures(api_server, tmp_path):
    shots = capture(api_server, USER, PASSWORD, DAY, "customer_type=regular&arm=subject_2", tmp_path)
    assert set(shots) == {"nav", "run", "segment"}
    assert all(path.stat().st_size > 20_000 for path in shots.values())
