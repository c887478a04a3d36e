"""The Campaigns page inside the Airflow UI: an Airflow 3 plugin (a FastAPI app and a navigation entry).

Registered through the package's `airflow.plugins` entry point (`jobs.ui.plugin`), the app
is mounted by the API server under `/campaigns` and shown in the UI's navigation as **Campaigns** (an external view
embedded in the UI). It reads what the nightly published (`jobs.ui.campaigns`): it never starts
Spark and never loads a whole audience.

A plugin app does not inherit Airflow's authentication, so every route depends on
`campaign_viewer`: the user of the request's Airflow token (the UI's `_token` cookie, or an
`Authorization: Bearer` header), resolved by Airflow's own `get_user` (no token: 401, a token
Airflow did not sign: 403), then the auth manager's custom-view check for the `Campaigns`
resource (403 when refused). Every route is a GET: the page changes nothing.
"""

from __future__ import annotations

import tempfile
from datetime import date
from html import escape
from pathlib import Path
from typing import Annotated

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.background import BackgroundTask

from jobs.data.lake import MissingInputError
from jobs.names import CALIBRATION_PLOT, DRIFT_PAGE
from jobs.settings import load_settings, report_dir
from jobs.targeting import queries
from jobs.ui import campaigns, formats
from jobs.ui.chart import curve_chart

RESOURCE = "Campaigns"  # the custom view's resource name for the auth manager
REPORT_FILES = {  # report files a page links to, by name (nothing else under reports is served)
    "budget_curve.png": "image/png",
    DRIFT_PAGE: "text/html",
    "drift_predictions.html": "text/html",
}
RUN_ARTIFACTS = {
    "qini_and_deciles.png": "qini_and_deciles.png",
    "uplift_drivers.png": "drivers/uplift_drivers.png",
    CALIBRATION_PLOT: CALIBRATION_PLOT,
}

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
templates.filters.update(formats.FILTERS)
UNITS = ("sends", "money")  # a budget in customers selected (max_sends) or in money (max_spend)
LIMITS = {"max_increase_per_send", "max_uplift"}  # a guardrail's limits, as the gate's record names them


def campaign_viewer(user: GetUserDep) -> str:
    """The logged-in Airflow user allowed to see the Campaigns view (401 / 403 otherwise); their name."""
    if not get_auth_manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE, user=user):
        raise HTTPException(status_code=403, detail=f"user {user.get_name()} may not view {RESOURCE}")
    return user.get_name()


Viewer = Annotated[str, Depends(campaign_viewer)]
app = FastAPI(title="Campaigns", dependencies=[Depends(campaign_viewer)])


def _page(request: Request, template: str, user: str, **context) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    html = templates.get_template(template).render(root=root, user=user, **context)
    return HTMLResponse(html)


def _day(run_date: str) -> date:
    try:
        return date.fromisoformat(run_date)
    except ValueError:
        raise HTTPException(status_code=404, detail=f"not a run date: {run_date!r} (YYYY-MM-DD)") from None


@app.exception_handler(MissingInputError)
async def _missing(request: Request, err: MissingInputError) -> HTMLResponse:
    return HTMLResponse(f"<p>Not published: {escape(str(err))}</p>", status_code=404)


@app.exception_handler(ValueError)
async def _bad_value(request: Request, err: ValueError) -> HTMLResponse:
    return HTMLResponse(f"<p>{escape(str(err))}</p>", status_code=400)  # err may quote the request


@app.get("/", response_class=HTMLResponse)
def runs_page(request: Request, user: Viewer) -> HTMLResponse:
    return _page(request, "runs.html", user, runs=campaigns.runs(load_settings()))


@app.get("/results", response_class=HTMLResponse)
def results_page(request: Request, user: Viewer) -> HTMLResponse:
    from jobs.monitoring.results import view

    settings = load_settings()
    return _page(
        request,
        "results.html",
        user,
        data=view(settings),
        monitoring=campaigns.latest_monitoring(settings),
        guardrails=[o for o, g in settings.targeting.guardrails.items() if g.max_increase_per_send is not None],
        recompute_days=settings.monitoring.recompute_days,
        window_days=settings.experiment.attribution_window_days,
    )


@app.get("/results/{chart}.png")
def results_chart(user: Viewer, chart: str) -> Response:
    from jobs.monitoring.results import chart as draw

    if chart not in ("trend", "calibration"):
        raise HTTPException(status_code=404, detail=f"no chart {chart}")
    return Response(draw(load_settings(), chart), media_type="image/png")


@app.get("/runs/{run_date}", response_class=HTMLResponse)
def run_page(
    request: Request, user: Viewer, run_date: str, budget: float | None = None, unit: str | None = None
) -> HTMLResponse:
    return _page(request, "run.html", user, **run_context(load_settings(), _day(run_date), budget, unit))


@app.get("/runs/{run_date}/budget", response_class=HTMLResponse)
def budget_answer(
    request: Request, user: Viewer, run_date: str, budget: float | None = None, unit: str | None = None
) -> HTMLResponse:
    """The budget control's answer alone (the run page's script puts it in place, no reload)."""
    settings, day = load_settings(), _day(run_date)
    curve = campaigns.budget_curve(settings, day)
    context = budget_context(settings, day, curve, budget, unit)
    return _page(request, "budget.html", user, chart=curve_chart(curve), **context)


def run_context(settings, day: date, budget: float | None = None, unit: str | None = None) -> dict:
    """What the run page shows for day: the night (campaigns.run), its curve's chart and the budget's what-if."""
    run = campaigns.run(settings, day)
    room = 1 - settings.targeting.exploration_share  # the ranking's share of a budget (policy.within_budget)
    everything = queries.ranking_spend(settings, day, [run["customers"]])[0]
    return {
        "run": run,
        "arms": settings.experiment.arms,
        "chart": curve_chart(run["curve"]),
        "scored": run["customers"],
        "most_spend": round(everything / room + 0.005, 2),  # the money budget that selects every recommended
        **budget_context(settings, day, run["curve"], budget, unit),
    }


def budget_context(settings, day: date, curve: list[dict], budget: float | None, unit: str | None) -> dict:
    """The policy's selection under a budget in sends or money (settings' own budget when none is given),
    with the curve's holdout estimate at its sends."""
    targeting = settings.targeting
    unit = unit or ("money" if targeting.max_spend is not None and targeting.max_sends is None else "sends")
    if unit not in UNITS:
        raise ValueError(f"unknown budget unit {unit!r}: {' or '.join(UNITS)}")
    if budget is None:
        budget = targeting.max_spend if unit == "money" else targeting.max_sends
    if budget is None:
        chosen = queries.budget(settings, day)
    elif unit == "money":
        chosen = queries.budget(settings, day, max_spend=max(0.0, float(budget)))
    else:
        chosen = queries.budget(settings, day, max_sends=max(0, int(budget)))
    room = 1 - targeting.exploration_share
    return {
        "budget": chosen,
        "unit": unit,
        # the budgets in either unit that select the same customers: the control keeps them when its unit changes
        "same_as": {"sends": int(-(-chosen["customers"] // room)), "money": round(chosen["spend"] / room + 0.005, 2)},
        "curve_at": _curve_at(curve, chosen["customers"] * (1 - targeting.holdout_share)),
        "holdout_share": targeting.holdout_share,
    }


def _curve_at(curve: list[dict], sends: float) -> dict | None:
    """The budget curve's holdout estimate at `sends`, linearly between its points (its last point past its end)."""
    if not curve:
        return None
    if sends >= curve[-1]["sends"]:  # the policy sends no more than its recommendations
        return dict(curve[-1])
    for lo, hi in zip(curve, curve[1:], strict=False):
        if lo["sends"] <= sends <= hi["sends"]:
            w = 0.0 if hi["sends"] == lo["sends"] else (sends - lo["sends"]) / (hi["sends"] - lo["sends"])
            return {k: lo[k] + w * (hi[k] - lo[k]) for k in lo}
    return dict(curve[0])


@app.get("/runs/{run_date}/segments", response_class=HTMLResponse)
def segments_page(request: Request, user: Viewer, run_date: str, arm: str | None = None) -> HTMLResponse:
    settings, day = load_settings(), _day(run_date)
    arm = arm or settings.experiment.arms[0]
    options = campaigns.segment_options(settings, day)
    picks = {k: v for k, v in request.query_params.items() if k in options and v != ""}
    result = campaigns.segment(settings, day, picks, arm)
    by_effect = campaigns.segments_by_effect(settings, day)
    return _page(
        request,
        "segments.html",
        user,
        run_date=day.isoformat(),
        arms=settings.experiment.arms,
        arm=arm,
        options=options,
        picks=picks,
        result=result,
        by_effect=by_effect,
        guardrails={o: g.model_dump(include=LIMITS) for o, g in settings.targeting.guardrails.items()},
    )


@app.get("/runs/{run_date}/why", response_class=HTMLResponse)
def why_page(request: Request, user: Viewer, run_date: str) -> HTMLResponse:
    settings, day = load_settings(), _day(run_date)
    return _page(
        request,
        "why.html",
        user,
        run_date=day.isoformat(),
        drivers=campaigns.drivers(settings, day),
        learner=campaigns.learner(settings, day),
        calibration_plot=CALIBRATION_PLOT,
    )


@app.get("/runs/{run_date}/download/{arm}.csv")
def download(user: Viewer, run_date: str, arm: str) -> FileResponse:
    """The arm's send list, written by the same function as `uplift audience export`."""
    from jobs.targeting.audience import export_csv

    settings, day = load_settings(), _day(run_date)
    folder = tempfile.mkdtemp(prefix="campaigns-export-")
    target = Path(folder) / f"audience-{day}-{arm}.csv"
    export_csv(settings, day, arm, target)
    return FileResponse(
        target,
        media_type="text/csv",
        filename=target.name,
        background=BackgroundTask(lambda: (target.unlink(missing_ok=True), Path(folder).rmdir())),
    )


@app.get("/runs/{run_date}/files/{name}")
def report_file(user: Viewer, run_date: str, name: str) -> FileResponse:
    if name not in REPORT_FILES:
        raise HTTPException(status_code=404, detail=f"no such report: {name}")
    path = report_dir(load_settings(), _day(run_date)) / name
    if not path.exists():
        raise HTTPException(status_code=404, detail=f"{name} was not written for {run_date}")
    return FileResponse(path, media_type=REPORT_FILES[name])


@app.get("/runs/{run_date}/artifacts/{name}")
def run_artifact(user: Viewer, run_date: str, name: str) -> Response:
    """A picture logged with the training run behind the audience (MLflow artifacts)."""
    if name not in RUN_ARTIFACTS:
        raise HTTPException(status_code=404, detail=f"no such artifact: {name}")
    settings = load_settings()
    run_id, _ = campaigns.training_run(settings, _day(run_date))
    content = campaigns.artifact(settings, run_id, RUN_ARTIFACTS[name])
    if content is None:
        raise HTTPException(status_code=404, detail=f"{name} is not logged on run {run_id}")
    return Response(content, media_type="image/png")


ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2"><path d="M3 11l18-8-8 18-2-8-8-2z"/></svg>'
)


@app.get("/icon.svg", include_in_schema=False)
def icon(user: Viewer) -> Response:
    return Response(ICON, media_type="image/svg+xml")
