"""What the campaign page shows, read from the published lake and reports, without Spark.

Every number comes from what the nightly published: the audience and its summary (Parquet),
the step records, gate.json (policy values and the per-arm breakdown with intervals), the
budget curve, the drift records and, for the uplift drivers and the Qini picture, the
training run's MLflow artifacts. Tables are queried with DuckDB over the Parquet files
(aggregates, filters and window functions run in DuckDB; only their results reach Python),
so a page never loads a whole audience into memory.

The segments and the budget what-if are jobs.targeting.queries, the queries `uplift audience
what-if` runs too. The gate's decision is told in a campaign manager's words (jobs.ui.decision),
and a night is set beside the previous published one (`previous_night`).
"""

from __future__ import annotations

import json
import math
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads

from jobs.data.lake import dated_folders, partition_dates, partition_dir
from jobs.names import (
    AUDIENCE,
    AUDIENCE_SUMMARY,
    BUDGET_CURVE,
    DRIFT_PAGE,
    DRIFT_REPORT,
    FAILURE_NOTE,
    GATE_REPORT,
    RESULTS,
    SELECTION_ARTIFACT,
    of_outcome,
    policy_model_version,
    uplift_column,
)
from jobs.settings import Settings, report_dir
from jobs.targeting.queries import (
    band_labels,
    check_segment,
    files,
    guardrail_figures,
    guardrail_increases,
    query,
    ranking_spend,
    segment_base,
    segment_columns,
    segment_rates,
    where_clause,
)
from jobs.ui.decision import gate_summary

MAX_LEVELS_SHOWN = 50  # values of a categorical attribute offered on the segment page


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_dates(settings: Settings) -> list[date]:
    """Run dates with a published audience, newest first."""
    return sorted(partition_dates(settings, AUDIENCE_SUMMARY), reverse=True)


def _summary(settings: Settings, run_date: date) -> pd.DataFrame:
    return (
        query("SELECT * FROM read_parquet(?)", [files(settings, "audience_summary", run_date)])
        .sort_values("recommended_arm")
        .reset_index(drop=True)
    )


def latest_monitoring(settings: Settings) -> dict | None:
    """The latest night's monitoring assessment of the champion (monitoring.json), with its run date."""
    reports = (
        sorted(settings.paths.reports.glob("run_date=*/monitoring.json")) if settings.paths.reports.exists() else []
    )
    if not reports:
        return None
    return {**_json(reports[-1]), "run_date": reports[-1].parent.name.split("=", 1)[1]}


def runs(settings: Settings) -> list[dict]:
    """One line per night, newest first: a published night's gate decision, policy, drift, customers
    scored, sends, spend, expected value and, once its sends matured, the realized incremental
    responses (results); a night that did not publish, with its state and reason (failed: the failing
    step's one line; running or late: started but not published; missing: no run between two runs)."""
    from jobs.data.lake import read_table

    realized = read_table(settings, RESULTS)
    if not realized.empty:
        realized = (
            realized[realized["arm"] == "all"]
            .groupby("audience_date")
            .agg(
                incremental=("incremental", "sum"),
                low=("incremental_low", "sum"),
                high=("incremental_high", "sum"),
                net_value=("net_value", "sum"),
            )
        )
    published = set(run_dates(settings))
    reported = {day for day, _ in dated_folders(settings.paths.reports)}
    every = published | reported
    days = sorted({*every, *_gaps(every)}, reverse=True)
    out = []
    for run_date in days:
        if run_date not in published:
            out.append(_unpublished(settings, run_date, run_date in reported))
            continue
        steps = report_dir(settings, run_date) / "steps"
        gate, score, drift = (_json(steps / f"{s}.json") for s in ("gate", "score", "drift"))
        summary = _summary(settings, run_date)
        got = realized.loc[run_date] if not realized.empty and run_date in realized.index else None
        out.append(
            {
                "run_date": run_date.isoformat(),
                "state": "published",
                "decision": gate.get("decision"),
                "policy": score.get("policy") or (summary["policy"].iloc[0] if len(summary) else None),
                "drift": drift.get("outcome"),
                "customers": score.get("rows")
                or pads.dataset(str(partition_dir(settings, AUDIENCE, run_date))).count_rows(),
                "selected": int(summary["customers"].sum()),
                "sends": int(summary["sends"].sum()),
                "spend": float(summary["spend"].sum()),
                "expected_incremental_responses": float(summary["expected_incremental_responses"].sum()),
                "expected_net_value": float(summary["expected_net_value"].sum()),
                "realized": None
                if got is None or pd.isna(got["incremental"])
                else {k: float(got[k]) for k in ("incremental", "low", "high", "net_value")},
                # An audience is measured once its sends' window matured: the night after the send, plus the window.
                "realized_note": "not matured"
                if run_date + timedelta(days=settings.experiment.attribution_window_days + 1) > max(days)
                else "no sends measured",
            }
        )
    return out


def budget_curve(settings: Settings, run_date: date) -> list[dict]:
    """The gate's budget curve of the night's policy (the file `uplift audience show` reads for its peak),
    each point with what its sends cost from tonight's ranking (`spend`) and the budget in sends that
    selects them (`budget`)."""
    path = report_dir(settings, run_date) / f"{BUDGET_CURVE}.csv"
    curve = pd.read_csv(path).to_dict(orient="records") if path.exists() else []
    # the budget (max_sends: the fresh holdout and the exploration share counted) that sends a point's sends
    share = (1 - settings.targeting.holdout_share) * (1 - settings.targeting.exploration_share)
    for point, spend in zip(curve, ranking_spend(settings, run_date, [int(p["sends"]) for p in curve]), strict=True):
        point.update(spend=spend, budget=math.ceil(point["sends"] / share))
    return curve


def _gaps(days: set[date]) -> list[date]:
    """The dates between the first and the last night that have no trace of a run."""
    if not days:
        return []
    first, last = min(days), max(days)
    return [first + timedelta(days=k) for k in range((last - first).days) if first + timedelta(days=k) not in days]


def _unpublished(settings: Settings, run_date: date, reported: bool) -> dict:
    folder = report_dir(settings, run_date)
    failure = folder / FAILURE_NOTE
    if failure.exists():
        state, reason = "failed", failure.read_text().strip()
    elif reported:
        done = sorted(p.stem for p in (folder / "steps").glob("*.json")) if (folder / "steps").exists() else []
        state, reason = "not published", f"steps done: {', '.join(done) or 'none'}; no audience yet (running or late)"
    else:
        state, reason = "missing", "no run for this date: trigger it (or a backfill) in Airflow"
    return {"run_date": run_date.isoformat(), "state": state, "reason": reason}


def run(settings: Settings, run_date: date, top: int = 10) -> dict:
    """One run: per-arm table (with the gate's holdout intervals), budget curve, gate, drift, top customers."""
    folder = report_dir(settings, run_date)
    summary = _summary(settings, run_date)
    gate = _json(folder / GATE_REPORT)
    intervals = gate.get("deployed_arms", {})
    arms = []
    for row in summary.to_dict(orient="records"):
        estimate = intervals.get(row["recommended_arm"], {})
        arms.append({**row, "holdout_estimate": estimate or None, "guardrails": _arm_guardrails(settings, row)})
    curve = budget_curve(settings, run_date)
    audience = files(settings, "audience", run_date)
    best = query(
        "SELECT rank, customer_id, recommended_arm, expected_uplift, expected_net_value, holdout "
        "FROM read_parquet(?) WHERE rank <= ? ORDER BY rank",
        [audience, top],
    )
    scored = query("SELECT count(*) AS n, any_value(policy) AS policy FROM read_parquet(?)", [audience]).iloc[0]
    drift = _json(folder / "steps" / DRIFT_REPORT)
    return {
        "run_date": run_date.isoformat(),
        "customers": int(scored["n"]),
        "policy": scored["policy"],
        "arms": arms,
        "totals": {
            k: float(summary[k].sum())
            for k in (
                "customers",
                "sends",
                "holdout",
                "explore",
                "expected_incremental_responses",
                "expected_net_value",
                "spend",
            )
        },
        # the further outcomes' expected increments per arm (the audience summary's columns)
        "outcome_totals": {o: of_outcome("expected_incremental", o) for o in settings.targeting.outcomes},
        "curve": curve,
        "peak": max(curve, key=lambda p: p["net_value"]) if curve else None,
        "max_sends": settings.targeting.max_sends,
        "max_spend": settings.targeting.max_spend,
        "holdout_share": settings.targeting.holdout_share,
        "gate": {
            k: gate.get(k) for k in ("decision", "reasons", "deployed_policy", "policy_values", "run_id", "guardrails")
        },
        "summary": gate_summary(settings, gate),
        "previous": previous_night(settings, run_date),
        "drift": {
            "outcome": drift.get("outcome"),
            "drifted_share": drift.get("drifted_share"),
            "reports": [p.name for p in (folder / DRIFT_PAGE, folder / "drift_predictions.html") if p.exists()],
        },
        "top": best.to_dict(orient="records"),
    }


def _arm_guardrails(settings: Settings, row: dict) -> dict[str, dict]:
    """A summary row's guardrail outcomes: the increase expected over its sends, per send, and the limits above."""
    totals = {o: row.get(of_outcome("expected_incremental", o)) for o in settings.targeting.guardrails}
    present = {o: v for o, v in totals.items() if v is not None and not pd.isna(v)}
    per_send = guardrail_figures(settings, {o: v / row["sends"] if row["sends"] else 0.0 for o, v in present.items()})
    return {o: {"increase": float(present[o]), **figures} for o, figures in per_send.items()}


def previous_night(settings: Settings, run_date: date) -> dict | None:
    """The latest published night before run_date, arm by arm beside run_date: sends, expected value, policy."""
    earlier = [d for d in run_dates(settings) if d < run_date]
    if not earlier:
        return None
    day = max(earlier)
    tonight, before = _summary(settings, run_date), _summary(settings, day)
    fields = ["sends", "spend", "expected_incremental_responses", "expected_net_value"]
    arms = sorted(set(tonight["recommended_arm"]) | set(before["recommended_arm"]))

    def by_arm(frame: pd.DataFrame) -> dict:
        rows = frame.set_index("recommended_arm")[fields]
        return {a: rows.loc[a].to_dict() if a in rows.index else dict.fromkeys(fields, 0) for a in arms}

    def policy(frame: pd.DataFrame) -> str | None:
        return frame["policy"].iloc[0] if len(frame) else None

    return {
        "run_date": day.isoformat(),
        "policy": {"tonight": policy(tonight), "before": policy(before)},
        "arms": {a: {"tonight": by_arm(tonight)[a], "before": by_arm(before)[a]} for a in arms},
        "total": {"tonight": tonight[fields].sum().to_dict(), "before": before[fields].sum().to_dict()},
    }


def segment_options(settings: Settings, run_date: date) -> dict[str, list[str]]:
    """The values a campaign manager can pick, per segment column (from the feature spec)."""
    options = {}
    path = files(settings, "features/scoring", run_date)
    for name, sql in segment_columns(settings).items():
        if name.endswith("_band") and name[: -len("_band")] in settings.features.segments():
            options[name] = band_labels(settings.features.segments()[name[: -len("_band")]])
            continue
        values = query(
            f"SELECT DISTINCT CAST({sql} AS VARCHAR) AS v FROM read_parquet(?) WHERE {sql} IS NOT NULL "
            f"ORDER BY v LIMIT {MAX_LEVELS_SHOWN}",
            [path],
        )
        options[name] = values["v"].tolist()
    return options


def segment(settings: Settings, run_date: date, picks: dict[str, str], arm: str) -> dict:
    """A segment's expected response rate with and without arm (what `uplift audience what-if` prints
    for `where_clause(picks)`), and the share of it recommended the arm and sent it."""
    check_segment(settings, picks, arm)
    conditions = " AND ".join(f'CAST("{name}" AS VARCHAR) = ?' for name in picks) or "true"
    out = segment_rates(settings, run_date, arm, conditions, list(picks.values()))
    return {**out, "where": where_clause(picks), "picks": picks}


def segments_by_effect(settings: Settings, run_date: date, min_customers: int = 30) -> dict[str, list[dict]]:
    """Per arm, every one-column segment (attribute = value) with the arm's expected uplift there; harmed first.

    One pass over the segment base for every column and arm (GROUPING SETS).
    """
    columns, arms = list(segment_columns(settings)), settings.experiment.arms
    if not columns:
        return {arm: [] for arm in arms}
    base, params = segment_base(settings, run_date)
    guarded = {arm: guardrail_increases(settings, arm, run_date) for arm in arms}
    measures = ", ".join(
        f'avg("p_{arm}" - p_control) AS "uplift_{arm}", '
        f"avg(CASE WHEN recommended_arm = '{arm}' THEN 1.0 ELSE 0.0 END) AS \"share_{arm}\""
        + "".join(f', avg("{column}") AS "{column}"' for column in guarded[arm].values())
        for arm in arms
    )
    which = ", ".join(f'GROUPING("{c}") AS "g_{c}"' for c in columns)
    frame = query(
        f"""
        SELECT {", ".join(f'CAST("{c}" AS VARCHAR) AS "v_{c}"' for c in columns)}, {which},
               count(*) AS customers, {measures}
        FROM ({base})
        GROUP BY GROUPING SETS ({", ".join(f'("{c}")' for c in columns)})
        HAVING count(*) >= ?
        """,
        [*params, min_customers],
    )
    out = {}
    for arm in arms:
        rows = []
        for r in frame.to_dict(orient="records"):
            column = next(c for c in columns if r[f"g_{c}"] == 0)
            if r[f"v_{column}"] is None or pd.isna(r[uplift_column(arm)]):
                continue  # the missing values of a column; a constant audience has no per-customer rates
            rows.append(
                {
                    "column": column,
                    "value": r[f"v_{column}"],
                    "customers": int(r["customers"]),
                    "expected_uplift": float(r[uplift_column(arm)]),
                    "recommended_share": float(r[f"share_{arm}"]),
                    "expected_incremental_responses": float(r[uplift_column(arm)]) * int(r["customers"]),
                    "harmed": bool(r[uplift_column(arm)] < 0),
                    "guardrails": guardrail_figures(settings, {o: r[c] for o, c in guarded[arm].items()}),
                }
            )
        out[arm] = sorted(rows, key=lambda r: (not r["harmed"], r["expected_uplift"] * (1 if r["harmed"] else -1)))
    return out


@lru_cache(maxsize=32)
def _artifact(tracking_uri: str, run_id: str, path: str) -> bytes | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        local = client.download_artifacts(run_id, path)
    except Exception:  # the run or the artifact is not there: the page says so
        return None
    return Path(local).read_bytes()


def training_run(settings: Settings, run_date: date) -> tuple[str | None, str]:
    """The MLflow run whose model the audience used (its policy `model:<v>`), else tonight's challenger."""
    policy = (_json(report_dir(settings, run_date) / "steps" / "score.json")).get("policy") or ""
    if policy_model_version(policy) is not None:
        import mlflow

        uri = settings.mlflow.tracking_uri
        version = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(
            settings.mlflow.registered_model, policy_model_version(policy)
        )
        return version.run_id, f"the deployed model v{version.version}"
    run_id = _json(report_dir(settings, run_date) / GATE_REPORT).get("run_id")
    return run_id, "tonight's challenger (not deployed: the audience is a constant policy)"


def artifact(settings: Settings, run_id: str | None, path: str) -> bytes | None:
    return _artifact(settings.mlflow.tracking_uri, run_id, path) if run_id else None


def drivers(settings: Settings, run_date: date) -> dict:
    """The uplift drivers (jobs.model.drivers) of the model behind run_date's audience."""
    from jobs.model.drivers import DRIVERS_DIR, SUMMARY

    run_id, whose = training_run(settings, run_date)
    raw = artifact(settings, run_id, f"{DRIVERS_DIR}/{SUMMARY}")
    return {"run_id": run_id, "whose": whose, **(json.loads(raw) if raw else {"arms": {}})}


def learner(settings: Settings, run_date: date) -> dict:
    """Which learner made the model behind run_date's audience: jobs.model.selection's record (every
    candidate's value on the selection rows, the calibration of each arm), {} for a model without one."""
    run_id, _ = training_run(settings, run_date)
    raw = artifact(settings, run_id, SELECTION_ARTIFACT)
    return json.loads(raw) if raw else {}
