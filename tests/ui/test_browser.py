"""A campaign manager in a real browser: headless Chromium logs in to a running `airflow api-server`,
opens Campaigns from Airflow's navigation, the run page and a segment page, and reads the same
numbers as `uplift audience show` and `uplift audience what-if` print for that run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from browser import capture, fields, launch, login, number, table
from conftest import RUN_DATE
from helpers import serve_api
from jobs.targeting import queries

pytestmark = pytest.mark.slow  # Chromium against a live Airflow API server

DAY = RUN_DATE.isoformat()
UPLIFT = str(Path(sys.executable).parent / "uplift")
USER, PASSWORD = "manager", "a-campaign-managers-password"


@pytest.fixture(scope="module")
def api_server(nightly, tmp_path_factory):
    """`airflow api-server` on a free local port, serving this session's published run; its URL."""
    project = {"UPLIFT_HOME": os.environ["UPLIFT_HOME"], "UPLIFT_CONF": os.environ["UPLIFT_CONF"]}
    with serve_api(tmp_path_factory.mktemp("ui"), project, USER, PASSWORD) as url:
        yield url


def _show_table() -> dict[str, dict[str, float]]:
    """The per-arm table printed by `uplift audience show`, as numbers."""
    out = subprocess.run([UPLIFT, "audience", "show", "--run-date", DAY], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["recommended_arm"])
    header = lines[start].split()
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = {h: number(v) for h, v in zip(header[1:], cells[1:], strict=True)}
    headline = re.search(r"([\d,]+) customers scored, ([\d,]+) selected, ([\d,]+) to send", out.stdout)
    peak = re.search(r"net value peaks at ([\d,]+) sends", out.stdout)
    return {"arms": rows, "scored": number(headline.group(1)), "peak_sends": number(peak.group(1))}


def test_a_campaign_manager_reads_the_cli_numbers_on_the_pages(api_server, tmp_path):
    from playwright.sync_api import sync_playwright

    cli = _show_table()
    picks = {"customer_type": "regular", "age_band": "25-34"}
    where = queries.where_clause(picks)
    what_if = json.loads(
        subprocess.run(
            [UPLIFT, "audience", "what-if", "--run-date", DAY, "--arm", "subject_2", "--where", where],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(f"{api_server}/campaigns/")
        assert "Not authenticated" in page.content()  # the page itself, without a login
        login(page, api_server, USER, PASSWORD)
        # Campaigns in Airflow's navigation, the page embedded in the UI
        page.get_by_role("link", name="Campaigns").click()
        frame = page.frame_locator("iframe")
        frame.locator("#runs").wait_for()
        page.screenshot(path=str(tmp_path / "nav.png"))
        frame.get_by_role("link", name=DAY).click()
        frame.locator("#arms").wait_for()
        page.goto(f"{api_server}/campaigns/runs/{DAY}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
        shown = table(page, "#arms")
        assert set(shown) == set(cli["arms"])
        for arm, row in cli["arms"].items():
            for field, value in row.items():
                assert number(shown[arm][field]) == pytest.approx(value, abs=0.005), (arm, field)
        headline = page.inner_text("#headline")
        assert f"{int(cli['scored']):,} customers scored" in headline
        assert f"{int(cli['peak_sends']):,}" in page.inner_text("#peak")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
        assert all(width > 0 for _, width in images), f"pictures that did not load: {images}"
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
        for field in ("response_rate_without", "response_rate_with", "expected_uplift"):
            assert number(result[field]) == pytest.approx(what_if[field], abs=5e-5), field
        assert number(result["expected_incremental_responses"]) == pytest.approx(
            what_if["expected_incremental_responses"], abs=0.005
        )
        assert page.inner_text("#where") == where
        # the send list, downloaded from the run page
        page.goto(f"{api_server}/campaigns/runs/{DAY}")
        with page.expect_download() as download:
            page.locator('tr[data-arm="subject_2"] a', has_text="CSV").click()
        saved = tmp_path / "subject_2.csv"
        download.value.save_as(saved)
        assert saved.read_text().splitlines()[0].startswith('"customer_id","campaign_id","assigned_arm"')
        exported = tmp_path / "cli.csv"
        subprocess.run(
            [UPLIFT, "audience", "export", "--run-date", DAY, "--arm", "subject_2", "--output", str(exported)],
            check=True,
            capture_output=True,
        )
        assert saved.read_bytes() == exported.read_bytes()
        # The policy's sends of subject_2, and its explore share on top.
        assert len(saved.read_text().splitlines()) - 1 > cli["arms"]["subject_2"]["sends"]
        browser.close()
    for name in ("nav", "run", "segment"):
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000


def test_the_screenshot_script_captures_the_readme_pictures(api_server, tmp_path):
    shots = capture(api_server, USER, PASSWORD, DAY, "customer_type=regular&arm=subject_2", tmp_path)
    assert set(shots) == {"nav", "run", "segment"}
    assert all(path.stat().st_size > 20_000 for path in shots.values())
