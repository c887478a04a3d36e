"""Validation of the raw deliveries and the feature tables with Great Expectations 1.x.

Suites live in `expectations/<suite>.json` (the contract's checks); the per-column checks of
the users attributes and the features (type, nulls, ranges, cardinality) are generated from
the feature spec and appended (jobs.features.expectations); parameters that depend on conf
(the arm values, the column set) are passed at run time. A source whose `delivery` is
`occasional` may have no delivery on the run date; a `daily` one may not. Every run writes a JSON summary and Great
Expectations Data Docs under `<reports>/run_date=<ds>/validation/`. A failure raises
`ValidationFailed` naming the input, each failed expectation and a few offending rows, and
the caller stops before anything downstream is written.

Randomization is checked here too: a sample-ratio-mismatch test per campaign (chi square of
its arm counts against its split), on each day's sends and on the training set's randomized
rows, and their covariate balance (each numeric feature, arm vs control: refused when its
standardized mean difference is above 0.1 and the difference is significant).

The leakage guard on the training set works from the data, not from the feature list: a
feature that separates the label (on every row), or one arm from control (on the randomized
rows), almost perfectly (single-feature AUC at or above `validation.leakage_max_auc` on a
sample) is, or is derived from, the outcome or the treatment, and fails validation by name.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import features
from jobs.data.checks import (
    CheckOutcome,
    balance_tests,
    counts_by_campaign,
    leakage_scores,
    own_shares,
    randomization_check,
    randomized_groups,
    training_randomization,
)
from jobs.data.etl import SCORING_KEYS, training_keys
from jobs.data.expectations import (
    SAMPLE_ROWS,
    data_context,
    hidden_columns,
    preload_gx,
    raise_if_failed,
    run_suite,
    write_summary,
)
from jobs.data.lake import (
    assignment_records,
    own_campaigns,
    partition_date,
    partition_dates,
    raw_partitions,
    read_partition,
    read_raw,
)
from jobs.names import AUDIENCE, FEATURES_VALIDATION, SCORING_SET, TRAINING_SET, label_column
from jobs.settings import SOURCES, Settings, report_dir

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
LEAKAGE_SAMPLE_ROWS = 200_000


def _with_raw_checks(frame: DataFrame, timestamp: str, known: DataFrame) -> DataFrame:
    """frame with its delivery lag and whether a users snapshot knows its customer (known: distinct ids)."""
    return (
        frame.withColumn("delivery_lag_days", F.datediff("dt", F.to_date(timestamp)))
        .join(known.withColumn("known_customer", F.lit(True)), "customer_id", "left")
        .fillna(False, subset=["known_customer"])
    )


def volume_band(
    spark: SparkSession, settings: Settings, source: str, run_date: date, own: tuple[str, ...] = ()
) -> tuple[int, int | None]:
    """(min, max) rows of run_date's delivery: non-empty, and within `validation.volume_tolerance`
    of the average of the earlier deliveries in `validation.volume_days` (once there are
    `validation.volume_min_history` of them), for sources that check volume (`volume_band`).

    own: the pipeline's own campaign ids, whose sends the earlier deliveries' counts leave out
    (their volume follows their audience, which `_own_campaigns_check` holds them to)."""
    cfg = settings.validation
    if not settings.sources[source].checks_volume:
        return 1, None
    window = {run_date - timedelta(days=n) for n in range(1, cfg.volume_days + 1)}
    dated = {partition_date(f) for f in raw_partitions(settings, source, run_date)} & window
    if len(dated) < cfg.volume_min_history:
        return 1, None
    delivered = read_raw(spark, settings, source, run_date, days=dated)
    if own:
        delivered = delivered.where(~F.col("campaign_id").isin(list(own)))
    earlier = delivered.groupBy("dt").count().collect()
    if len(earlier) < cfg.volume_min_history:
        return 1, None
    average = sum(row["count"] for row in earlier) / len(earlier)
    return max(1, int(average * (1 - cfg.volume_tolerance))), int(average * (1 + cfg.volume_tolerance)) + 1


def _delivery_day(settings: Settings, source: str, run_date: date) -> date:
    """The delivery of a source that run_date validates: its own, or an occasional source's latest.

    A `daily` source must have a delivery dated run_date (read_raw names it when missing); an
    `occasional` one without it is checked on its latest delivery (the one the ETL reads as
    the newest), so a one-off snapshot is validated whatever night first reads it.
    """
    folders = raw_partitions(settings, source, run_date)
    if settings.sources[source].delivery == "daily" or not folders:
        return run_date
    return partition_date(folders[-1])


def validate_raw(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Validate the run date's delivery of every source; raise ValidationFailed on any failure.

    For a source with `delivery: occasional` and nothing delivered on the run date, its latest
    delivery is checked instead (named with its own dt); a `daily` one without a delivery fails
    (MissingInputError).
    """
    preload_gx()
    out = report_dir(settings, run_date) / "validation"
    exp = settings.experiment
    days = {source: _delivery_day(settings, source, run_date) for source in SOURCES}
    frames = _raw_frames(spark, settings, run_date, days)
    hidden = hidden_columns(settings)
    outcomes = []
    try:
        own = own_campaigns(settings, run_date)
        rows, bands, arm_counts, response_types = _counted(spark, settings, run_date, frames, days, own)
        own = {campaign: own[campaign] for campaign in arm_counts if campaign in own}  # tonight's own campaigns
        randomized = {campaign: counts for campaign, counts in arm_counts.items() if campaign not in own}
        # Last night's audience may be sent today, or not at all, and may have listed no one.
        due = own_campaigns(settings, run_date - timedelta(days=1), since=run_date - timedelta(days=1))
        if own or due:
            own_rows = sum(sum(arm_counts[campaign].values()) for campaign in own)
            bands["sends"] = _with_own_sends(bands["sends"], bool(randomized), own_rows)
        if _own_responses_due(settings, run_date):  # their volume follows the own campaigns' sends
            bands["responses"] = (1, None)
        context = data_context(out / "data_docs")
        outcomes += _raw_suites(context, settings, frames, days, bands, hidden)
        randomization, srm = randomization_check(f"raw/sends dt={days['sends']}", randomized, exp)
        outcomes.append(randomization)
        if own:
            own_check, own_summary = _own_campaigns_check(spark, settings, frames["sends"], own, days["sends"])
            outcomes.append(own_check)
            srm["own_campaigns"] = own_summary
        outcomes.append(response_types)
        context.build_data_docs(site_names=["validation"])  # once per step, every suite's results
        checked = {source: day.isoformat() for source, day in days.items()}
        summary = out / "raw.json"
        write_summary(summary, outcomes, {"deliveries_checked": checked, "sample_ratio_mismatch": srm})
        raise_if_failed(outcomes, run_date, summary)
        delivered = {source: rows[source] if days[source] == run_date else 0 for source in SOURCES}
    finally:
        spark.catalog.clearCache()
    return {
        "raw_checks": sum(o.evaluated for o in outcomes),
        "delivered_rows": delivered,
        "deliveries_checked": checked,
        "report": str(summary),
    }


def _raw_frames(spark: SparkSession, settings: Settings, run_date: date, days: dict[str, date]) -> dict[str, DataFrame]:
    """Each source's checked delivery, cached, with the columns the raw suites check: on sends and
    responses whether the customer is known to the users snapshots and the timestamp parses, on
    responses whether it follows the customer's first send."""
    today = {
        source: read_raw(spark, settings, source, day, only_run_date=True, check_types=True)
        for source, day in days.items()
    }
    # Only the customers the day's sends and responses name are looked up, first in the day's users
    # snapshot; the history of snapshots is scanned (its customer_id column, against a broadcast of
    # them) only for those that one does not hold: not a distinct over every snapshot.
    named = today["sends"].select("customer_id").union(today["responses"].select("customer_id")).distinct()
    in_users = today["users"].select("customer_id")
    known = named.join(in_users, "customer_id", "left_semi")
    elsewhere = named.join(in_users, "customer_id", "left_anti").persist()
    if not elsewhere.isEmpty():
        earlier = read_raw(spark, settings, "users", run_date).select("customer_id")
        known = known.union(earlier.join(F.broadcast(elsewhere), "customer_id", "left_semi").distinct())
    known = known.persist()
    # A response must follow a send: the customer's first send, over the earlier deliveries and
    # today's as the check typed it (a timestamp delivered as text today is reported as such, and
    # must not break the read of the history under the earlier files' types).
    sends = today["sends"].select("customer_id", "sent_at")
    earlier_days = {partition_date(f) for f in raw_partitions(settings, "sends", run_date)} - {days["sends"]}
    if earlier_days:
        sends = read_raw(spark, settings, "sends", run_date, days=earlier_days).select(*sends.columns).union(sends)
    first_send = (
        sends.join(F.broadcast(today["responses"].select("customer_id").distinct()), "customer_id", "left_semi")
        .groupBy("customer_id")
        .agg(F.min("sent_at").alias("_first_send"))
    )
    responses = _with_raw_checks(today["responses"], "responded_at", known).join(first_send, "customer_id", "left")
    # Every expectation is a Spark job over its frame: join the checks in once, not per expectation.
    return {
        "users": today["users"].persist(),
        "sends": _with_raw_checks(today["sends"], "sent_at", known).persist(),
        "responses": responses.withColumn(
            "after_a_send", F.coalesce(F.col("_first_send") < F.col("responded_at"), F.lit(False))
        )
        .drop("_first_send")
        .persist(),
    }


def _counted(spark: SparkSession, settings: Settings, run_date: date, frames, days, own) -> tuple:
    """The work that needs no Great Expectations, run while it imports (preload_gx): the deliveries
    into the cache (their rows), the volume bands, the arm counts per campaign and the response
    types. Small jobs, one or a few tasks each: submitted together, they share the cores."""
    with ThreadPoolExecutor(4, thread_name_prefix="raw-checks") as pool:
        counted = {source: pool.submit(frame.count) for source, frame in frames.items()}
        banded = {
            source: pool.submit(
                volume_band, spark, settings, source, days[source], tuple(own) if source == "sends" else ()
            )
            for source in SOURCES
        }
        arms_counted = pool.submit(_arm_counts_by_campaign, frames["sends"])
        types_seen = pool.submit(response_types_delivered, spark, settings, run_date)
        rows = {source: future.result() for source, future in counted.items()}
        bands = {source: future.result() for source, future in banded.items()}
        return rows, bands, arms_counted.result(), types_seen.result()


def _raw_suites(context, settings: Settings, frames, days, bands, hidden) -> list[CheckOutcome]:
    """Each source's raw suite on its delivery, with its volume band and the contract's parameters."""
    generated = {"users": features.expectations(features.raw_users_columns(settings.features), types=False)}
    outcomes = []
    for source in SOURCES:
        min_rows, max_rows = bands[source]
        parameters = {
            "arms": settings.experiment.all_arms,
            "max_delivery_lag_days": settings.window_days,
            "min_rows": min_rows,
            "max_rows": max_rows,
        }
        name = f"raw/{source} dt={days[source]}"
        outcomes.append(
            run_suite(context, frames[source], name, f"raw_{source}", parameters, generated.get(source), hidden)
        )
    return outcomes


def _with_own_sends(band: tuple[int, int | None], randomized_today: bool, own_rows: int) -> tuple[int, int | None]:
    """The sends delivery's band when own campaigns are due or delivered: the randomized campaigns'
    band (none tonight: no rows expected of them), plus the own campaigns' rows, which are held to
    their audience apart. An audience that listed no one, or was not sent, leaves the delivery empty."""
    low, high = band if randomized_today else (0, 0)
    return low + own_rows, None if high is None else high + own_rows


def _own_responses_due(settings: Settings, run_date: date) -> bool:
    """Whether an own campaign sent within the longest label window may have responses tonight: the
    responses' volume then follows its size, not the earlier deliveries' average."""
    since = run_date - timedelta(days=settings.window_days + 1)
    recent = [day for day in partition_dates(settings, AUDIENCE) if since <= day < run_date]
    return bool(recent) and bool(own_campaigns(settings, recent[-1]))


def _own_campaigns_check(
    spark: SparkSession, settings: Settings, sends: DataFrame, audiences: dict[str, Path], day: date
) -> tuple[CheckOutcome, dict]:
    """The sends of the pipeline's own campaigns against the audiences that listed them.

    Every send must be a row of its campaign's audience (export.campaign_id names it) with that
    row's assigned arm; the routes (target, holdout, explore) must come back in the shares the
    audience listed them (a sample-ratio test at srm_p_value_min / campaigns: an e-mail tool that
    dropped the control rows, or most of one route, would bias every estimate of the nights after);
    and at least (1 - validation.volume_tolerance) of the listed rows must come back.
    """
    exp, tolerance = settings.experiment, settings.validation.volume_tolerance
    ids = sorted(audiences)
    records = assignment_records(spark, audiences).where(F.col("campaign_id").isin(ids))
    problem = F.when(F.col("assigned_arm").isNull(), F.lit("customer not in the audience")).when(
        F.col("arm") != F.col("assigned_arm"), F.lit("arm changed from the audience's assigned_arm")
    )
    own = (
        sends.where(F.col("campaign_id").isin(ids))
        .join(records, ["campaign_id", "customer_id"], "left")
        .withColumn("problem", problem)
    )
    delivered = own.groupBy("campaign_id", "assignment", "problem").count().collect()
    listed: dict[str, dict[str, int]] = {}
    for row in records.groupBy("campaign_id", "assignment").count().collect():
        listed.setdefault(row["campaign_id"], {})[row["assignment"]] = row["count"]
    outcome = CheckOutcome(f"raw/sends dt={day}", "own_campaigns", True, 4)
    problems: dict[str, int] = {}
    matched: dict[str, dict[str, int]] = {c: {} for c in ids}
    for row in delivered:
        if row["problem"]:
            problems[row["problem"]] = problems.get(row["problem"], 0) + row["count"]
        else:
            matched[row["campaign_id"]][row["assignment"]] = row["count"]
    for kind, count in sorted(problems.items()):
        sample = own.where(F.col("problem") == kind).select(
            "send_id", "campaign_id", "customer_id", "arm", "assigned_arm"
        )
        rows = [r.asDict() for r in sample.limit(SAMPLE_ROWS).collect()]
        outcome.failures.append(
            f"{count} sends of own campaigns {ids}: {kind}, e.g. {rows}. An own campaign's sends must be the rows "
            "of the audience that listed them, with their assigned arm: fix the export's mapping in the e-mail "
            "tool, or deliver a campaign the pipeline did not list under another campaign_id"
        )
    failures, summary = own_shares(listed, matched, exp.srm_p_value_min / len(ids), tolerance)
    outcome.failures += failures
    outcome.success = not outcome.failures
    return outcome, summary


def response_types_delivered(spark: SparkSession, settings: Settings, run_date: date) -> CheckOutcome:
    """Every label's response types occur in the responses delivered up to run_date.

    A type no delivery contains is a typo or a feed that never arrived: its label would be 0
    for every send, and its model would learn nothing, silently.
    """
    seen = {
        row["response_type"]
        for row in read_raw(spark, settings, "responses", run_date).select("response_type").distinct().collect()
    }
    wanted = settings.response_types()
    outcome = CheckOutcome(f"raw/responses up to {run_date}", "response_types", True, len(wanted))
    for name, types in wanted.items():
        missing = sorted(set(types) - seen)
        if missing:
            outcome.success = False
            which = "experiment.qualifying_response_types" if name is None else f"targeting.outcomes.{name}"
            outcome.failures.append(
                f"{which} counts response types {missing} that no delivery up to {run_date} contains "
                f"(delivered response types: {sorted(t for t in seen if t is not None)})"
                + (
                    ""
                    if name is None
                    else ": name the types as delivered, or set targeting.outcomes in your overlay "
                    "({} for the primary outcome only)"
                )
            )
    return outcome


def outcome_label_expectations(settings: Settings) -> list[dict]:
    """Each further outcome's label: 0 or 1 on every row, and not 0 everywhere (nothing to learn from)."""
    out = []
    for name in settings.targeting.outcomes:
        column = label_column(name)
        out += [
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": column, "value_set": [0, 1]}},
            {
                "type": "expect_column_mean_to_be_between",
                "kwargs": {"column": column, "min_value": 1e-6, "max_value": 0.9},
                "notes": f"no matured send was followed by a response of outcome '{name}' within its window "
                "(or no send has matured for it yet): no label to learn",
            },
        ]
    return out


def _arm_counts_by_campaign(sends: DataFrame) -> dict[str, dict[str, int]]:
    return counts_by_campaign(_moments_by_campaign(sends, []))


def covariate_balance(training: DataFrame, control: str, numeric: list[str]) -> dict[str, dict[str, float]]:
    """Standardized mean difference of each numeric feature, every arm against control, on the
    randomized rows (RANDOMIZED_ASSIGNMENTS)."""
    balance = balance_tests(randomized_groups(_moments_by_campaign(training, numeric, "assignment")), control, numeric)
    return {arm: {feature: pair["smd"] for feature, pair in by_feature.items()} for arm, by_feature in balance.items()}


def _moments_by_campaign(frame: DataFrame, numeric: list[str], *keys: str) -> list[dict]:
    """Per (campaign_id, arm, *keys): rows, and each numeric feature's non-null count, mean and
    sample variance; one Spark job, which gives the arm counts and the balance both."""
    aggs = [F.count(F.lit(1)).alias("count")]
    for feature in numeric:
        aggs += [
            F.count(feature).alias(f"{feature}__n"),
            F.avg(feature).alias(f"{feature}__mean"),
            F.var_samp(feature).alias(f"{feature}__var"),
        ]
    return [row.asDict() for row in frame.groupBy("campaign_id", "arm", *keys).agg(*aggs).collect()]


def leakage_in_data(training: DataFrame, settings: Settings, seed: int) -> tuple[list[str], dict]:
    """Features that separate the label, or an arm from control on the randomized rows, almost
    perfectly, on a sample.

    Works from the table's own columns (everything but the send's keys), not from the feature
    list the ETL selected with: whatever the spec or the ETL let through is scored.
    """
    return leakage_scores(leakage_sample(training, settings, seed), settings)


def leakage_sample(training: DataFrame, settings: Settings, seed: int, total: int | None = None) -> pd.DataFrame:
    """The leakage guard's sample of the training set (about LEAKAGE_SAMPLE_ROWS rows of its
    `total`, counted unless given): label, arm, assignment and every column but the send's keys."""
    candidates = [c for c in training.columns if c not in training_keys(settings)]
    total = training.count() if total is None else total
    fraction = min(1.0, LEAKAGE_SAMPLE_ROWS / total) if total else 1.0
    return training.select("label", "arm", "assignment", *candidates).sample(fraction=fraction, seed=seed).toPandas()


def validate_features(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Validate the run date's training and scoring sets and the randomization behind them."""
    preload_gx()
    out = report_dir(settings, run_date) / "validation"
    training = read_partition(spark, settings, TRAINING_SET, run_date).persist()
    scoring = read_partition(spark, settings, SCORING_SET, run_date).persist()
    try:
        return _validate_feature_tables(out, training, scoring, settings, run_date)
    finally:
        spark.catalog.clearCache()


def _validate_feature_tables(
    out: Path, training: DataFrame, scoring: DataFrame, settings: Settings, run_date: date
) -> dict:
    exp, spec = settings.experiment, settings.features
    # The checks that need no Great Expectations first, while it imports (preload_gx): they also
    # bring both tables into the cache the suites read, side by side (the scoring set's count
    # beside the training set's moments and sample).
    with ThreadPoolExecutor(1, thread_name_prefix="scoring-count") as pool:
        scoring_counted = pool.submit(scoring.count)
        moments = _moments_by_campaign(training, spec.numeric, "assignment")
        sample = leakage_sample(training, settings, settings.training.seed, sum(row["count"] for row in moments))
        scoring_rows = scoring_counted.result()
    randomization, checks = training_randomization(f"features/training run_date={run_date}", moments, exp, spec.numeric)
    context = data_context(out / "data_docs")  # Great Expectations imported: no import runs in two threads
    # The leakage guard's AUCs are pandas work on the driver, the suites mostly wait for Spark:
    # one runs beside the other.
    with ThreadPoolExecutor(1, thread_name_prefix="leakage") as pool:
        leakage = pool.submit(leakage_scores, sample, settings)
        generated = features.expectations(spec.columns())
        outcomes = [
            run_suite(
                context,
                training,
                f"features/training run_date={run_date}",
                "features_training",
                {"arms": exp.all_arms, "columns": [*training_keys(settings), *spec.names]},
                generated + outcome_label_expectations(settings),
            ),
            run_suite(
                context,
                scoring,
                f"features/scoring run_date={run_date}",
                "features_scoring",
                {"columns": [*SCORING_KEYS, *spec.names]},
                generated,
            ),
            randomization,
        ]
        leaks, separation = leakage.result()
    if leaks:
        randomization.success = False
        randomization.failures.extend(leaks)
    context.build_data_docs(site_names=["validation"])  # once per step, every suite's results
    summary = out / FEATURES_VALIDATION
    write_summary(summary, outcomes, {**checks, "leakage_auc": separation})
    raise_if_failed(outcomes, run_date, summary)
    arm_counts: dict[str, int] = {}
    for row in moments:  # every training row, randomized or not
        arm_counts[row["arm"]] = arm_counts.get(row["arm"], 0) + row["count"]
    srm = checks["sample_ratio_mismatch"]
    return {
        "srm_p_value_min": min((t["p_value"] for t in srm["campaigns"].values()), default=1.0),
        "arm_counts": arm_counts,
        "training_rows": sum(arm_counts.values()),
        "scoring_rows": scoring_rows,
        "report": str(summary),
    }
