"""Point-in-time ETL: raw sends, responses and users into the training and scoring sets.

Every feature of a row is computed as of an anchor time from data strictly before it:
- a training row is a matured send (`date(sent_at) <= run_date - attribution_window_days`),
  anchored at `sent_at`, labelled 1 when a qualifying response follows within the window;
- a scoring row is an eligible customer of the run date's users snapshot, anchored at the
  end of the run date.
User attributes come from the latest snapshot dated before the anchor's day. Nothing about
the send itself (its arm, its outcome) enters a feature.
"""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.lake import publish_partition, raw_partitions, read_raw
from jobs.settings import Settings

NUMERIC_FEATURES = [
    "age",
    "tenure_days",
    "weekday",
    "n_sends_30d",
    "n_sends_90d",
    "n_responses_30d",
    "n_responses_90d",
    "days_since_last_response",
    "response_rate_90d",
]
CATEGORICAL_FEATURES = ["gender", "customer_type", "email_domain", "previous_arm"]
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
# Never a feature: the outcome, the treatment, identifiers and PII.
FORBIDDEN_FEATURES = ["label", "arm", "send_id", "customer_id", "campaign_id", "sent_at", "email"]
LOOKBACK_DAYS = 90


def dedupe(frame: DataFrame, key: str, order: list[str]) -> DataFrame:
    """Keep one row per key, the first by `order` (e.g. first delivered).

    The remaining columns break ties, so copies that differ in any column are resolved the
    same way whatever the order the rows were delivered or read in.
    """
    columns = [*order, *sorted(c for c in frame.columns if c not in order and c != key)]
    first = Window.partitionBy(key).orderBy(*[F.col(c).asc_nulls_last() for c in columns])
    return frame.withColumn("_n", F.row_number().over(first)).where("_n = 1").drop("_n")


def _days_between(later: Column, earlier: Column) -> Column:
    return (later.cast("long") - earlier.cast("long")) / 86400.0


def _snapshot_for(spark: SparkSession, snapshot_days: list[date], anchor_days: list[date]) -> DataFrame:
    """(anchor_day, snapshot_dt): the latest users snapshot dated strictly before anchor_day."""
    pairs = []
    for day in anchor_days:
        earlier = [d for d in snapshot_days if d < day]
        if earlier:
            pairs.append((day, earlier[-1]))
    return spark.createDataFrame(pairs, "anchor_day date, snapshot_dt date")


def point_in_time_features(
    anchors: DataFrame, users: DataFrame, sends: DataFrame, qualifying: DataFrame, snapshots: DataFrame
) -> DataFrame:
    """Add FEATURES to anchors (`anchor_id`, `customer_id`, `as_of`, `anchor_day`).

    users: all snapshots (with `dt`); sends and qualifying responses: deduplicated history.
    Anchors without a users snapshot before their day are dropped.
    """
    a = anchors.join(F.broadcast(snapshots), "anchor_day")
    # Only the snapshots some anchor uses (scoring: one of them) go into the shuffle.
    used = F.broadcast(snapshots.select(F.col("snapshot_dt").alias("dt")).distinct())
    attrs = users.join(used, "dt", "left_semi").select(
        "customer_id",
        F.col("dt").alias("snapshot_dt"),
        "age",
        "gender",
        "customer_type",
        "signup_date",
        F.lower(F.substring_index("email", "@", -1)).alias("email_domain"),
    )
    a = a.join(attrs, ["customer_id", "snapshot_dt"])
    a = a.withColumn("tenure_days", F.datediff(F.to_date("as_of"), "signup_date")).withColumn(
        "weekday", F.dayofweek("anchor_day")
    )

    lookback = F.expr(f"INTERVAL {LOOKBACK_DAYS} DAYS")
    prior_sends = (
        anchors.alias("a")
        .join(sends.alias("s"), "customer_id")
        .where((F.col("s.sent_at") < F.col("a.as_of")) & (F.col("s.sent_at") >= F.col("a.as_of") - lookback))
        .groupBy("a.anchor_id")
        .agg(
            F.count("*").alias("n_sends_90d"),
            F.sum(F.when(F.col("s.sent_at") >= F.col("a.as_of") - F.expr("INTERVAL 30 DAYS"), 1).otherwise(0)).alias(
                "n_sends_30d"
            ),
            F.max_by("s.arm", "s.sent_at").alias("previous_arm"),
        )
    )
    prior_responses = (
        anchors.alias("a")
        .join(qualifying.alias("r"), "customer_id")
        .where((F.col("r.responded_at") < F.col("a.as_of")) & (F.col("r.responded_at") >= F.col("a.as_of") - lookback))
        .groupBy("a.anchor_id")
        .agg(
            F.count("*").alias("n_responses_90d"),
            F.sum(
                F.when(F.col("r.responded_at") >= F.col("a.as_of") - F.expr("INTERVAL 30 DAYS"), 1).otherwise(0)
            ).alias("n_responses_30d"),
            F.max("r.responded_at").alias("_last_response"),
        )
    )
    a = a.join(prior_sends, "anchor_id", "left").join(prior_responses, "anchor_id", "left")
    counts = ["n_sends_30d", "n_sends_90d", "n_responses_30d", "n_responses_90d"]
    a = a.fillna(0, subset=counts).fillna("none", subset=["previous_arm"])
    return (
        a.withColumn("days_since_last_response", _days_between(F.col("as_of"), F.col("_last_response")))
        .withColumn(
            "response_rate_90d",
            F.when(F.col("n_sends_90d") > 0, F.col("n_responses_90d") / F.col("n_sends_90d")),
        )
        .drop("_last_response", "signup_date", "snapshot_dt")
    )


def label_sends(sends: DataFrame, qualifying: DataFrame, window_days: int) -> DataFrame:
    """label = 1 when the customer made a qualifying response within the window after sent_at."""
    window_end = F.col("s.sent_at") + F.expr(f"INTERVAL {window_days} DAYS")
    hits = (
        sends.alias("s")
        .join(qualifying.alias("r"), "customer_id")
        .where((F.col("r.responded_at") > F.col("s.sent_at")) & (F.col("r.responded_at") <= window_end))
        .select("s.send_id")
        .distinct()
        .withColumn("label", F.lit(1))
    )
    return sends.join(hits, "send_id", "left").fillna(0, subset=["label"])


def build_sets(spark: SparkSession, settings: Settings, run_date: date) -> tuple[DataFrame, DataFrame]:
    """The training set (matured, labelled sends) and the scoring set of run_date."""
    exp = settings.experiment
    users = read_raw(spark, settings, "users", run_date)
    sends = dedupe(read_raw(spark, settings, "sends", run_date), "send_id", ["dt", "sent_at", "customer_id", "arm"])
    responses = dedupe(
        read_raw(spark, settings, "responses", run_date), "response_id", ["dt", "responded_at", "customer_id"]
    )
    end_of_day = F.lit(run_date + timedelta(days=1)).cast("timestamp")
    # The deduplicated history feeds the labels and both feature sets: deduplicate it once.
    sends = sends.where(F.col("sent_at") < end_of_day).drop("dt").persist()
    qualifying = (
        responses.where(
            F.col("response_type").isin(exp.qualifying_response_types) & (F.col("responded_at") < end_of_day)
        )
        .select("customer_id", "responded_at")
        .persist()
    )
    snapshot_days = [date.fromisoformat(p.name[3:]) for p in raw_partitions(settings, "users", run_date)]

    last_matured = run_date - timedelta(days=exp.attribution_window_days)
    matured = label_sends(
        sends.where(F.to_date("sent_at") <= F.lit(last_matured)), qualifying, exp.attribution_window_days
    ).persist()  # read three times: its days, the anchors, the labels
    send_days = [row.d for row in matured.select(F.to_date("sent_at").alias("d")).distinct().collect()]
    training_anchors = matured.select(
        F.col("send_id").alias("anchor_id"),
        "customer_id",
        F.col("sent_at").alias("as_of"),
        F.to_date("sent_at").alias("anchor_day"),
    )
    training = point_in_time_features(
        training_anchors, users, sends, qualifying, _snapshot_for(spark, snapshot_days, send_days)
    ).withColumnRenamed("anchor_id", "send_id")
    training = training.join(matured.select("send_id", "campaign_id", "arm", "label"), "send_id").select(
        "send_id", "customer_id", "campaign_id", F.col("as_of").alias("sent_at"), "arm", "label", *FEATURES
    )

    scoring_day = run_date + timedelta(days=1)
    today = users.where(F.col("dt") == F.lit(max(snapshot_days))).where(settings.features.eligibility)
    scoring_anchors = today.select(
        F.col("customer_id").alias("anchor_id"),
        "customer_id",
        F.lit(scoring_day).cast("timestamp").alias("as_of"),
        F.lit(scoring_day).alias("anchor_day"),
    )
    scoring = point_in_time_features(
        scoring_anchors, users, sends, qualifying, _snapshot_for(spark, snapshot_days, [scoring_day])
    ).select("customer_id", *FEATURES)
    return training, scoring


def duplicates_removed(spark: SparkSession, settings: Settings, run_date: date) -> dict[str, int]:
    """Rows read of sends and responses up to run_date, and how many of them `dedupe` drops."""
    counts = {}
    for source, key in (("sends", "send_id"), ("responses", "response_id")):
        per_key = read_raw(spark, settings, source, run_date).groupBy(key).count()
        rows, repeats = per_key.agg(F.sum("count"), F.sum(F.col("count") - 1)).first()
        counts[f"raw_{source}_rows"] = int(rows or 0)
        counts[f"duplicate_{source}_removed"] = int(repeats or 0)
    return counts


def run_etl(spark: SparkSession, settings: Settings, run_date: date) -> dict[str, int]:
    """Build and publish features/training and features/scoring for run_date."""
    training, scoring = build_sets(spark, settings, run_date)
    try:
        training_path = publish_partition(training.repartition(4), settings, "features/training", run_date)
        scoring_path = publish_partition(scoring.repartition(4), settings, "features/scoring", run_date)
    finally:
        spark.catalog.clearCache()  # the persisted history of build_sets
    return {
        "training_rows": spark.read.parquet(str(training_path)).count(),
        "scoring_rows": spark.read.parquet(str(scoring_path)).count(),
        **duplicates_removed(spark, settings, run_date),
    }
