"""Validation of the raw deliveries and the feature tables with Great Expectations 1.x.

Suites live in `expectations/<suite>.json`; parameters that depend on conf (the arm values,
the feature columns) are passed at run time. Every run writes a JSON summary and Great
Expectations Data Docs under `<reports>/run_date=<ds>/validation/`. A failure raises
`ValidationFailed` naming the input, each failed expectation and a few offending rows, and
the caller stops before anything downstream is written.

Randomization is checked here too, on the training set: a sample-ratio-mismatch test (chi
square of arm counts against `experiment.expected_split`) and covariate balance
(standardized mean difference of each numeric feature, arm vs control, at most 0.1).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import great_expectations as gx
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy import stats

from jobs.etl import FEATURES, NUMERIC_FEATURES
from jobs.lake import read_partition, read_raw
from jobs.settings import PROJECT_ROOT, SOURCES, Settings, report_dir

log = logging.getLogger(__name__)
SUITES_DIR = PROJECT_ROOT / "expectations"
MAX_SMD = 0.1
SAMPLE_ROWS = 5
HIDDEN_COLUMNS = {"email", "raw_email"}  # PII never goes into an error message or a report


class ValidationFailed(RuntimeError):
    """An input failed its checks; nothing downstream may run."""


@dataclass
class CheckOutcome:
    input: str
    suite: str
    success: bool
    evaluated: int
    failures: list[str] = field(default_factory=list)


def load_suite(name: str) -> gx.ExpectationSuite:
    spec = json.loads((SUITES_DIR / f"{name}.json").read_text())
    return gx.ExpectationSuite(name=spec["name"], expectations=spec["expectations"], meta=spec.get("meta"))


def _context(docs_dir: Path):
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="validation",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        },
    )
    return context


def _offending_rows(frame: DataFrame, expectation: dict, result: dict) -> list[dict]:
    column = expectation["kwargs"].get("column")
    values = result.get("partial_unexpected_list") or []
    if not column or not values:
        return []
    present = [v for v in values if v is not None]
    condition = F.col(column).isin(present) if present else F.lit(False)
    if len(present) < len(values):
        condition = condition | F.col(column).isNull()
    visible = [c for c in frame.columns if c not in HIDDEN_COLUMNS]
    rows = frame.where(condition).select(*visible).limit(SAMPLE_ROWS).collect()
    return [{k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in r.asDict().items()} for r in rows]


def run_suite(context, frame: DataFrame, input_name: str, suite_name: str, parameters: dict) -> CheckOutcome:
    """Run one suite on a Spark DataFrame; describe every failed expectation."""
    suite = context.suites.add(load_suite(suite_name))
    batch = (
        context.data_sources.add_or_update_spark(input_name.replace("/", "_"))
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("run")
    )
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "SUMMARY"},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters)
    result = next(iter(run.run_results.values()))
    outcome = CheckOutcome(input_name, suite_name, bool(result.success), len(result.results))
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config.to_json_dict()
        kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id",)}
        observed = item.result or {}
        detail = (
            f"{observed['unexpected_count']} unexpected of {observed.get('element_count')} rows, "
            f"e.g. {observed.get('partial_unexpected_list', [])[:SAMPLE_ROWS]}"
            if "unexpected_count" in observed
            else f"observed {observed.get('observed_value')}"
        )
        if item.exception_info and item.exception_info.get("raised_exception"):
            detail = f"could not be evaluated: {item.exception_info.get('exception_message')}"
        line = f"{config['type']}({kwargs}): {detail}"
        rows = _offending_rows(frame, config, observed)
        if rows:
            line += "\n      offending rows: " + "\n                      ".join(str(r) for r in rows)
        outcome.failures.append(line)
    return outcome


def _write_summary(path: Path, outcomes: list[CheckOutcome], extra: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "success": all(o.success for o in outcomes),
        "checks": [o.__dict__ for o in outcomes],
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2, default=str))


def _raise_if_failed(outcomes: list[CheckOutcome], run_date: date, summary: Path) -> None:
    failed = [o for o in outcomes if not o.success]
    if not failed:
        return
    lines = [f"validation failed for run_date={run_date} (full report: {summary}):"]
    for outcome in failed:
        lines.append(
            f"  input '{outcome.input}', suite '{outcome.suite}': "
            f"{len(outcome.failures)} of {outcome.evaluated} checks failed"
        )
        lines.extend(f"    - {failure}" for failure in outcome.failures)
    lines.append("Nothing downstream was written; fix the delivery (or the conf mapping) and rerun.")
    raise ValidationFailed("\n".join(lines))


def _with_raw_checks(frame: DataFrame, timestamp: str, customers: DataFrame) -> DataFrame:
    known = customers.select("customer_id").distinct().withColumn("known_customer", F.lit(True))
    return (
        frame.withColumn("delivery_lag_days", F.datediff("dt", F.to_date(timestamp)))
        .join(known, "customer_id", "left")
        .fillna(False, subset=["known_customer"])
    )


def volume_band(spark: SparkSession, settings: Settings, source: str, run_date: date) -> tuple[int, int | None]:
    """(min, max) rows of run_date's delivery: non-empty, and within `validation.volume_tolerance`
    of the average of the earlier deliveries in `validation.volume_days` (once there are
    `validation.volume_min_history` of them)."""
    cfg = settings.validation
    since = run_date - timedelta(days=cfg.volume_days)
    earlier = (
        read_raw(spark, settings, source, run_date)
        .where((F.col("dt") >= F.lit(since)) & (F.col("dt") < F.lit(run_date)))
        .groupBy("dt")
        .count()
        .collect()
    )
    if len(earlier) < cfg.volume_min_history:
        return 1, None
    average = sum(row["count"] for row in earlier) / len(earlier)
    return max(1, int(average * (1 - cfg.volume_tolerance))), int(average * (1 + cfg.volume_tolerance)) + 1


def validate_raw(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Validate the run date's delivery of every source; raise ValidationFailed on any failure."""
    out = report_dir(settings, run_date) / "validation"
    context = _context(out / "data_docs")
    exp = settings.experiment
    customers_so_far = read_raw(spark, settings, "users", run_date)
    today = {
        source: read_raw(spark, settings, source, run_date, only_run_date=True, check_types=True) for source in SOURCES
    }
    first_send = (
        read_raw(spark, settings, "sends", run_date).groupBy("customer_id").agg(F.min("sent_at").alias("_first_send"))
    )
    responses = _with_raw_checks(today["responses"], "responded_at", customers_so_far).join(
        first_send, "customer_id", "left"
    )
    # Every expectation is a Spark job over its frame: join the checks in once, not per expectation.
    frames = {
        "users": today["users"].persist(),
        "sends": _with_raw_checks(today["sends"], "sent_at", customers_so_far).persist(),
        "responses": responses.withColumn(
            "after_a_send", F.coalesce(F.col("_first_send") < F.col("responded_at"), F.lit(False))
        )
        .drop("_first_send")
        .persist(),
    }
    outcomes = []
    try:
        for source in SOURCES:
            min_rows, max_rows = volume_band(spark, settings, source, run_date)
            parameters = {
                "arms": exp.all_arms,
                "max_delivery_lag_days": exp.attribution_window_days,
                "min_rows": min_rows,
                "max_rows": max_rows,
            }
            outcomes.append(
                run_suite(context, frames[source], f"raw/{source} dt={run_date}", f"raw_{source}", parameters)
            )
    finally:
        spark.catalog.clearCache()
    counts = {row["arm"]: row["count"] for row in today["sends"].groupBy("arm").count().collect()}
    outcomes.append(_randomization(f"raw/sends dt={run_date}", counts, settings)[0])
    summary = out / "raw.json"
    _write_summary(summary, outcomes)
    _raise_if_failed(outcomes, run_date, summary)
    delivered = {source: frame.count() for source, frame in today.items()}
    return {"raw_checks": sum(o.evaluated for o in outcomes), "delivered_rows": delivered, "report": str(summary)}


def _randomization(
    input_name: str, arm_counts: dict[str, int], settings: Settings, checks: int = 1
) -> tuple[CheckOutcome, dict]:
    """The sample-ratio-mismatch check of one set of arm counts: its outcome and the test itself.

    `checks` counts the randomization checks the outcome will report (SRM, plus balance).
    """
    exp = settings.experiment
    srm = sample_ratio_mismatch(arm_counts, exp.expected_split)
    outcome = CheckOutcome(input_name, "randomization", srm["p_value"] >= exp.srm_p_value_min, checks)
    if not outcome.success:
        outcome.failures.append(
            f"sample ratio mismatch: arm counts {srm['observed']} vs expected split "
            f"{exp.expected_split} (chi2={srm['chi2']:.1f}, p={srm['p_value']:.2g} < {exp.srm_p_value_min})"
        )
    return outcome, srm


def sample_ratio_mismatch(arm_counts: dict[str, int], expected_split: dict[str, float]) -> dict:
    """Chi-square test of observed arm counts against the expected randomization split."""
    arms = sorted(expected_split)
    observed = [arm_counts.get(arm, 0) for arm in arms]
    total = sum(observed)
    expected = [expected_split[arm] * total for arm in arms]
    statistic, p_value = stats.chisquare(observed, expected)
    return {"observed": dict(zip(arms, observed, strict=True)), "chi2": float(statistic), "p_value": float(p_value)}


def covariate_balance(training: DataFrame, control: str) -> dict[str, dict[str, float]]:
    """Standardized mean difference of each numeric feature, every arm against control."""
    aggs = []
    for feature in NUMERIC_FEATURES:
        aggs += [F.avg(feature).alias(f"{feature}__mean"), F.var_samp(feature).alias(f"{feature}__var")]
    by_arm = {row["arm"]: row.asDict() for row in training.groupBy("arm").agg(*aggs).collect()}
    base = by_arm.get(control)
    smd: dict[str, dict[str, float]] = {}
    for arm, row in by_arm.items():
        if arm == control or base is None:
            continue
        smd[arm] = {}
        for feature in NUMERIC_FEATURES:
            var = ((row[f"{feature}__var"] or 0.0) + (base[f"{feature}__var"] or 0.0)) / 2
            diff = (row[f"{feature}__mean"] or 0.0) - (base[f"{feature}__mean"] or 0.0)
            smd[arm][feature] = abs(diff) / var**0.5 if var > 0 else 0.0
    return smd


def validate_features(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Validate the run date's training and scoring sets and the randomization behind them."""
    out = report_dir(settings, run_date) / "validation"
    context = _context(out / "data_docs")
    training = read_partition(spark, settings, "features/training", run_date).persist()
    scoring = read_partition(spark, settings, "features/scoring", run_date).persist()
    try:
        return _validate_feature_tables(context, out, training, scoring, settings, run_date)
    finally:
        spark.catalog.clearCache()


def _validate_feature_tables(
    context, out: Path, training: DataFrame, scoring: DataFrame, settings: Settings, run_date: date
) -> dict:
    exp = settings.experiment
    outcomes = [
        run_suite(
            context,
            training,
            f"features/training run_date={run_date}",
            "features_training",
            {
                "arms": exp.all_arms,
                "columns": ["send_id", "customer_id", "campaign_id", "sent_at", "arm", "label", *FEATURES],
            },
        ),
        run_suite(
            context,
            scoring,
            f"features/scoring run_date={run_date}",
            "features_scoring",
            {"columns": ["customer_id", *FEATURES]},
        ),
    ]
    counts = {row["arm"]: row["count"] for row in training.groupBy("arm").count().collect()}
    randomization, srm = _randomization(f"features/training run_date={run_date}", counts, settings, checks=2)
    balance = covariate_balance(training, exp.control)
    unbalanced = {
        f"{arm}.{feature}": round(value, 3)
        for arm, features in balance.items()
        for feature, value in features.items()
        if value > MAX_SMD
    }
    if unbalanced:
        randomization.success = False
        randomization.failures.append(
            f"covariate imbalance (standardized mean difference > {MAX_SMD} vs control): {unbalanced}"
        )
    outcomes.append(randomization)
    summary = out / "features.json"
    _write_summary(summary, outcomes, {"sample_ratio_mismatch": srm, "covariate_smd": balance})
    _raise_if_failed(outcomes, run_date, summary)
    return {
        "srm_p_value": srm["p_value"],
        "arm_counts": counts,
        "training_rows": sum(counts.values()),
        "scoring_rows": scoring.count(),
        "report": str(summary),
    }
