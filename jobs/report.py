"""What a run produced and where: the short tour printed by `uplift summary` and `make demo`."""

from __future__ import annotations

import json
from datetime import date

from jobs.audience import show
from jobs.lake import partition_dir
from jobs.registry import status
from jobs.settings import Settings
from jobs.validate import report_dir


def run_summary(settings: Settings, run_date: date) -> str:
    """The audience summary, then where every output of run_date is and how to open it."""
    audience = partition_dir(settings, "audience", run_date)
    reports = report_dir(settings, run_date)
    gate = json.loads((reports / "gate.json").read_text()) if (reports / "gate.json").exists() else {}
    drift = json.loads((reports / "drift.json").read_text())["summary"] if (reports / "drift.json").exists() else {}
    models = status(settings)
    champion = models["champion"] or {}
    lines = [
        f"Uplift run {run_date}",
        "",
        show(settings, run_date, top=5),
        "",
        f"Audience table   {audience}",
        f"                 Spark SQL: SELECT * FROM parquet.`{settings.paths.lake / 'audience'}`"
        f" WHERE run_date = '{run_date}'",
        f"Gate decision    {gate.get('decision', 'n/a')}: {'; '.join(gate.get('reasons', []))}",
        f"Champion model   {settings.mlflow.registered_model} v{champion.get('version')} "
        f"(trained for {champion.get('run_date')}), previous: {(models['previous'] or {}).get('version')}",
        f"MLflow           mlflow ui --backend-store-uri {settings.mlflow.tracking_uri}",
        f"Validation       {reports / 'validation'} (Data Docs: {reports / 'validation' / 'data_docs' / 'index.html'})",
        f"Drift report     {reports / 'drift.html'} (outcome {drift.get('outcome', 'n/a')}, "
        f"drifted share {drift.get('drifted_share', float('nan')):.2f})",
    ]
    return "\n".join(lines)
