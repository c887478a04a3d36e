"""Drift: an Evidently data-drift report of the scoring set against the training reference.

Both sides are sampled to at most `drift.sample_rows` rows with a fixed seed, streaming the
Parquet files batch by batch, so memory stays flat whatever the table size (Evidently's
maintainers advise sampling; full large inputs take hours). The outcome is `ok`, or `warn`
when the share of drifted features reaches `drift.drifted_share_warn`.
"""

from __future__ import annotations

import json
from datetime import date

from evidently import Report
from evidently.presets import DataDriftPreset

from jobs.etl import FEATURES
from jobs.lake import partition_dir, sample_parquet
from jobs.settings import Settings
from jobs.validate import report_dir

# weekday is the same for every scoring row by construction: comparing it says nothing.
DRIFT_FEATURES = [f for f in FEATURES if f != "weekday"]


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


def drift(settings: Settings, run_date: date) -> dict:
    """Write drift.html and drift.json for run_date; return the outcome."""
    cfg = settings.drift
    reference = sample_parquet(
        partition_dir(settings, "features/training", run_date), DRIFT_FEATURES, cfg.sample_rows, cfg.seed
    )
    current = sample_parquet(
        partition_dir(settings, "features/scoring", run_date), DRIFT_FEATURES, cfg.sample_rows, cfg.seed
    )
    snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
    folder = report_dir(settings, run_date)
    folder.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(folder / "drift.html"))
    payload = snapshot.dict()
    share, per_column = drifted_share(payload)
    outcome = "warn" if share >= cfg.drifted_share_warn else "ok"
    summary = {
        "run_date": run_date.isoformat(),
        "outcome": outcome,
        "drifted_share": share,
        "threshold_warn": cfg.drifted_share_warn,
        "reference_rows": len(reference),
        "current_rows": len(current),
        "column_drift_scores": per_column,
    }
    (folder / "drift.json").write_text(json.dumps({"summary": summary, "evidently": payload}, indent=2, default=str))
    return {**{k: summary[k] for k in ("outcome", "drifted_share")}, "html": str(folder / "drift.html")}
