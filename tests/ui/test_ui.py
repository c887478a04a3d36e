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
from html import escape, unescape
from pathlib import Path

import pandas as pd
import pytest

from browser import number
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
    f"/campaigns/runs/{DAY}?budget=301.23&unit=money",
    f"/campaigns/runs/{DAY}/budget?budget=300&unit=money",
    f"/campaigns/runs/{DAY}/segments",
    f"/campaigns/runs/{DAY}/why",
    f"/campaigns/runs/{DAY}/files/budget_curve.png",
    f"/campaigns/runs/{DAY}/artifacts/qini_and_deciles.png",
    f"/campaigns/runs/{DAY}/artifacts/uplift_drivers.png",
    f"/campaigns/runs/{DAY}/artifacts/calibration.png",
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
        m.group(1): number(unescape(m.group(2)))
        for m in re.finditer(r'data-field="([a-z_]+)"[^>]*>\s*([-0-9.,%]+)\s*<', row.group(1))
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
        assert shown["expected_incremental_responses"] == pytest.approx(row.expected_incremental_responses, abs=0.05)
        assert shown["spend"] == pytest.approx(row.spend, abs=0.005)
        assert shown["expected_net_value"] == pytest.approx(row.expected_net_value, abs=0.005)
        # each guardrail outcome's expected increase per send, beside its total
        per_send = row.expected_incremental__unsubscribe / row.sends
        assert shown["guardrail_unsubscribe"] == pytest.approx(per_send, abs=5e-5)
        cells = page.split(f'<tr data-arm="{row.recommended_arm}">')[1].split("</tr>")[0]
        marked = 'data-field="guardrail_unsubscribe" class="harmed"' in cells
        assert marked == (per_send > 0.005)
    # the gate's per-arm holdout estimate with its interval is on the page: money, and responses as counts
    assert re.search(r"\d[\d,]*\.\d\d \[-?[\d,]+\.\d\d, -?[\d,]+\.\d\d\]", page)
    assert re.search(r"\d[\d,]*\.\d \[-?[\d,]+\.\d, -?[\d,]+\.\d\]", page)
    assert "drift.html" in page and "Evidently report" in page


def test_the_run_page_shows_every_policys_guardrail_estimate_and_the_ones_above_a_limit(airflow, settings):
    gate = json.loads((report_dir(settings, RUN_DATE) / "gate.json").read_text())
    page = _get(airflow, f"/campaigns/runs/{DAY}").text
    table = page.split('id="policy-values"')[1].split("</table>")[0]
    assert "unsubscribe increase per send" in table and "max_increase_per_send 0.50%" in table
    for name, v in gate["policy_values"].items():
        row = table.split(f'<td class="l">{name}</td>')[1].split("</tr>")[0]
        g = v["guardrails"]["unsubscribe"]
        assert f"{g['increase_per_send']:.2%} [{g['low']:.2%}, {g['high']:.2%}]" in row
        assert f"<td>{v['value']:,.2f}</td>" in row  # net value per customer, as money
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
    assert f"{estimate['increase_per_send']:.2%} [{estimate['low']:.2%}, {estimate['high']:.2%}] above" in row


def test_the_budget_control_selects_what_the_policy_would_with_that_budget(airflow, settings):
    audience = pd.read_parquet(
        partition_dir(settings, "audience", RUN_DATE), columns=["rank", "recommended_arm", "send_cost"]
    ).sort_values("rank")
    recommended = audience["recommended_arm"] != policy.NONE
    spent = (audience["send_cost"] * recommended).cumsum()
    room = 1 - settings.targeting.exploration_share  # the explore share's part of the budget
    for unit, budget in (("sends", 1_000), ("sends", 4_321), ("money", 151.37), ("money", 333.33)):
        limit = (
            {"max_sends": budget, "max_spend": None} if unit == "sends" else {"max_sends": None, "max_spend": budget}
        )
        chosen = policy.within_budget(
            recommended, recommended.cumsum(), spent, settings.targeting.model_copy(update=limit)
        )
        expected = audience[chosen]
        # the page, and the answer its script fetches when the control moves: the same selection
        for path in (f"/campaigns/runs/{DAY}", f"/campaigns/runs/{DAY}/budget"):
            page = _get(airflow, path, params={"budget": budget, "unit": unit}).text
            budget_table = page.split('id="budget"')[1].split("</table>")[0]
            for arm, n in expected.groupby("recommended_arm").size().items():
                assert _cells(budget_table, "data-arm", arm)["customers"] == n
            total = _cells(budget_table, "data-arm", "total")
            assert total["customers"] == len(expected)
            assert total["spend"] == pytest.approx(expected["send_cost"].sum(), abs=0.005)
            if unit == "sends":
                assert len(expected) == min(int(budget * room), recommended.sum())
            else:
                assert expected["send_cost"].sum() <= budget * room < spent[recommended & ~chosen].min()
    # no budget: exactly the night's selection
    everyone = queries.budget(settings, RUN_DATE)
    summary = pd.read_parquet(partition_dir(settings, "audience_summary", RUN_DATE)).set_index("recommended_arm")
    assert {a["recommended_arm"]: a["customers"] for a in everyone["arms"]} == summary["customers"].to_dict()
    assert _get(airflow, f"/campaigns/runs/{DAY}/budget", params={"unit": "euros"}).status_code == 400


def test_the_budget_curve_shows_sends_spend_and_value_from_the_gates_curve(airflow, settings):
    from jobs.targeting.audience import budget_peak

    curve = pd.read_csv(report_dir(settings, RUN_DATE) / "budget_curve.csv")
    audience = pd.read_parquet(
        partition_dir(settings, "audience", RUN_DATE), columns=["rank", "recommended_arm", "send_cost"]
    ).sort_values("rank")
    cost = audience.loc[audience["recommended_arm"] != policy.NONE, "send_cost"].cumsum().to_numpy()
    page = _get(airflow, f"/campaigns/runs/{DAY}").text
    labels = [unescape(label) for label in re.findall(r'<circle class="pt[^"]*"[^>]*data-label="([^"]*)"', page)]
    assert len(labels) == len(curve) > 2
    for label, point in zip(labels, curve.itertuples(), strict=True):
        spend = cost[min(point.sends, len(cost)) - 1] if point.sends else 0.0
        assert label.splitlines() == [
            f"{point.sends:,} sends",
            f"spend {spend:,.2f}",
            f"net value {point.net_value:,.2f} [{point.net_value_low:,.2f}, {point.net_value_high:,.2f}]",
            f"incremental responses {point.incremental_responses:,.1f} "
            f"[{point.incremental_responses_low:,.1f}, {point.incremental_responses_high:,.1f}]",
        ]
    peak = budget_peak(settings, RUN_DATE)  # what `uplift audience show` prints
    assert re.search(rf'<circle class="pt peak"[^>]*data-label="{int(peak["sends"]):,} sends', page)


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
        m.group(1): number(m.group(2)) for m in re.finditer(r'data-field="([a-z_]+)"[^>]*>([-0-9.,%]+)[ <]', result)
    }
    assert shown["customers"] == expected["customers"]
    # rates as percentages with one decimal, the uplift in percentage points with two
    for field, shown_to in (("response_rate_without", 5e-4), ("response_rate_with", 5e-4), ("expected_uplift", 5e-5)):
        assert shown[field] == pytest.approx(expected[field], abs=shown_to)
    assert re.search(r'data-field="response_rate_with">\d+\.\d%<', result)
    assert shown["expected_incremental_responses"] == pytest.approx(
        expected["expected_incremental_responses"], abs=0.05
    )
    # the guardrail outcome's expected increase per customer sent, as what-if prints it
    unsubscribe = expected["guardrails"]["unsubscribe"]
    assert shown["guardrail_unsubscribe"] == pytest.approx(unsubscribe["increase_per_send"], abs=5e-5)
    assert unsubscribe["above"] == queries.above_limits(
        settings.targeting.guardrails["unsubscribe"], unsubscribe["increase_per_send"]
    )
    assert unescape(queries.where_clause(picks)) in unescape(page)  # the CLI command that gives the same numbers
    by_effect = campaigns.segments_by_effect(settings, RUN_DATE)
    for rows in by_effect.values():
        harmed = [r["harmed"] for r in rows]
        assert harmed == sorted(harmed, reverse=True), "harmed segments come first"


def test_the_segments_table_shows_each_guardrails_increase_and_marks_the_ones_above_a_limit(airflow, settings):
    features = pd.read_parquet(partition_dir(settings, "features/scoring", RUN_DATE), columns=["customer_id", "gender"])
    audience = pd.read_parquet(partition_dir(settings, "audience", RUN_DATE)).merge(features, on="customer_id")
    by_effect = campaigns.segments_by_effect(settings, RUN_DATE)
    page = _get(airflow, f"/campaigns/runs/{DAY}/segments").text
    for arm in settings.experiment.arms:
        table = page.split(f'<table class="effects" data-arm="{arm}">')[1].split("</table>")[0]
        assert "unsubscribe increase" in table
        for row in (r for r in by_effect[arm][:12] if r["column"] == "gender"):
            # the segment's mean of the arm's per-customer unsubscribe uplift (the audience's column)
            truth = audience.loc[audience["gender"] == row["value"], f"uplift_{arm}__unsubscribe"].mean()
            assert row["guardrails"]["unsubscribe"]["increase_per_send"] == pytest.approx(truth, abs=1e-12)
            cells = _cells(table, "data-segment", f"gender={row['value']}")
            assert cells["guardrail_unsubscribe"] == pytest.approx(truth, abs=5e-5)
            assert cells["expected_uplift"] == pytest.approx(row["expected_uplift"], abs=5e-5)
    # a limit half-way through tonight's increases: the segments above it are marked, the others are not
    increases = sorted(r["guardrails"]["unsubscribe"]["increase_per_send"] for rows in by_effect.values() for r in rows)
    limit = increases[len(increases) // 2]
    guardrail = settings.targeting.outcomes["unsubscribe"].guardrail.model_copy(
        update={"max_increase_per_send": limit, "max_uplift": None}
    )
    outcomes = {"unsubscribe": settings.targeting.outcomes["unsubscribe"].model_copy(update={"guardrail": guardrail})}
    strict = settings.model_copy(update={"targeting": settings.targeting.model_copy(update={"outcomes": outcomes})})
    from jobs.ui import pages as ui

    marked = campaigns.segments_by_effect(strict, RUN_DATE)
    html = ui.templates.get_template("segments.html").render(
        root="",
        user="viewer",
        run_date=DAY,
        arms=settings.experiment.arms,
        arm="subject_1",
        options={},
        picks={},
        result=campaigns.segment(strict, RUN_DATE, {}, "subject_1"),
        by_effect=marked,
        guardrails={"unsubscribe": {"max_increase_per_send": limit, "max_uplift": None}},
    )
    for arm, rows in marked.items():
        table = html.split(f'<table class="effects" data-arm="{arm}">')[1].split("</table>")[0]
        for row in rows[:12]:
            above = row["guardrails"]["unsubscribe"]["increase_per_send"] > limit
            assert row["guardrails"]["unsubscribe"]["above"] == (["max_increase_per_send"] if above else [])
            cells = table.split(f'data-segment="{escape(row["column"] + "=" + row["value"])}"')[1].split("</tr>")[0]
            assert ('class="harmed" title="above max_increase_per_send"' in cells) == above
    assert any(r["guardrails"]["unsubscribe"]["above"] for rows in marked.values() for r in rows)


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


def test_why_page_names_the_learner_that_serves_as_uplift_model_status_does(airflow, settings):
    page = _get(airflow, f"/campaigns/runs/{DAY}/why").text
    status = subprocess.run(
        [str(Path(sys.executable).parent / "uplift"), "model", "status"], check=True, capture_output=True, text=True
    )
    champion = json.loads(status.stdout)["champion"]
    record = campaigns.learner(settings, RUN_DATE)
    assert champion["candidate"] == record["selected"] and champion["learner"] == record["learner"]
    assert f"The <b>{record['selected']}</b> learner made these uplifts" in page
    for name, candidate in record["candidates"].items():
        row = re.search(rf'<tr data-candidate="{re.escape(name)}"[^>]*>(.*?)</tr>', page).group(1)
        assert f"{candidate['value']:,.4f}" in row
    assert ('class="chosen"' in page) and f'data-candidate="{record["selected"]}" class="chosen"' in page
    for k, curve in record["calibration"].items():
        assert f'<tr data-arm="{k}"><td class="l">{k}</td><td>{curve["average_effect"] * 100:,.2f}%</td>' in page


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


def _text(html: str) -> str:
    """What a reader sees of an HTML fragment: its text, with the spaces folded."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_the_run_page_says_the_gates_decision_in_plain_words(airflow, settings):
    from jobs.names import CHALLENGER, everyone, versus
    from jobs.ui import pages as ui
    from jobs.ui.decision import gate_summary

    gate = json.loads((report_dir(settings, RUN_DATE) / "gate.json").read_text())
    page = _get(airflow, f"/campaigns/runs/{DAY}").text
    summary = _text(page.split('id="gate-summary">')[1].split("</div>")[0])
    value, d = gate["policy_values"][CHALLENGER]["value"], gate["differences"][versus(gate["best_constant"])]
    arm = next((a for a in settings.experiment.arms if everyone(a) == gate["best_constant"]), None)
    alternative = f"sending {arm} to everyone" if arm else "sending no one"
    assert f"worth {value:,.2f} per customer" in summary
    if gate["decision"] == "promote":
        version = gate["deployed_policy"].removeprefix("model:")
        assert f"Tonight the model's targeting is sent (model v{version})" in summary
        assert f"{d['value']:,.2f} [{d['low']:,.2f}, {d['high']:,.2f}] more than {alternative}" in summary
    else:
        assert "Tonight's new model is not sent" in summary
    # the engineer's detail stays one click away
    detail = unescape(page.split('<details id="gate-detail">')[1].split("</details>")[0])
    assert all(reason in detail for reason in gate["reasons"]) and 'id="policy-values"' in detail

    def told(changes: dict) -> str:
        context = ui.run_context(settings, RUN_DATE)
        context["run"]["summary"] = gate_summary(settings, {**gate, **changes})
        html = ui.templates.get_template("run.html").render(root="", user="viewer", **context)
        return _text(html.split('id="gate-summary">')[1].split("</div>")[0])

    # a challenger that breaks a guardrail and does not clearly beat the best constant: the constant is sent
    unsafe = {"increase_per_send": 0.0061, "low": 0.0052, "high": 0.007, "above": ["max_increase_per_send"]}
    values = {
        **gate["policy_values"],
        CHALLENGER: {**gate["policy_values"][CHALLENGER], "guardrails": {"unsubscribe": unsafe}},
    }
    differences = {
        **gate["differences"],
        versus("everyone gets subject_2"): {"value": 0.02, "low": -0.03, "high": 0.07},
    }
    text = told(
        {
            "decision": "reject",
            "deployed_policy": "constant:subject_2",
            "best_constant": "everyone gets subject_2",
            "policy_values": values,
            "differences": differences,
        }
    )
    assert "Tonight's new model is not sent. Instead, everyone eligible gets subject_2." in text
    assert "a difference of 0.02 [-0.03, 0.07] per customer against sending subject_2 to everyone" in text
    assert "it would raise unsubscribe by 0.61% [0.52%, 0.70%] per send, above the limit of 0.50%" in text
    assert "it is not clearly better than sending subject_2 to everyone" in text
    # a challenger worse than the champion, which keeps serving
    champion = {**gate["differences"], versus("champion"): {"value": -0.04, "low": -0.09, "high": 0.01}}
    champion[versus(gate["best_constant"])] = {"value": 0.1, "low": 0.05, "high": 0.15}
    text = told(
        {"decision": "reject", "deployed_policy": "model:1", "differences": champion, "champion": {"version": "1"}}
    )
    assert "Instead, the current model (v1) keeps choosing who gets which message." in text
    assert "it is worth 0.04 per customer less than the current model v1" in text
    assert "not clearly better" not in text and "would raise" not in text
    # no one is sent: said so
    text = told(
        {
            "decision": "reject",
            "deployed_policy": "constant:none",
            "best_constant": "no one",
            "differences": {**gate["differences"], versus("no one"): {"value": -0.01, "low": -0.05, "high": 0.03}},
        }
    )
    assert "Instead, no one is sent a message." in text and "against sending no one" in text
    assert gate_summary(settings, {"decision": "promote"}) is None  # a record without the figures


def test_the_run_page_sets_the_night_beside_the_previous_published_one(settings, nightly, tmp_path):
    from helpers import settings_in
    from jobs.ui import pages as ui

    local = settings_in(settings, tmp_path)
    summary = pd.read_parquet(partition_dir(settings, "audience_summary", RUN_DATE)).sort_values("recommended_arm")
    shutil.copytree(
        partition_dir(settings, "audience_summary", RUN_DATE), partition_dir(local, "audience_summary", RUN_DATE)
    )
    before, older = RUN_DATE - timedelta(days=2), RUN_DATE - timedelta(days=5)
    earlier = summary[summary["recommended_arm"] != "subject_3"].assign(
        sends=lambda f: f["sends"] // 2,
        expected_net_value=lambda f: f["expected_net_value"] / 2,
        policy="constant:subject_2",
    )
    for day, frame in ((before, earlier), (older, summary.assign(sends=summary["sends"] * 9))):
        partition_dir(local, "audience_summary", day).mkdir(parents=True)
        frame.to_parquet(partition_dir(local, "audience_summary", day) / "part-00000.parquet", index=False)
    previous = campaigns.previous_night(local, RUN_DATE)
    assert previous["run_date"] == before.isoformat()  # the latest published night before, not an older one
    assert previous["policy"] == {"tonight": summary["policy"].iloc[0], "before": "constant:subject_2"}
    assert campaigns.previous_night(local, older) is None
    context = ui.run_context(settings, RUN_DATE)
    context["run"]["previous"] = previous
    html = ui.templates.get_template("run.html").render(root="", user="viewer", **context)
    table = html.split('id="previous"')[1].split("</table>")[0]
    for row in summary.itertuples():
        shown = _cells(table, "data-arm", row.recommended_arm)
        was = earlier.set_index("recommended_arm").reindex([row.recommended_arm]).fillna(0).iloc[0]
        assert shown["sends"] == row.sends and shown["sends_before"] == was["sends"]
        assert shown["expected_net_value"] == pytest.approx(row.expected_net_value, abs=0.005)
        assert shown["expected_net_value_before"] == pytest.approx(was["expected_net_value"], abs=0.005)
    total = _cells(table, "data-arm", "total")
    assert total["sends"] == summary["sends"].sum() and total["sends_before"] == earlier["sends"].sum()
    assert f"on {before.isoformat()}" in _text(html.split('id="previous-policy"')[1].split("</p>")[0])
