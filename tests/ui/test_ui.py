"""The Campaigns page (jobs.ui.pages) in a real Airflow API app: behind Airflow's login, showing what the
night published."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from conftest import RUN_DATE
from jobs.data.lake import partition_dir
from jobs.model import policy
from jobs.settings import report_dir
from jobs.targeting import queries
from jobs.ui import campaigns

DAY = RUN_DATE.isoformat()
PAGES = [
    "/campaigns/",
    f"/campaigns/runs/{DAY}",
    f"/campaigns/runs/{DAY}?budget=2000",
    f"/campaigns/runs/{DAY}/segments",
    f"/campaigns/runs/{DAY}/why",
    f"/campaigns/runs/{DAY}/files/budget_curve.png",
    f"/campaigns/runs/{DAY}/artifacts/qini_and_deciles.png",
    f"/campaigns/runs/{DAY}/artifacts/uplift_drivers.png",
    "/campaigns/icon.svg",
    "/campaigns/results",
    "/campaigns/results/trend.png",
    "/campaigns/results/calibration.png",
]


@pytest.fixture(scope="module")
def airflow(home, nightly):
    """A real Airflow API app with the plugin loaded from the package's entry point, and tokens."""
    airflow_cli = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow_cli, "db", "migrate"], check=True, capture_output=True)  # this session's AIRFLOW_HOME
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    client = TestClient(create_app())
    manager = get_auth_manager()
    return {
        "client": client,
        "viewer": manager.generate_jwt(SimpleAuthManagerUser(username="ada", role="viewer")),
        "no_role": manager.generate_jwt(SimpleAuthManagerUser(username="eve", role=None)),
    }


def _get(airflow, path: str, token: str | None = "viewer", **kw):
    headers = {"Authorization": f"Bearer {airflow[token]}"} if token else {}
    return airflow["client"].get(path, headers=headers, **kw)


def _forged(token: str) -> str:
    """The viewer's token with its claims rewritten (another user, the admin role) and signed with another key."""
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(
        {**claims, "sub": "mallory", "role": "admin"}, "not-airflows-secret-key-0123456789abcdef", "HS512"
    )


def _cells(html: str, row_attr: str, value: str) -> dict[str, float]:
    """data-field cells of the table row with row_attr=value, as numbers."""
    row = re.search(rf'<tr {row_attr}="{re.escape(value)}"[^>]*>(.*?)</tr>', html, re.S)
    assert row, f"no row {row_attr}={value}"
    return {
        m.group(1): float(unescape(m.group(2)).replace(",", "").rstrip("%"))
        for m in re.finditer(r'data-field="([a-z_]+)">\s*([-0-9.,%]+)\s*<', row.group(1))
    }


def test_the_plugin_is_in_airflows_navigation_from_the_package_entry_point(airflow):
    plugins = _get(airflow, "/api/v2/plugins").json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "uplift_campaigns")
    assert "EntryPoint" in ours["source"] and "jobs.ui.plugin:CampaignsPlugin" in ours["source"]
    assert ours["fastapi_apps"][0]["url_prefix"] == "/campaigns"
    view = ours["external_views"][0]
    assert (view["name"], view["destination"], view["url_route"], view["href"]) == (
        "Campaigns",
        "nav",
        "campaigns",
        "/campaigns/",
    )


@pytest.mark.parametrize("path", PAGES + [f"/campaigns/runs/{DAY}/download/subject_1.csv"])
def test_every_route_requires_an_airflow_login_and_the_campaigns_view(airflow, path):
    assert _get(airflow, path, token=None).status_code == 401
    forged = airflow["client"].get(path, headers={"Authorization": f"Bearer {_forged(airflow['viewer'])}"})
    assert forged.status_code == 403
    assert _get(airflow, path, token="no_role").status_code == 403  # logged in, but not allowed the custom view
    # the UI's own session cookie is accepted like the header
    airflow["client"].cookies.set("_token", airflow["viewer"])
    try:
        assert airflow["client"].get(path).status_code == 200
    finally:
        airflow["client"].cookies.clear()
    assert _get(airflow, path).status_code == 200


def test_an_expired_token_is_refused(airflow):
    import jwt
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    user = SimpleAuthManagerUser(username="ada", role="viewer")
    token = get_auth_manager().generate_jwt(user, expiration_time_in_seconds=-3600)  # expired an hour ago
    assert jwt.decode(token, options={"verify_signature": False})["exp"] < time.time() - 3000
    assert airflow["client"].get("/campaigns/", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_runs_and_run_pages_show_the_published_summary(airflow, settings):
    summary = pd.read_parquet(partition_dir(settings, "audience_summary", RUN_DATE))
    runs = _get(airflow, "/campaigns/").text
    total = _cells(runs, "data-run", DAY)
    assert total["sends"] == summary["sends"].sum()
    assert total["spend"] == pytest.approx(summary["spend"].sum(), abs=0.005)
    assert total["expected_net_value"] == pytest.approx(summary["expected_net_value"].sum(), abs=0.005)
    page = _get(airflow, f"/campaigns/runs/{DAY}").text
    assert 'id="policy">model:' in page
    for row in summary.itertuples():
        shown = _cells(page.split('id="budget"')[0], "data-arm", row.recommended_arm)
        assert shown["customers"] == row.customers and shown["sends"] == row.sends and shown["holdout"] == row.holdout
        assert shown["explore"] == row.explore
        assert shown["expected_incremental_responses"] == pytest.approx(row.expected_incremental_responses, abs=0.005)
        assert shown["spend"] == pytest.approx(row.spend, abs=0.005)
    # the gate's per-arm holdout estimate with its interval is on the page
    assert re.search(r"\d[\d,]*\.\d\d \[-?[\d,]+\.\d\d, -?[\d,]+\.\d\d\]", page)
    assert "drift.html" in page and "Evidently report" in page


def test_the_run_page_shows_every_policys_guardrail_estimate_and_the_ones_above_a_limit(airflow, settings):
    gate = json.loads((report_dir(settings, RUN_DATE) / "gate.json").read_text())
    page = _get(airflow, f"/campaigns/runs/{DAY}").text
    table = page.split('id="policy-values"')[1].split("</table>")[0]
    assert "unsubscribe increase per send" in table and "max_increase_per_send 0.005" in table
    for name, v in gate["policy_values"].items():
        row = table.split(f'<td class="l">{name}</td>')[1].split("</tr>")[0]
        g = v["guardrails"]["unsubscribe"]
        assert f"{g['increase_per_send']:.4f} [{g['low']:.4f}, {g['high']:.4f}]" in row
        assert ("above" in row) == bool(g["above"]), name
    # Whether tonight's interval for "everyone gets subject_3" clears the limit is a draw at the
    # suite's size (tests/model/test_guardrails.py); how the page marks one that does, on tonight's run:
    from jobs.ui import pages as ui

    context = ui.run_context(settings, RUN_DATE)
    estimate = context["run"]["gate"]["policy_values"]["everyone gets subject_3"]["guardrails"]["unsubscribe"]
    estimate["above"] = ["max_increase_per_send"]
    marked = ui.templates.get_template("run.html").render(root="", user="viewer", **context)
    row = marked.split('<td class="l">everyone gets subject_3</td>')[1].split("</tr>")[0]
    assert 'class="harmed" title="lies above max_increase_per_send"' in row
    assert f"{estimate['increase_per_send']:.4f} [{estimate['low']:.4f}, {estimate['high']:.4f}] above" in row


def test_the_budget_control_selects_what_the_policy_would_with_that_budget(airflow, settings):
    audience = pd.read_parquet(
        partition_dir(settings, "audience", RUN_DATE), columns=["rank", "recommended_arm", "send_cost"]
    ).sort_values("rank")
    recommended = audience["recommended_arm"] != policy.NONE
    for budget in (1_000, 4_321):
        rule = settings.targeting.model_copy(update={"max_sends": budget, "max_spend": None})
        chosen = policy.within_budget(recommended, recommended.cumsum(), audience["send_cost"].cumsum(), rule)
        expected = audience[chosen].groupby("recommended_arm").size()
        page = _get(airflow, f"/campaigns/runs/{DAY}", params={"budget": budget}).text
        budget_table = page.split('id="budget"')[1].split("</table>")[0]
        for arm, n in expected.items():
            assert _cells(budget_table, "data-arm", arm)["customers"] == n
        room = int(budget * (1 - settings.targeting.exploration_share))  # the explore share's part of the budget
        assert _cells(budget_table, "data-arm", "total")["customers"] == min(room, recommended.sum())
    # no budget: exactly the night's selection
    everyone = queries.budget(settings, RUN_DATE, int(len(audience) / (1 - settings.targeting.exploration_share)) + 1)
    summary = pd.read_parquet(partition_dir(settings, "audience_summary", RUN_DATE)).set_index("recommended_arm")
    assert {a["recommended_arm"]: a["customers"] for a in everyone["arms"]} == summary["customers"].to_dict()


def test_segment_page_equals_the_what_if_and_lists_harmed_segments_first(airflow, settings):
    from jobs.targeting.audience import what_if

    options = campaigns.segment_options(settings, RUN_DATE)
    spec = settings.features
    assert set(options) == {n for n, a in spec.attributes.items() if a.kind == "categorical"} | {
        f"{n}_band" for n in spec.segments()
    }
    picks = {"gender": options["gender"][0], "age_band": options["age_band"][2]}
    page = _get(airflow, f"/campaigns/runs/{DAY}/segments", params={**picks, "arm": "subject_1"}).text
    expected = what_if(settings, RUN_DATE, queries.where_clause(picks), "subject_1")
    assert expected["customers"] > 0
    result = page.split('id="segment-result"')[1].split("</div>")[0]
    shown = {
        m.group(1): float(m.group(2).replace(",", ""))
        for m in re.finditer(r'data-field="([a-z_]+)">([-0-9.,]+)<', result)
    }
    assert shown["customers"] == expected["customers"]
    for field in ("response_rate_without", "response_rate_with", "expected_uplift"):
        assert shown[field] == pytest.approx(expected[field], abs=5e-5)
    assert shown["expected_incremental_responses"] == pytest.approx(
        expected["expected_incremental_responses"], abs=0.005
    )
    assert unescape(queries.where_clause(picks)) in unescape(page)  # the CLI command that gives the same numbers
    by_effect = campaigns.segments_by_effect(settings, RUN_DATE)
    for rows in by_effect.values():
        harmed = [r["harmed"] for r in rows]
        assert harmed == sorted(harmed, reverse=True), "harmed segments come first"


def test_unknown_segments_and_arms_are_refused_by_name(airflow):
    page = _get(airflow, f"/campaigns/runs/{DAY}/segments", params={"arm": "subject_9"})
    assert page.status_code == 400 and "subject_9" in page.text
    script = _get(airflow, f"/campaigns/runs/{DAY}/segments", params={"arm": "<script>alert(1)</script>"})
    assert script.status_code == 400 and "<script>" not in script.text and "&lt;script&gt;" in script.text
    missing = _get(airflow, "/campaigns/runs/2019-01-01")
    assert missing.status_code == 404 and "2019-01-01" in missing.text


def test_why_page_shows_every_arms_uplift_drivers_from_the_deployed_model(airflow, settings):
    page = _get(airflow, f"/campaigns/runs/{DAY}/why").text
    drivers = campaigns.drivers(settings, RUN_DATE)
    assert "deployed model" in drivers["whose"]
    for arm in settings.experiment.arms:
        assert f'data-arm="{arm}"' in page
        top = drivers["arms"][arm]["drivers"][0]["feature"]
        assert top in settings.features.names and f'<td class="l">{top}</td>' in page


def test_download_is_exactly_the_cli_export(airflow, settings, tmp_path: Path):
    from jobs.targeting.audience import export_csv

    rows = export_csv(settings, RUN_DATE, "subject_2", tmp_path / "cli.csv")
    response = _get(airflow, f"/campaigns/runs/{DAY}/download/subject_2.csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content == (tmp_path / "cli.csv").read_bytes()
    assert response.content.count(b"\n") == rows + 1


def test_the_runs_list_shows_nights_that_did_not_publish_with_their_reason(settings, nightly, tmp_path):
    from helpers import settings_in

    local = settings_in(settings, tmp_path)
    for table in ("audience", "audience_summary"):
        shutil.copytree(partition_dir(settings, table, RUN_DATE), partition_dir(local, table, RUN_DATE))
    failed, late = RUN_DATE + timedelta(days=2), RUN_DATE + timedelta(days=3)
    report_dir(local, failed).mkdir(parents=True)
    (report_dir(local, failed) / "failure.txt").write_text("validate-raw failed for run_date=x: sends volume\n")
    (report_dir(local, late) / "steps").mkdir(parents=True)
    (report_dir(local, late) / "steps" / "validate-raw.json").write_text("{}")
    nights = {r["run_date"]: r for r in campaigns.runs(local)}
    assert list(nights) == [late.isoformat(), failed.isoformat(), (RUN_DATE + timedelta(days=1)).isoformat(), DAY]
    assert nights[failed.isoformat()]["state"] == "failed" and "sends volume" in nights[failed.isoformat()]["reason"]
    assert nights[late.isoformat()]["state"] == "not published" and "validate-raw" in nights[late.isoformat()]["reason"]
    assert nights[(RUN_DATE + timedelta(days=1)).isoformat()]["state"] == "missing"
    assert nights[DAY]["state"] == "published" and nights[DAY]["realized"] is None
