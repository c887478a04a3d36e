"""Batch scoring: every eligible customer, inside Spark, into the audience (the champion's, or a constant policy).

The driver resolves the champion in the MLflow registry and loads it once, while the Python
workers start and import LightGBM (`jobs.runtime.spark.start_python_workers`); its boosters go to
the executors as LightGBM model strings (inside the scoring function: PySpark broadcasts a
large one by itself, and a Spark Connect client has no broadcast of its own), where `mapInPandas` scores Arrow
batches with `jobs.model.portable`, one LightGBM thread per Python worker (Spark runs one worker
per core). The workers import neither MLflow nor the pickled pyfunc: a cold worker is ready
in the time it takes to import LightGBM. The population never comes to the driver.

The targeting policy is jobs.model.policy's: each customer's choice is `policy.choose`, run in the
workers on every batch right after its prediction (one pass over the scoring set: a campaign
limit that holds without a guardrail price needs no other), and the budgets and holdout are
its column rules over Spark's ranking windows, so the audience follows exactly the rule the
gate valued offline. Until a model has passed the gate there is no champion: the night then
publishes the best constant policy (`policy.best_constant` on the training set's average
effects), marked `policy = constant:<arm|none>`; a model's audience is marked `model:<version>`.

Either way every row then gets its assignment record (`policy.assign`: target, holdout, explore or
none, the arm to send and its propensity) and the night's `campaign_id` (export.campaign_id), the
id its send list carries and its sends come back under. A customer an audience of the last nights
listed rests (targeting.contact_window_days): ranked, never selected nor explored tonight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from jobs.data.lake import (
    next_version,
    partition_dir,
    publish_partition,
    read_partition,
    resting_customers,
)
from jobs.model import policy
from jobs.model.effects import training_effects
from jobs.model.portable import PortableModel, output_columns, serving_problem
from jobs.names import (
    AUDIENCE,
    AUDIENCE_SUMMARY,
    SCORING_SET,
    constant_policy,
    expected_uplift_column,
    key,
    model_policy,
    of_outcome,
    p_column,
    uplift_column,
    uplift_high_column,
)
from jobs.runtime.spark import start_python_workers
from jobs.settings import Settings


def prediction_columns(settings: Settings) -> list[str]:
    """p_ of every arm and outcome, uplift_ of every treatment and outcome, uplift_high_ of the guardrails."""
    exp, targeting = settings.experiment, settings.targeting
    return output_columns(exp.control, exp.arms, list(targeting.outcomes), list(targeting.guardrails))


def prediction_schema(settings: Settings) -> StructType:
    """customer_id, then prediction_columns (doubles)."""
    fields = [StructField(c, DoubleType()) for c in prediction_columns(settings)]
    return StructType([StructField("customer_id", StringType()), *fields])


log = logging.getLogger(__name__)
# Grid prices per Spark pass of the guardrail price search: each price costs the workers a
# choice over every row, each pass a job over the persisted audience.
SEARCH_CHUNK = 32


def _predicted(model: PortableModel, settings: Settings) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Batches of features -> batches of prediction_schema's columns (the boosters loaded once per partition)."""
    columns = [f.name for f in prediction_schema(settings)]

    def predict_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        boosters = model.load()
        for batch in batches:
            predicted = model.predict(batch, boosters, num_threads=1)
            predicted.insert(0, "customer_id", batch["customer_id"])
            yield predicted[columns]

    return predict_batches


def _choice_schema(scored: StructType, settings: Settings, excess: bool = False) -> StructType:
    """scored's columns and policy.choice_columns (the arm a string, the rest doubles), and with
    excess policy.excess_columns."""
    targeting = settings.targeting
    extra = [
        StructField(c, StringType() if c == "recommended_arm" else DoubleType())
        for c in [*policy.choice_columns(targeting), *(policy.excess_columns(targeting) if excess else [])]
    ]
    return StructType([*scored.fields, *extra])


def guardrail_prices(scored: DataFrame, settings: Settings) -> dict[str, float]:
    """policy.search_prices over the whole scored audience (persisted by the caller).

    Each Spark pass sums, per price of a chunk of the grid (SEARCH_CHUNK prices, in order), the
    excess of the sent over the campaign limit in the workers (policy.price_excess on each
    batch); only the chunk's sums reach the driver, and the search stops at the first chunk
    that holds a price within the limit.
    """
    targeting, arms = settings.targeting, settings.experiment.arms

    def total_excess(outcome: str, grid, prices: dict):
        def excess(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for batch in batches:
                values = policy.price_excess(batch, targeting, arms, outcome, grid, prices)
                yield pd.DataFrame({"i": range(len(grid)), "excess": values})

        sums = scored.mapInPandas(excess, "i long, excess double").groupBy("i").agg(F.sum("excess").alias("e"))
        totals = dict(sums.collect())
        return pd.Series([totals.get(i, 0.0) for i in range(len(grid))]).to_numpy()

    return policy.search_prices(targeting, total_excess, chunk=SEARCH_CHUNK)


def apply_policy(
    scored: DataFrame,
    settings: Settings,
    run_date: date,
    model: PortableModel | None = None,
    resting: DataFrame | None = None,
) -> DataFrame:
    """Add recommended_arm, expected uplift and net value, rank, decile, selected and holdout.

    scored: the uplifts (prediction_schema's columns); with model, the features it predicts them
    from, in the same pass of the workers as the choice. Campaign limits: the choice is made with
    every guardrail price at 0, with the sent's excess over each limit beside it (persisted);
    when a limit does not hold, policy.search_prices runs over the persisted predictions and the
    choice is made again at its prices. Either way it is search_prices' choice, and a limit that
    does not bind costs no search.
    """
    targeting, arms = settings.targeting, settings.experiment.arms
    if model is not None:  # one that can serve these features and arms (serving_problem: score checks it)
        scored = scored.select("customer_id", *model.numeric, *model.categories)
    uplifts = prediction_schema(settings) if model is not None else scored.schema
    excess = policy.excess_columns(targeting)

    def choosing(prices: dict, predict: bool, with_excess: bool):
        def choose(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for batch in _predicted(model, settings)(batches) if predict else batches:
                yield policy.choose(batch, targeting, arms, run_date, prices, excess=with_excess)

        return choose

    unpriced = dict.fromkeys(policy.limited_outcomes(targeting), 0.0)
    first = choosing(unpriced, model is not None, bool(excess))
    chosen = scored.mapInPandas(first, _choice_schema(uplifts, settings, bool(excess)))
    if excess:
        chosen = chosen.persist()  # read by the limits' sums, and by the search if one does not hold
        totals = chosen.agg(*[F.sum(c).alias(c) for c in excess]).first()
        if all((totals[c] or 0.0) <= policy.WITHIN_LIMIT for c in excess):
            log.info("guardrail prices: %s (every campaign limit holds unpriced)", unpriced)
            chosen = chosen.drop(*excess)
        else:
            predictions = chosen.select(*uplifts.fieldNames())
            prices = guardrail_prices(predictions, settings)
            log.info("guardrail prices: %s", prices)
            chosen = predictions.mapInPandas(choosing(prices, False, False), _choice_schema(uplifts, settings))
    return rank_and_select(chosen, settings, resting)


def rank_and_select(chosen: DataFrame, settings: Settings, resting: DataFrame | None = None) -> DataFrame:
    """Rank by expected net value, deciles, then the policy's budget and holdout rules; a resting
    customer (resting: their customer_id, jobs.data.lake.resting_customers) is never selected."""
    targeting = settings.targeting
    by_value = Window.orderBy(F.col("expected_net_value").desc(), F.col("customer_id"))
    so_far = by_value.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    if resting is None:
        chosen = chosen.withColumn("resting", F.lit(False))
    else:
        flagged = resting.withColumn("resting", F.lit(True))
        chosen = chosen.join(flagged, "customer_id", "left").fillna(False, subset=["resting"])
    recommended = (F.col("recommended_arm") != policy.NONE) & ~F.col("resting")
    out = chosen.withColumn("rank", F.row_number().over(by_value)).withColumn("decile", F.ntile(10).over(by_value))
    selected = policy.within_budget(
        recommended, F.sum(recommended.cast("int")).over(so_far), F.sum("send_cost").over(so_far), targeting
    )
    out = out.withColumn("selected", selected)
    holdout = policy.is_holdout(F.col("selected"), F.col("holdout_draw"), targeting)
    return out.withColumn("holdout", holdout).drop("holdout_draw")


def _outcome_columns(settings: Settings) -> list:
    """The audience's columns of the further outcomes: the chosen arm's uplift, then every arm's
    probabilities, uplifts and (guardrails) upper bounds."""
    exp, targeting = settings.experiment, settings.targeting
    columns = [expected_uplift_column(o) for o in targeting.outcomes]
    for o in targeting.outcomes:
        columns += [p_column(a, o) for a in exp.all_arms] + [uplift_column(a, o) for a in exp.arms]
        if o in targeting.guardrails:
            columns += [uplift_high_column(a, o) for a in exp.arms]
    return [F.col(c) for c in columns]


def _with_draw(frame: DataFrame, run_date: date) -> DataFrame:
    """frame with the policy's stable holdout draw per customer (computed by jobs.model.policy itself)."""
    schema = StructType([*frame.schema.fields, StructField("holdout_draw", DoubleType())])

    def draw(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield batch.assign(holdout_draw=policy.holdout_draw(batch["customer_id"], run_date))

    return frame.mapInPandas(draw, schema)


def with_assignment(audience: DataFrame, settings: Settings, run_date: date, explore: float) -> DataFrame:
    """audience with policy.assign's record (policy.ASSIGNMENT_COLUMNS) and `holdout` true for the
    holdout route alone (a selected customer may explore instead)."""
    exp, targeting = settings.experiment, settings.targeting
    schema = StructType(
        [
            *audience.schema.fields,
            StructField("assignment", StringType()),
            StructField("assigned_arm", StringType()),
            StructField("propensity", DoubleType()),
            StructField("inclusion_probability", DoubleType()),
            StructField("route_probability", DoubleType()),
        ]
    )

    def assign(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield policy.assign(batch, targeting, exp.control, exp.expected_split, run_date, explore)

    return audience.mapInPandas(assign, schema).withColumn("holdout", F.col("assignment") == policy.HOLDOUT)


def constant_audience(
    features: DataFrame, settings: Settings, run_date: date, resting: DataFrame | None = None
) -> tuple[DataFrame, str, list[str]]:
    """The best constant policy over the scoring set: everyone eligible gets one arm, or no one.

    Every arm's uplift column holds its average effect (what a campaign manager can expect of
    it for anyone); p_* are null: there is no model. A budget takes customers in customer_id order.
    """
    exp, targeting = settings.experiment, settings.targeting
    effects = training_effects(settings, run_date)
    arm, reasons = policy.best_constant(effects, targeting)
    send = arm != policy.NONE
    ate = effects[arm]["ate"] if send else 0.0
    net = policy.constant_net(effects, targeting, arm)[0] if send else 0.0
    cost = targeting.cost_per_send[arm] if send else 0.0
    every = [None, *targeting.outcomes]
    chosen = _with_draw(features.select("customer_id"), run_date).select(
        "customer_id",
        "holdout_draw",
        F.lit(arm).alias("recommended_arm"),
        F.lit(float(ate)).alias("expected_uplift"),
        F.lit(float(net)).alias("expected_net_value"),
        F.lit(float(cost)).alias("send_cost"),
        *[
            F.lit(float(effects[key(arm, o)]["ate"]) if send else 0.0).alias(expected_uplift_column(o))
            for o in targeting.outcomes
        ],
        *[F.lit(float(effects[key(a, o)]["ate"])).alias(uplift_column(a, o)) for o in every for a in exp.arms],
        *[
            F.lit(float(effects[key(a, o)]["high"])).alias(uplift_high_column(a, o))
            for o in targeting.guardrails
            for a in exp.arms
        ],
        *[F.lit(None).cast("double").alias(p_column(a, o)) for o in every for a in exp.all_arms],
    )
    return rank_and_select(chosen, settings, resting), arm, reasons


def score(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Score run_date's scoring set; publish audience and audience_summary.

    With a champion: its uplifts and the targeting policy (policy `model:<version>`). Without
    one (no model has passed the gate yet), or with a champion that cannot serve this experiment
    (its features or arms differ from tonight's: it refuses, naming them), the best constant
    policy (`constant:<arm|none>`).
    """
    features = read_partition(spark, settings, SCORING_SET, run_date)
    # The workers start and import LightGBM while MLflow loads here and resolves the champion.
    workers = start_python_workers(
        features.select("customer_id"), ("lightgbm", "jobs.model.policy", "jobs.model.portable")
    )
    champion, model, reasons = _serving_model(settings, run_date, features.columns)
    name, exp = settings.mlflow.registered_model, settings.experiment
    workers.result()
    resting = resting_customers(spark, settings, run_date) if settings.contact_window_days else None
    if model is None:
        audience, arm, constant_reasons = constant_audience(features, settings, run_date, resting)
        reasons += constant_reasons
        label, model_name, model_version = constant_policy(arm), None, None
        log.warning("publishing the constant policy %s: %s", label, "; ".join(reasons))
    else:
        audience = apply_policy(features, settings, run_date, model, resting)
        label, model_name, model_version = model_policy(champion.version), name, str(champion.version)
    eligible = features.count() if policy.budgeted_sends(settings.targeting, exp.arms) is not None else 0
    explore = policy.exploration_probability(settings.targeting, exp.arms, eligible)
    audience = with_assignment(audience, settings, run_date, explore)
    # A date published before keeps that audience (what was sent) as a version; the new one is sent
    # under a campaign id of its own, so the sends of each come back to the right record.
    version = next_version(settings, AUDIENCE, run_date)
    campaign_id = settings.export.campaign_of(run_date) + (f"_v{version}" if version > 1 else "")
    audience = _published_columns(audience, settings, campaign_id, label, model_name, model_version)
    path = publish_partition(audience, settings, AUDIENCE, run_date, keep=True)
    published = spark.read.parquet(str(path))
    _publish_summary(published, settings, run_date, label, model_version)
    guardrails = _guardrail_totals(published, settings)
    counts, assignments = _counts(published)
    spark.catalog.clearCache()  # the scored audience the guardrail price search persisted
    return {
        "audience": str(path),
        "summary": str(partition_dir(settings, AUDIENCE_SUMMARY, run_date)),
        "rows": sum(counts.values()),
        "recommended": counts,
        "campaign_id": campaign_id,
        "version": version,
        "exploration_probability": explore,
        "assignments": dict(sorted(assignments.items())),
        "policy": label,
        "model_version": model_version,
        **({"guardrails": guardrails} if guardrails else {}),
        **({"constant_policy_reasons": reasons} if reasons else {}),
    }


def _published_columns(
    audience: DataFrame, settings: Settings, campaign_id: str, label: str, model_name, model_version
) -> DataFrame:
    """The audience table's columns, in their published order, with the night's policy and model."""
    exp = settings.experiment
    return audience.select(
        "customer_id",
        "recommended_arm",
        "selected",
        "holdout",
        "resting",
        *policy.ASSIGNMENT_COLUMNS,
        F.lit(campaign_id).alias("campaign_id"),
        "expected_uplift",
        "expected_net_value",
        "send_cost",
        "rank",
        "decile",
        F.col(p_column(exp.control)).alias("p_control"),
        *[F.col(p_column(a)) for a in exp.arms],
        *[F.col(uplift_column(a)) for a in exp.arms],
        *_outcome_columns(settings),
        F.lit(label).alias("policy"),
        F.lit(model_name).cast("string").alias("model_name"),
        F.lit(model_version).cast("string").alias("model_version"),
        F.lit(datetime.now(UTC)).cast("timestamp").alias("scored_at"),
    )


def _serving_model(settings: Settings, run_date: date, columns: list[str]):
    """(champion, its portable model, reasons): the version that serves run_date (on a backfill, the
    one that served that date) and its model, or no model with the reasons (none has passed the
    gate, or the champion cannot serve tonight's features and arms)."""
    from jobs.model.registry import portable_model, serving_version

    exp = settings.experiment
    champion = serving_version(settings, run_date)
    if champion is None:
        return None, None, ["no model has passed the gate yet"]
    model = portable_model(settings, champion.version)
    problem = serving_problem(columns, model, exp.control, exp.arms, settings.targeting.outcomes)
    if problem:
        return champion, None, [f"champion v{champion.version} cannot serve tonight: {problem}"]
    return champion, model, []


def _publish_summary(published: DataFrame, settings: Settings, run_date: date, label: str, model_version) -> None:
    """audience_summary: per recommended arm, the customers, sends, holdout and explore rows and the
    expected incremental responses, net value and spend of the targeted sends."""
    sent = F.col("assignment") == policy.TARGET
    summary = (
        published.where("selected")
        .groupBy("recommended_arm")
        .agg(
            F.count("*").alias("customers"),
            F.sum(sent.cast("int")).alias("sends"),
            F.sum(F.col("holdout").cast("int")).alias("holdout"),
            F.sum((F.col("assignment") == policy.EXPLORE).cast("int")).alias("explore"),
            F.sum(F.when(sent, F.col("expected_uplift")).otherwise(0.0)).alias("expected_incremental_responses"),
            F.sum(F.when(sent, F.col("expected_net_value")).otherwise(0.0)).alias("expected_net_value"),
            F.sum(F.when(sent, F.col("send_cost")).otherwise(0.0)).alias("spend"),
            *[
                F.sum(F.when(sent, F.col(expected_uplift_column(o))).otherwise(0.0)).alias(
                    of_outcome("expected_incremental", o)
                )
                for o in settings.targeting.outcomes
            ],
        )
        .withColumn("policy", F.lit(label))
        .withColumn("model_version", F.lit(model_version).cast("string"))
    )
    publish_partition(summary.coalesce(1), settings, AUDIENCE_SUMMARY, run_date, keep=True)


def _guardrail_totals(published: DataFrame, settings: Settings) -> dict:
    """Each guardrail outcome's expected increase over the targeted sends, in all and per send."""
    guardrails = settings.targeting.guardrails
    if not guardrails:
        return {}
    totals = (
        published.where(F.col("assignment") == policy.TARGET)
        .agg(
            F.count("*").alias("sends"),
            *[F.sum(expected_uplift_column(o)).alias(o) for o in settings.targeting.guardrails],
        )
        .first()
    )
    return {
        o: {
            "expected_increase": float(totals[o] or 0.0),
            "per_send": float(totals[o] or 0.0) / totals["sends"] if totals["sends"] else 0.0,
        }
        for o in guardrails
    }


def _counts(published: DataFrame) -> tuple[dict, dict]:
    """Rows per recommended arm, and per assignment route (`<assignment>:<assigned arm>`)."""
    counts, assignments = {}, {}
    for row in published.groupBy("recommended_arm", "assignment", "assigned_arm").count().collect():
        counts[row["recommended_arm"]] = counts.get(row["recommended_arm"], 0) + row["count"]
        route = f"{row['assignment']}:{row['assigned_arm']}" if row["assigned_arm"] else row["assignment"]
        assignments[route] = assignments.get(route, 0) + row["count"]
    return counts, assignments
