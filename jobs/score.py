"""Batch scoring: the champion model over every eligible customer, inside Spark, into the audience.

The model runs in the executors through `mlflow.pyfunc.spark_udf` (Arrow batches); the
population never comes to the driver. The targeting policy from `targeting:` in conf:
net value of arm a = value_per_response * uplift_a - cost_per_send[a]; each customer is
recommended the arm of highest net value, or "none" when that value is not positive or the
arm's uplift is below `min_uplift`; with `max_sends`, only the top customers by net value
are selected.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import mlflow
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from jobs.etl import FEATURES
from jobs.lake import partition_dir, publish_partition, read_partition
from jobs.registry import CHAMPION, alias_version
from jobs.settings import Settings


class NoChampionError(RuntimeError):
    """Scoring needs a champion model and there is none."""


def prediction_schema(settings: Settings) -> StructType:
    exp = settings.experiment
    fields = [StructField(f"p_{a}", DoubleType()) for a in exp.all_arms]
    fields += [StructField(f"uplift_{a}", DoubleType()) for a in exp.arms]
    return StructType([*fields, StructField("best_arm", StringType())])


def apply_policy(scored: DataFrame, settings: Settings) -> DataFrame:
    """Add expected_net_value, recommended_arm, rank, decile and selected to per-arm uplifts."""
    policy, arms = settings.targeting, settings.experiment.arms
    options = F.array(
        *[
            F.struct(
                (F.col(f"uplift_{a}") * policy.value_per_response - policy.cost_per_send[a]).alias("net"),
                F.col(f"uplift_{a}").alias("uplift"),
                F.lit(a).alias("arm"),
            )
            for a in arms
        ]
    )
    best = F.array_max(options)  # structs compare field by field: highest net value wins
    worth_it = (best["net"] > 0) & (best["uplift"] >= policy.min_uplift)
    by_value = Window.orderBy(F.col("expected_net_value").desc(), F.col("customer_id"))
    out = (
        scored.withColumn("_best", best)
        .withColumn("recommended_arm", F.when(worth_it, F.col("_best.arm")).otherwise(F.lit("none")))
        .withColumn("expected_net_value", F.col("_best.net"))
        .withColumn("expected_uplift", F.when(worth_it, F.col("_best.uplift")).otherwise(F.lit(0.0)))
        .drop("_best")
        .withColumn("rank", F.row_number().over(by_value))
        .withColumn("decile", F.ntile(10).over(by_value))
    )
    selected = F.col("recommended_arm") != "none"
    if policy.max_sends is not None:
        selected = selected & (F.col("rank") <= policy.max_sends)
    return out.withColumn("selected", selected)


def score(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Score run_date's scoring set with the champion; publish audience and audience_summary."""
    champion = alias_version(settings, CHAMPION)
    name = settings.mlflow.registered_model
    if champion is None:
        raise NoChampionError(
            f"registered model '{name}' has no '{CHAMPION}' alias: no model passed the gate yet. "
            "Read the gate report of the last run, or promote a version with `uplift model promote`."
        )
    exp = settings.experiment
    predict = mlflow.pyfunc.spark_udf(
        spark, f"models:/{name}/{champion.version}", env_manager="local", result_type=prediction_schema(settings)
    )
    features = read_partition(spark, settings, "features/scoring", run_date)
    scored = features.withColumn("_pred", predict(F.struct(*FEATURES))).select(
        "customer_id",
        *[F.col(f"_pred.{f.name}").alias(f.name) for f in prediction_schema(settings) if f.name != "best_arm"],
    )
    audience = apply_policy(scored, settings).select(
        "customer_id",
        "recommended_arm",
        "selected",
        "expected_uplift",
        "expected_net_value",
        "rank",
        "decile",
        F.col(f"p_{exp.control}").alias("p_control"),
        *[F.col(f"p_{a}") for a in exp.arms],
        *[F.col(f"uplift_{a}") for a in exp.arms],
        F.lit(name).alias("model_name"),
        F.lit(str(champion.version)).alias("model_version"),
        F.lit(datetime.now(UTC)).cast("timestamp").alias("scored_at"),
    )
    path = publish_partition(audience, settings, "audience", run_date)
    published = spark.read.parquet(str(path))
    summary = (
        published.where("selected")
        .groupBy("recommended_arm")
        .agg(
            F.count("*").alias("customers"),
            F.sum("expected_uplift").alias("expected_incremental_responses"),
            F.sum("expected_net_value").alias("expected_net_value"),
        )
        .withColumn("model_version", F.lit(str(champion.version)))
    )
    publish_partition(summary.coalesce(1), settings, "audience_summary", run_date)
    counts = {row["recommended_arm"]: row["count"] for row in published.groupBy("recommended_arm").count().collect()}
    return {
        "audience": str(path),
        "summary": str(partition_dir(settings, "audience_summary", run_date)),
        "rows": sum(counts.values()),
        "recommended": counts,
        "model_version": str(champion.version),
    }
