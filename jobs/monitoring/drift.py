"""Drift: Evidently data-drift reports that compare like with like.

Every side is sampled to at most `drift.sample_rows` rows with a fixed seed, streaming the
Parquet files batch by batch, so memory stays flat whatever the table size (Evidently's
maintainers advise sampling; full large inputs take hours). Columns are compared by effect size
(normed Wasserstein distance for numbers, Jensen-Shannon distance for categories), which does not
grow with the sample: a night with no drift reads the same at any size. Comparisons per run:

- population: the user attributes of tonight's scoring set against those of the training set's most
  recent sends (the last attribution window of matured sends) to customers eligible tonight,
  weighted back to the eligible population: who the model scores against whom it learned from.
  History features are left out here: a send's are as of the send, a scoring row's as of tonight,
  and the campaigns' own cadence moves them;
- night over night: every feature of tonight's scoring set against the previous night's;
- predictions: the predicted uplift of every arm and the recommended-arm mix against the previous
  run's audience (when both are a model's).

A comparison reads `fail` when its drifted share reaches `drifted_share_fail` or one user attribute's
distance reaches `column_fail_score`, `warn` when its share reaches `drifted_share_warn` or a column drifted
(distance at or above Evidently's 0.1), else `ok`; the run's outcome is the worst, with the columns
named. On fail `on_fail` decides: fail the run, or block promotion. The summary also carries the
champion's realized-vs-predicted calibration (jobs.monitoring.results), monitored next to feature drift.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
from evidently import Report
from evidently.presets import DataDriftPreset

from jobs.data.lake import partition_dates, partition_dir, read_table, sample_parquet
from jobs.monitoring.results import calibration, calibration_slope
from jobs.names import (
    AUDIENCE,
    DRIFT_PAGE,
    DRIFT_REPORT,
    RESULTS_CALIBRATION,
    SCORING_SET,
    TRAINING_SET,
    is_constant_policy,
    uplift_column,
)
from jobs.settings import Settings, UserError, report_dir


def drifted_share(report: dict) -> tuple[float, dict[str, dict]]:
    """The share of drifted columns, and each column's test and score, from a snapshot's dict()."""
    share, per_column = None, {}
    for metric in report["metrics"]:
        name, value = metric["metric_name"], metric["value"]
        if name.startswith("DriftedColumnsCount"):
            share = float(value["share"])
        elif name.startswith("ValueDrift("):
            args = dict(part.split("=", 1) for part in name[len("ValueDrift(") : -1].split(","))
            per_column[args["column"]] = {
                "method": args.get("method"),
                "threshold": args.get("threshold"),
                "score": float(value),
            }
    if share is None:
        raise RuntimeError("Evidently report has no DriftedColumnsCount metric")
    return share, per_column


LEVELS = ("ok", "warn", "fail")


class DriftFailed(UserError, RuntimeError):
    """Drift reached drift.drifted_share_fail and drift.on_fail is fail_run."""


def drifted_columns(per_column: dict[str, dict]) -> list[str]:
    """The columns whose distance reached their threshold, most drifted first."""
    drifted = [c for c, v in per_column.items() if v["score"] >= float(v["threshold"] or 0.1)]
    return sorted(drifted, key=lambda c: -per_column[c]["score"])


def level(share: float, settings: Settings, per_column: dict[str, dict] | None = None) -> str:
    """ok, warn or fail of one comparison (see the module docstring). A column fails it alone only
    when it is a user attribute: history features move with the campaigns' own sends (a large send
    tonight changes tomorrow's send counts), so they warn, and fail only through the drifted share."""
    cfg, attributes = settings.drift, set(settings.features.attributes)
    scores = [v["score"] for c, v in (per_column or {}).items() if c in attributes]
    if share >= cfg.drifted_share_fail or any(s >= cfg.column_fail_score for s in scores):
        return "fail"
    if share >= cfg.drifted_share_warn or drifted_columns(per_column or {}):
        return "warn"
    return "ok"


def compare(reference: pd.DataFrame, current: pd.DataFrame) -> tuple:
    """Evidently data-drift snapshot of current vs reference, its drifted share and column scores."""
    preset = DataDriftPreset(num_method="wasserstein", cat_method="jensenshannon")
    snapshot = Report([preset]).run(current_data=current, reference_data=reference)
    share, per_column = drifted_share(snapshot.dict())
    return snapshot, share, per_column


def recent_sends(settings: Settings, run_date: date) -> pads.Expression | None:
    """The training rows of the last attribution window of matured sends (None: the training set has
    none that recent, e.g. a one-off campaign long ago; then all of it)."""
    window = settings.experiment.attribution_window_days
    since = pd.Timestamp(run_date - timedelta(days=2 * window - 1))
    path = partition_dir(settings, TRAINING_SET, run_date)
    recent = pads.field("sent_at") >= pa.scalar(since, type=pads.dataset(str(path)).schema.field("sent_at").type)
    return recent if pads.dataset(str(path)).count_rows(filter=recent) else None


def feature_drift(settings: Settings, run_date: date) -> list[dict]:
    """The population and night-over-night comparisons of run_date (see the module docstring).

    Population: both sides are sampled by the same hash of customer_id, and the recent sends keep
    the customers eligible tonight (in the scoring set), each send drawn again in proportion to the
    eligible customers it stands for (1 / inclusion_probability: an own audience's sends are the
    customers it selected, not a random draw). What is left differs only if the customers did."""
    cfg, spec = settings.drift, settings.features
    scoring = partition_dir(settings, SCORING_SET, run_date)
    training = partition_dir(settings, TRAINING_SET, run_date)
    attributes = list(spec.attributes)
    recent = recent_sends(settings, run_date)
    sizes = [pads.dataset(str(training)).count_rows(filter=recent), pads.dataset(str(scoring)).count_rows()]
    share = min(1.0, cfg.sample_rows / max(sizes)) if max(sizes) else 1.0
    read = [*attributes, "customer_id", "inclusion_probability"]
    reference = sample_parquet(training, read, cfg.sample_rows, cfg.seed, "customer_id", recent, share)
    current = sample_parquet(
        scoring, [*spec.names, "customer_id"], cfg.sample_rows, cfg.seed, "customer_id", None, share
    )
    eligible = reference[reference["customer_id"].isin(current["customer_id"])]
    reference = eligible if len(eligible) else reference  # no recent send to an eligible customer: all of them
    weights = 1.0 / reference["inclusion_probability"].to_numpy(float)
    if len(reference) and not (weights == weights[0]).all():
        draw = np.random.default_rng(cfg.seed).choice(len(reference), len(reference), p=weights / weights.sum())
        reference = reference.iloc[np.sort(draw)]
    comparisons = [_comparison("population", reference[attributes], current[attributes], settings)]
    earlier = [d for d in partition_dates(settings, SCORING_SET) if d < run_date]
    if earlier:
        previous = sample_parquet(
            partition_dir(settings, SCORING_SET, earlier[-1]), spec.names, cfg.sample_rows, cfg.seed
        )
        comparisons.append(_comparison("night_over_night", previous, current[spec.names], settings, earlier[-1]))
    return comparisons


def _comparison(name: str, reference: pd.DataFrame, current: pd.DataFrame, settings: Settings, previous=None) -> dict:
    snapshot, share, per_column = compare(reference, current)
    return {
        "name": name,
        "snapshot": snapshot,
        "drifted_share": share,
        "outcome": level(share, settings, per_column),
        "drifted_columns": drifted_columns(per_column),
        "column_drift_scores": per_column,
        "reference_rows": len(reference),
        "current_rows": len(current),
        **({"previous_run_date": previous.isoformat()} if previous else {}),
    }


def audience_policy(settings: Settings, run_date: date) -> str:
    """The policy an audience was published under: `model:<v>` or `constant:<arm>` (before the
    policy column existed, every audience was a model's)."""
    dataset = pads.dataset(str(partition_dir(settings, AUDIENCE, run_date)), format="parquet")
    if "policy" not in dataset.schema.names:
        return "model"
    first = dataset.head(1, columns=["policy"]).column("policy")
    return str(first[0].as_py()) if len(first) else "model"


def previous_audience(settings: Settings, run_date: date) -> date | None:
    """The latest run date before run_date that published an audience."""
    earlier = [day for day in partition_dates(settings, AUDIENCE) if day < run_date]
    return earlier[-1] if earlier else None


def prediction_drift(settings: Settings, run_date: date, previous: date) -> tuple:
    """Predicted uplift per arm and the recommended-arm mix of run_date against the previous run."""
    cfg = settings.drift
    columns = [uplift_column(arm) for arm in settings.experiment.arms] + ["recommended_arm"]
    samples = [
        sample_parquet(partition_dir(settings, AUDIENCE, day), columns, cfg.sample_rows, cfg.seed)
        for day in (previous, run_date)
    ]
    return compare(*samples)


def calibration_summary(settings: Settings, run_date: date) -> dict | None:
    """Realized vs predicted uplift by decile over the audiences of the last monitoring.window
    matured nights (jobs.monitoring.results), with the rank correlation of the two and the weighted slope of
    realized on predicted (jobs.monitoring.results.calibration_slope); None before any."""
    sums = read_table(settings, RESULTS_CALIBRATION)
    if sums.empty:
        return None
    days = sorted(set(sums["audience_date"]))[-settings.monitoring.window :]
    table = calibration(sums[sums["audience_date"].isin(days)])
    if table.empty:
        return None
    rank = table[["predicted", "realized"]].rank().corr().iloc[0, 1] if len(table) > 2 else None
    return {
        "audience_dates": [d.isoformat() for d in days],
        "rank_correlation": None if rank is None or pd.isna(rank) else round(float(rank), 3),
        "slope": calibration_slope(table),
        "deciles": table.round(5).to_dict(orient="records"),
    }


def drift(settings: Settings, run_date: date) -> dict:
    """Write the drift reports of run_date (HTML + drift.json); return or raise on the outcome.

    Outcome: the worst level of feature drift and prediction drift (ok < warn < fail). On fail,
    `drift.on_fail: fail_run` fails the step (after the reports are written);
    `block_promotion` lets the run finish, the gate having refused promotion already.
    """
    cfg = settings.drift
    folder = report_dir(settings, run_date)
    folder.mkdir(parents=True, exist_ok=True)
    comparisons = feature_drift(settings, run_date)
    payload = {}
    for c in comparisons:
        c["snapshot"].save_html(str(folder / (DRIFT_PAGE if c["name"] == "population" else f"drift_{c['name']}.html")))
        payload[c["name"]] = c.pop("snapshot").dict()
    levels = [c["outcome"] for c in comparisons]
    previous, predictions = _prediction_check(settings, run_date, folder, payload, levels)
    share = max(c["drifted_share"] for c in comparisons)
    drifted = sorted({col for c in comparisons if c["outcome"] != "ok" for col in c["drifted_columns"]})
    outcome = max(levels, key=LEVELS.index)
    summary = {
        "run_date": run_date.isoformat(),
        "outcome": outcome,
        "drifted_share": share,
        "drifted_columns": drifted,
        "threshold_warn": cfg.drifted_share_warn,
        "threshold_fail": cfg.drifted_share_fail,
        "column_fail_score": cfg.column_fail_score,
        "on_fail": cfg.on_fail,
        "reference_rows": comparisons[0]["reference_rows"],
        "current_rows": comparisons[0]["current_rows"],
        "column_drift_scores": comparisons[0]["column_drift_scores"],
        "comparisons": comparisons,
        "predictions": predictions,
        "calibration": calibration_summary(settings, run_date),
    }
    (folder / DRIFT_REPORT).write_text(json.dumps({"summary": summary, "evidently": payload}, indent=2, default=str))
    if outcome == "fail" and cfg.on_fail == "fail_run":
        raise DriftFailed(_failure(settings, run_date, comparisons, previous, predictions, folder))
    return {
        "outcome": outcome,
        "drifted_share": share,
        "predictions": predictions and predictions.get("drifted_share"),
        "drifted_columns": drifted,
        "reference_rows": summary["reference_rows"],
        "current_rows": summary["current_rows"],
        "html": str(folder / DRIFT_PAGE),
    }


def _prediction_check(settings: Settings, run_date: date, folder, payload: dict, levels: list[str]):
    """(previous run date compared, its summary): tonight's predicted uplifts against the previous
    audience's, its report written and its level appended to levels; (None, None or why skipped)."""
    previous = previous_audience(settings, run_date)
    if previous is None:
        return None, None
    # A constant policy's uplifts are one value per arm: comparing them with a model's (or with
    # each other) measures the switch of policy, not drift.
    policies = [audience_policy(settings, day) for day in (previous, run_date)]
    if any(is_constant_policy(p) for p in policies):
        return None, {"previous_run_date": previous.isoformat(), "skipped": f"policies {policies}: not comparable"}
    p_snapshot, p_share, p_columns = prediction_drift(settings, run_date, previous)
    p_snapshot.save_html(str(folder / "drift_predictions.html"))
    payload["predictions"] = p_snapshot.dict()
    levels.append(level(p_share, settings))
    return previous, {
        "previous_run_date": previous.isoformat(),
        "drifted_share": p_share,
        "outcome": levels[-1],
        "column_drift_scores": p_columns,
    }


def _failure(settings: Settings, run_date: date, comparisons, previous, predictions, folder) -> str:
    """The message of a failed drift check: each failed comparison's share and columns."""
    cfg = settings.drift
    return (
        f"drift outcome 'fail' for run_date={run_date}: "
        + "; ".join(
            f"{c['name']} drifted share {c['drifted_share']:.2f}, columns "
            + ", ".join(f"{col} {c['column_drift_scores'][col]['score']:.3f}" for col in c["drifted_columns"])
            for c in comparisons
            if c["outcome"] == "fail"
        )
        + (f"; predictions vs {previous} {predictions['drifted_share']:.2f}" if previous else "")
        + f" (fail at share {cfg.drifted_share_fail} or a column at {cfg.column_fail_score}); reports: "
        f"{folder / DRIFT_PAGE}, {folder / DRIFT_REPORT}"
    )
