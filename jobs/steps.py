"""The steps of a nightly run, by name: what the DAG tasks and the CLI commands both call.

Each step reads data dated up to its run date, writes only that date's outputs, and returns
a small summary (also printed as JSON, so it lands in the Airflow task log).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, date, datetime

from jobs.names import (
    FAILURE_NOTE,
    FEATURES_VALIDATION,
    GATE_DECISION_TAG,
    GATE_REASONS_TAG,
    GATE_REPORT,
    MODEL_VERSION_TAG,
)
from jobs.settings import Settings, load_settings, report_dir

log = logging.getLogger("uplift")


def _validate_raw(settings: Settings, run_date: date) -> dict:
    from jobs.data.validate import preload_gx, validate_raw
    from jobs.runtime.spark import step_session

    preload_gx()  # while the session starts (and, on a machine's first night, the Connect server)
    with step_session(settings, "uplift-validate-raw", shared=True) as spark:
        return validate_raw(spark, settings, run_date)


def _etl(settings: Settings, run_date: date) -> dict:
    from jobs.data.etl import run_etl
    from jobs.runtime.spark import step_session

    with step_session(settings, "uplift-etl", shared=True) as spark:
        return run_etl(spark, settings, run_date)


def _validate_features(settings: Settings, run_date: date) -> dict:
    from jobs.data.validate import preload_gx, validate_features
    from jobs.runtime.spark import step_session

    preload_gx()
    with step_session(settings, "uplift-validate-features", shared=True) as spark:
        return validate_features(spark, settings, run_date)


def _train(settings: Settings, run_date: date) -> dict:
    from jobs.model.train import train

    return train(settings, run_date)


def _gate(settings: Settings, run_date: date) -> dict:
    from jobs.model import gate
    from jobs.model.gate_record import record
    from jobs.model.tracking import latest_training_run

    drift_checks = []
    if settings.drift.on_fail == "block_promotion":
        from jobs.monitoring.drift import feature_drift  # Evidently: imported only when it is needed

        drift_checks = feature_drift(settings, run_date)
    decision = gate.decide(settings, run_date, latest_training_run(settings, run_date), drift_checks)
    record(decision, report_dir(settings, run_date) / GATE_REPORT)
    values = {
        name: {k: round(v[k], 4) for k in ("value", "low", "high")} for name, v in decision["policy_values"].items()
    }
    return {
        **{k: decision[k] for k in ("decision", "reasons", "model_version", "deployed_policy")},
        "policy_values": values,
    }


def _promote(settings: Settings, run_date: date) -> dict:
    from jobs.model import registry
    from jobs.model.tracking import latest_training_run

    run = latest_training_run(settings, run_date)
    decision = run.data.tags.get(GATE_DECISION_TAG)
    if decision is None:
        raise RuntimeError(
            f"the training run of {run_date} has no gate decision: run `uplift gate --run-date {run_date}`"
        )
    if decision != "promote":
        return {"promoted": False, "reason": run.data.tags.get(GATE_REASONS_TAG), **registry.status(settings)}
    return {"promoted": True, **registry.promote(settings, run.data.tags[MODEL_VERSION_TAG], run_date)}


def _score(settings: Settings, run_date: date) -> dict:
    from jobs.runtime.spark import step_session
    from jobs.targeting.score import score

    with step_session(settings, "uplift-score", shared=True) as spark:
        return score(spark, settings, run_date)


def _export(settings: Settings, run_date: date) -> dict:
    from jobs.targeting.audience import publish_export

    return publish_export(settings, run_date)


def _results(settings: Settings, run_date: date) -> dict:
    from jobs.monitoring.champion import monitor
    from jobs.monitoring.results import measure
    from jobs.runtime.spark import step_session

    with step_session(settings, "uplift-results", shared=True) as spark:
        measured = measure(spark, settings, run_date)
    report = monitor(settings, run_date)
    keep = ("champion", "action", "evidence", "realized_value", "best_constant", "versus_best_constant", "rollback")
    return {**measured, "monitoring": {k: report[k] for k in keep if k in report}}


def _drift(settings: Settings, run_date: date) -> dict:
    import mlflow

    from jobs.model.tracking import training_run_for
    from jobs.monitoring.drift import drift

    result = drift(settings, run_date)
    run = training_run_for(settings, run_date)
    if run is not None:  # link every report of the run date from its MLflow run
        mlflow.MlflowClient().log_artifacts(run.info.run_id, str(report_dir(settings, run_date)), "reports")
        mlflow.MlflowClient().set_tag(run.info.run_id, "drift.outcome", result["outcome"])
    return result


def _report(settings: Settings, run_date: date) -> dict:
    from jobs.monitoring.report import publish_run_report

    return publish_run_report(settings, run_date)


_IMPLEMENTATIONS = {
    "validate-raw": _validate_raw,
    "etl": _etl,
    "validate-features": _validate_features,
    "train": _train,
    "gate": _gate,
    "promote": _promote,
    "score": _score,
    "export": _export,
    "results": _results,
    "drift": _drift,
    "report": _report,
}


def run(step: str, run_date: date, settings: Settings | None = None) -> dict:
    """Run one step for run_date, print its summary as a JSON line and keep it for the run report."""

    settings = settings or load_settings()
    log.info("step %s for run_date=%s", step, run_date)
    started_at, started = datetime.now(UTC), time.perf_counter()
    result = _IMPLEMENTATIONS[step](settings, run_date)
    record = {
        "step": step,
        "run_date": run_date.isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
        **result,
    }
    print(json.dumps(record, default=str), flush=True)
    if step != "report":  # a rerun of a step replaces its record: the report shows the last attempt
        path = report_dir(settings, run_date) / "steps" / f"{step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
    return result


def failure_reason(settings: Settings, step: str, run_date: date, error: BaseException | None) -> str:
    """One line saying which step failed and why; for validation, which checks failed."""

    summary = {"validate-raw": "raw.json", "validate-features": FEATURES_VALIDATION}.get(step)
    path = report_dir(settings, run_date) / "validation" / summary if summary else None
    if path is not None and path.exists():
        report = json.loads(path.read_text())
        failed = [
            f"{check['input']} {check['suite']}: " + " | ".join(f.split("\n")[0] for f in check["failures"])
            for check in report["checks"]
            if not check["success"]
        ]
        if failed:
            return f"{step} failed for run_date={run_date}: " + "; ".join(failed)
    detail = str(error).strip().splitlines()[0] if error and str(error).strip() else type(error).__name__
    return f"{step} failed for run_date={run_date}: {detail}"


def record_failure(step: str, run_date: date, error: BaseException | None) -> str:
    """Write the one-line reason to <reports>/run_date=<ds>/failure.txt and the log; return it."""

    settings = load_settings()
    line = failure_reason(settings, step, run_date, error)
    path = report_dir(settings, run_date) / FAILURE_NOTE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(line + "\n")
    log.error(line)
    return line
