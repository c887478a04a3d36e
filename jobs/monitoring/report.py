"""What a run produced and where.

- `run_report`: the per-run report of the `report` step (last task of the nightly DAG): rows
  in and out and wall time of every step, arm shares of the audience, Qini, gate decision,
  drift outcome and model versions; written next to the run's other reports, logged to the
  run date's MLflow training run, and printed as a table in the task log.
- `run_summary`: the short tour printed by `uplift summary` and `make demo`.
"""

from __future__ import annotations

import json
import time
from datetime import date

from jobs.data.lake import partition_dir
from jobs.model.registry import status
from jobs.names import AUDIENCE, DRIFT_REPORT, EXPORT_STEP, GATE_REPORT, STEPS, arm_metric
from jobs.settings import Settings, report_dir
from jobs.targeting.audience import show


def _rows(step: str, result: dict) -> tuple[int | None, int | None]:
    """(rows in, rows out) of a step, from the summary it returned."""
    if step == "validate-raw":
        delivered = sum(result["delivered_rows"].values())
        return delivered, delivered
    if step == "etl":
        return result["raw_sends_rows"] + result["raw_responses_rows"], result["training_rows"] + result["scoring_rows"]
    if step == "validate-features":
        checked = result["training_rows"] + result["scoring_rows"]
        return checked, checked
    if step == "train":
        return result["train_rows"] + result["holdout_rows"], None
    if step == "score":
        return result["rows"], result["rows"]
    if step == "drift":
        return result["reference_rows"] + result["current_rows"], None
    return None, None


def run_report(settings: Settings, run_date: date) -> dict:
    """Gather the step records of run_date (each step's last successful attempt) into one report."""

    folder = report_dir(settings, run_date) / "steps"
    records = {
        step: json.loads((folder / f"{step}.json").read_text()) for step in STEPS if (folder / f"{step}.json").exists()
    }
    stages = []
    for step, record in records.items():
        rows_in, rows_out = _rows(step, record)
        stages.append(
            {
                "step": step,
                "started_at": record["started_at"],
                "seconds": record["seconds"],
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rows_per_s": round(rows_in / record["seconds"]) if rows_in and record["seconds"] > 0 else None,
            }
        )
    score, train = records.get("score", {}), records.get("train", {})
    recommended = score.get("recommended", {})
    audience_rows = sum(recommended.values())
    gate = records.get("gate", {})
    gate_file = report_dir(settings, run_date) / GATE_REPORT
    gate_json = json.loads(gate_file.read_text()) if gate_file.exists() else {}
    gate_values = gate_json.get("policy_values", {})
    drift = records.get("drift", {})
    return {
        "run_date": run_date.isoformat(),
        "missing_steps": [s for s in STEPS if s not in records and s not in ("report", EXPORT_STEP)],
        "stages": stages,
        "total_step_seconds": round(sum(s["seconds"] for s in stages), 1),
        "audience_rows": audience_rows,
        "arm_shares": {arm: round(n / audience_rows, 4) for arm, n in sorted(recommended.items())}
        if audience_rows
        else {},
        "features": settings.features.names,
        "qini": train.get("qini"),
        "trained_model_version": train.get("model_version"),
        "scored_with_model_version": score.get("model_version"),
        "gate": {
            "decision": gate.get("decision"),
            "reasons": gate.get("reasons"),
            "deployed_policy": gate.get("deployed_policy"),
            "policy_values": gate_values,
            "guardrails": gate_json.get("guardrails", {}),
        },
        # What tonight's audience expects of each guardrail outcome (jobs.targeting.score), vs its limits.
        "audience_guardrails": score.get("guardrails", {}),
        "policy": score.get("policy"),
        "promoted": records.get("promote", {}).get("promoted"),
        "drift": {
            "outcome": drift.get("outcome"),
            "drifted_share": drift.get("drifted_share"),
            "drifted_columns": drift.get("drifted_columns", []),
        },
        "results": {
            "audiences": records.get("results", {}).get("audiences", []),
            "monitoring": records.get("results", {}).get("monitoring", {}),
        },
    }


def format_report(report: dict) -> str:
    """The run report as a plain-text table for the task log and the terminal."""
    lines = [
        f"Run report {report['run_date']}",
        f"{'step':<18}{'seconds':>9}{'rows in':>13}{'rows out':>13}{'rows/s':>11}",
    ]
    for s in report["stages"]:
        cells = [f"{v:,}" if v is not None else "-" for v in (s["rows_in"], s["rows_out"], s["rows_per_s"])]
        lines.append(f"{s['step']:<18}{s['seconds']:>9.1f}{cells[0]:>13}{cells[1]:>13}{cells[2]:>11}")
    lines.append(f"{'total':<18}{report['total_step_seconds']:>9.1f}")
    if report["missing_steps"]:
        lines.append(f"no record for: {', '.join(report['missing_steps'])}")
    shares = ", ".join(f"{arm} {share:.1%}" for arm, share in report["arm_shares"].items())
    lines += [
        f"audience         {report['audience_rows']:,} customers: {shares}",
        f"features         {len(report['features'])}: {', '.join(report['features'])}",
        f"qini             {report['qini']} (scikit-uplift normalisation)",
        f"gate             {report['gate']['decision']}: {'; '.join(report['gate']['reasons'] or [])}",
        *[
            f"  policy value   {name:<28}{v['value']:>9.4f}  [{v['low']:.4f}, {v['high']:.4f}] per customer"
            for name, v in report["gate"]["policy_values"].items()
        ],
        *[
            f"  guardrail      {outcome} (limits {limits}): "
            + ", ".join(
                f"{name} {v['guardrails'][outcome]['increase_per_send']:.4f} "
                f"[{v['guardrails'][outcome]['low']:.4f}, {v['guardrails'][outcome]['high']:.4f}]"
                for name, v in report["gate"]["policy_values"].items()
                if outcome in v.get("guardrails", {})
            )
            + " increase per send"
            for outcome, limits in report["gate"].get("guardrails", {}).items()
        ],
        f"audience policy  {report['policy']}",
        *[
            f"  expected       {outcome}: +{g['expected_increase']:.1f} in the audience, {g['per_send']:.4f} per send"
            for outcome, g in report.get("audience_guardrails", {}).items()
        ],
        f"models           trained v{report['trained_model_version']}, "
        f"scored with v{report['scored_with_model_version']}",
        f"drift            {report['drift']['outcome']} (drifted share {report['drift']['drifted_share']}"
        + (
            f", columns {', '.join(report['drift']['drifted_columns'])}"
            if report["drift"].get("drifted_columns")
            else ""
        )
        + ")",
    ]
    results = report.get("results", {})
    for a in results.get("audiences", []):
        low, high = a["interval"]
        lines.append(
            f"results          audience {a['audience_date']}: {a['sent']:,} sent, {a['holdout']:,} holdout, "
            f"incremental responses {a['incremental']} [{low}, {high}], expected {a['expected']}"
        )
    monitoring = results.get("monitoring") or {}
    if monitoring:
        lines.append(
            f"monitoring       champion {monitoring.get('champion')}: {monitoring.get('action')}"
            + (f" ({'; '.join(monitoring['evidence'])})" if monitoring.get("evidence") else "")
        )
    return "\n".join(lines)


def publish_run_report(settings: Settings, run_date: date) -> dict:
    """Write run_report.json, log it to the run date's MLflow training run, print it; return it."""
    import mlflow
    from mlflow.entities import Metric

    from jobs.model.tracking import training_run_for

    report = run_report(settings, run_date)
    path = report_dir(settings, run_date) / "run_report.json"
    path.write_text(json.dumps(report, indent=2))
    print(format_report(report), flush=True)
    run = training_run_for(settings, run_date)
    if run is not None:
        client = mlflow.MlflowClient()
        metrics = {f"stage_seconds.{s['step']}": s["seconds"] for s in report["stages"]}
        metrics |= {f"rows_in.{s['step']}": s["rows_in"] for s in report["stages"] if s["rows_in"] is not None}
        metrics |= {f"rows_out.{s['step']}": s["rows_out"] for s in report["stages"] if s["rows_out"] is not None}
        metrics |= {arm_metric("arm_share", arm): share for arm, share in report["arm_shares"].items()}
        metrics["audience_rows"] = report["audience_rows"]
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        client.log_artifact(run.info.run_id, str(path))
    return {"report": str(path), "mlflow_run_id": run.info.run_id if run else None}


def run_summary(settings: Settings, run_date: date) -> str:
    """The audience summary, then where every output of run_date is and how to open it."""
    audience = partition_dir(settings, AUDIENCE, run_date)
    reports = report_dir(settings, run_date)
    gate = json.loads((reports / GATE_REPORT).read_text()) if (reports / GATE_REPORT).exists() else {}
    drift = json.loads((reports / DRIFT_REPORT).read_text())["summary"] if (reports / DRIFT_REPORT).exists() else {}
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
        f"Run report       {reports / 'run_report.json'}",
    ]
    if (reports / "run_report.json").exists():
        lines += ["", format_report(json.loads((reports / "run_report.json").read_text()))]
    return "\n".join(lines)
