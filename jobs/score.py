"""Batch scoring: the champion model over every eligible customer, inside Spark, into the audience.

The driver resolves the champion in the MLflow registry and loads it once; its boosters go to
the executors as LightGBM model strings (a broadcast), where `mapInPandas` scores Arrow
batches with `jobs.tlearner`, one LightGBM thread per Python worker (Spark runs one worker
per core). The workers import neither MLflow nor the pickled pyfunc: a cold worker is ready
in the time it takes to import LightGBM. The population never comes to the driver.

The targeting policy from `targeting:` in conf: net value of arm a =
value_per_response * uplift_a - cost_per_send[a]; each customer is recommended the arm of
highest net value, or "none" when that value is not positive or the arm's uplift is below
`min_uplift`; with `max_sends`, only the top customers by net value
are selected (and with `max_spend`, only as many as the budget pays for); a stable random
`holdout_share` of the selected is flagged `holdout`: not sent, kept as tomorrow's control.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import mlflow
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from jobs.lake import partition_dir, publish_partition, read_partition
from jobs.registry import CHAMPION, alias_version
from jobs.settings import Settings
from jobs.tlearner import PortableTLearner


class NoChampionError(RuntimeError):
    """Scoring needs a champion model and there is none."""


def prediction_schema(settings: Settings) -> StructType:
    """customer_id, then p_<arm> of every arm and uplift_<arm> of every treatment arm."""
    exp = settings.experiment
    fields = [StructField(f"p_{a}", DoubleType()) for a in exp.all_arms]
    fields += [StructField(f"uplift_{a}", DoubleType()) for a in exp.arms]
    return StructType([StructField("customer_id", StringType()), *fields])


class FeatureMismatchError(RuntimeError):
    """The scoring set's features are not the ones the model was trained on."""


def check_features(columns: list[str], model: PortableTLearner, keys: tuple[str, ...] = ("customer_id",)) -> None:
    """Refuse a scoring set whose feature columns differ from the model's, naming the columns."""
    trained = [*model.numeric, *model.categories]
    given = [c for c in columns if c not in keys]
    missing, unexpected = [c for c in trained if c not in given], [c for c in given if c not in trained]
    if missing or unexpected:
        raise FeatureMismatchError(
            "the scoring set's features differ from the model's: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing}" if missing else "",
                    f"not known to the model {unexpected}" if unexpected else "",
                )
                if part
            )
            + f". The model was trained on {trained}. A changed feature spec needs a model trained on it: "
            "run the nightly through train and gate, or restore the spec the champion was trained with."
        )


def predict_arms(features: DataFrame, model: PortableTLearner, settings: Settings) -> DataFrame:
    """Per customer of features: every arm's response probability and every treatment's uplift."""
    check_features(features.columns, model)
    shipped = features.sparkSession.sparkContext.broadcast(model)
    columns = [f.name for f in prediction_schema(settings)]

    def predict_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        portable = shipped.value
        boosters = portable.load()  # once per partition, not per batch
        for batch in batches:
            predicted = portable.predict(batch, boosters, num_threads=1)
            predicted.insert(0, "customer_id", batch["customer_id"])
            yield predicted[columns]

    inputs = features.select("customer_id", *model.numeric, *model.categories)
    return inputs.mapInPandas(predict_batches, prediction_schema(settings))


def apply_policy(scored: DataFrame, settings: Settings, run_date: date) -> DataFrame:
    """Add recommended_arm, expected uplift and net value, rank, decile, selected and holdout."""
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
    recommended = F.col("recommended_arm") != "none"
    costs = F.create_map(*[x for a in arms for x in (F.lit(a), F.lit(policy.cost_per_send[a]))])
    so_far = by_value.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    out = out.withColumn("send_cost", F.when(recommended, costs[F.col("recommended_arm")]).otherwise(F.lit(0.0)))
    selected = recommended
    if policy.max_sends is not None:
        selected = selected & (F.sum(recommended.cast("int")).over(so_far) <= policy.max_sends)
    if policy.max_spend is not None:
        selected = selected & (F.sum("send_cost").over(so_far) <= policy.max_spend)
    # A stable pseudo-random share of the selected stays unsent: tomorrow's randomized control.
    draw = (F.xxhash64("customer_id", F.lit(run_date.isoformat())) % 1_000_000).cast("double") / 1_000_000
    holdout = F.abs(draw) < policy.holdout_share
    return out.withColumn("selected", selected).withColumn("holdout", F.col("selected") & holdout)


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
    features = read_partition(spark, settings, "features/scoring", run_date)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{champion.version}").unwrap_python_model()
    scored = predict_arms(features, model.portable(), settings)
    audience = apply_policy(scored, settings, run_date).select(
        "customer_id",
        "recommended_arm",
        "selected",
        "holdout",
        "expected_uplift",
        "expected_net_value",
        "send_cost",
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
    sent = F.col("selected") & ~F.col("holdout")
    summary = (
        published.where("selected")
        .groupBy("recommended_arm")
        .agg(
            F.count("*").alias("customers"),
            F.sum(sent.cast("int")).alias("sends"),
            F.sum(F.col("holdout").cast("int")).alias("holdout"),
            F.sum(F.when(sent, F.col("expected_uplift")).otherwise(0.0)).alias("expected_incremental_responses"),
            F.sum(F.when(sent, F.col("expected_net_value")).otherwise(0.0)).alias("expected_net_value"),
            F.sum(F.when(sent, F.col("send_cost")).otherwise(0.0)).alias("spend"),
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
