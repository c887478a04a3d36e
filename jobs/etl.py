"""Point-in-time ETL: raw sends, responses and users into the training and scoring sets.

Every feature of a row is computed as of an anchor time from data strictly before it:
- a training row is a matured send (`date(sent_at) <= run_date - attribution_window_days`),
  anchored at `sent_at`, labelled 1 when a qualifying response follows within the window;
  each further outcome (`targeting.outcomes`) has its own label column, `label__<outcome>`,
  from its response types within its own window, and null on the sends that window has not
  yet matured for (`outcome_labels`);
- a scoring row is an eligible customer of the run date's users snapshot, anchored at the
  end of the run date.
User attributes come from the latest snapshot dated before the anchor's day. Which attributes
and history features are computed is the feature spec's (`features:` in conf, jobs.features).
Nothing about the send itself (its arm, its outcome) enters a feature.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import NamedTuple

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.features import FeatureSpec
from jobs.lake import MissingInputError, publish_partition, raw_partitions, read_raw
from jobs.settings import Settings
from jobs.tlearner import label_column

# The send's columns the training set carries next to its features (never features themselves).
TRAINING_KEYS = ["send_id", "customer_id", "campaign_id", "sent_at", "arm", "label"]


def training_keys(settings: Settings) -> list[str]:
    """TRAINING_KEYS and the label of every further outcome."""
    return [*TRAINING_KEYS, *(label_column(o) for o in settings.targeting.outcomes)]


SCORING_KEYS = ["customer_id"]


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


def _snapshot_pairs(snapshot_days: list[date], anchor_days: list[date]) -> list[tuple[date, date]]:
    """(anchor_day, snapshot_dt): the latest users snapshot dated strictly before anchor_day."""
    pairs = []
    for day in anchor_days:
        earlier = [d for d in snapshot_days if d < day]
        if earlier:
            pairs.append((day, earlier[-1]))
    return pairs


def _snapshot_for(spark: SparkSession, pairs: list[tuple[date, date]]) -> DataFrame:
    return spark.createDataFrame(pairs, "anchor_day date, snapshot_dt date")


def _on_snapshot(spec: FeatureSpec, name: str) -> Column:
    """What the users snapshot row alone gives of an attribute: the value, its derivation (but
    days_since, which needs the anchor's as_of), computed before the join so it carries less."""
    a, column = spec.attributes[name], F.col(f"`{spec.source_column(name)}`")
    if a.derive == "email_domain":  # without an '@' there is no domain: null, never the value itself
        return F.when(F.instr(column, "@") > 0, F.lower(F.substring_index(column, "@", -1)))
    return column


def _attribute(spec: FeatureSpec, name: str, column: Column) -> Column:
    """A feature from its snapshot value (_on_snapshot), joined to the anchor (with `as_of`)."""
    if spec.attributes[name].derive == "days_since":
        return F.datediff(F.to_date("as_of"), column).alias(name)
    return column.alias(name)


def _history(anchors: DataFrame, sends: DataFrame, qualifying: DataFrame, spec: FeatureSpec) -> DataFrame | None:
    """Per anchor_id, the aggregates of its customer's sends and qualifying responses strictly
    before as_of, each over its own window: `_sends_<w>d`, `previous_arm`, `_responses_<w>d`,
    `_last_response` (those the spec's history features need; None when it needs none).

    One pass: anchors and events, unioned, are sorted once per customer by time, and every
    aggregate is a range window ending 1 microsecond before the row (strictly before) and
    starting `w` days earlier (inclusive), read off at the anchor rows. A join of anchors to
    events would pair every anchor with every event of its customer, then group them again.
    """
    h = spec.history
    send_windows = sorted({*h.n_sends, *h.response_rate})
    response_windows = sorted({*h.n_responses, *h.response_rate})
    wants_sends, wants_responses = (
        bool(send_windows or h.previous_arm),
        bool(response_windows or h.days_since_last_response),
    )
    if not (wants_sends or wants_responses):
        return None
    none = F.lit(None).cast("string")
    rows = anchors.select(
        "customer_id", F.col("as_of").alias("at"), none.alias("arm"), F.lit(0).alias("_kind"), "anchor_id"
    )
    if wants_sends:
        rows = rows.unionByName(
            sends.select(
                "customer_id", F.col("sent_at").alias("at"), "arm", F.lit(1).alias("_kind"), none.alias("anchor_id")
            )
        )
    if wants_responses:
        rows = rows.unionByName(
            qualifying.select(
                "customer_id",
                F.col("responded_at").alias("at"),
                none.alias("arm"),
                F.lit(2).alias("_kind"),
                none.alias("anchor_id"),
            )
        )
    rows = rows.where(F.col("customer_id").isNotNull() & F.col("at").isNotNull())
    by_time = Window.partitionBy("customer_id").orderBy(F.unix_micros("at"))

    def before(days: int) -> Window:
        return by_time.rangeBetween(-days * 86_400_000_000, -1)

    is_send, is_response = F.col("_kind") == 1, F.col("_kind") == 2
    aggs = [F.sum(is_send.cast("long")).over(before(w)).alias(f"_sends_{w}d") for w in send_windows]
    if h.previous_arm:
        latest = F.max(F.when(is_send, F.struct(F.col("at").alias("sent_at"), "arm"))).over(before(h.previous_arm))
        aggs.append(latest["arm"].alias("previous_arm"))
    aggs += [F.sum(is_response.cast("long")).over(before(w)).alias(f"_responses_{w}d") for w in response_windows]
    if h.days_since_last_response:
        last = F.max(F.when(is_response, F.col("at"))).over(before(h.days_since_last_response))
        aggs.append(last.alias("_last_response"))
    return rows.select("anchor_id", "_kind", *aggs).where(F.col("_kind") == 0).drop("_kind")


def point_in_time_features(
    anchors: DataFrame,
    users: DataFrame,
    sends: DataFrame,
    qualifying: DataFrame,
    snapshots: DataFrame,
    spec: FeatureSpec,
    carry: list[str] = (),
) -> DataFrame:
    """Add the spec's features to anchors (`anchor_id`, `customer_id`, `as_of`, `anchor_day`, and
    the `carry` columns, kept as they are).

    users: the snapshots (with `dt`) the anchors use (`snapshots`: anchor_day -> snapshot_dt);
    sends and qualifying responses: deduplicated history. Anchors without a users snapshot
    before their day are dropped.
    """
    a = anchors.join(F.broadcast(snapshots), "anchor_day")
    attrs = users.select(
        "customer_id",
        F.col("dt").alias("snapshot_dt"),
        *[_on_snapshot(spec, name).alias(f"_attr_{name}") for name in spec.attributes],
    )
    a = a.alias("a").join(attrs.alias("u"), ["customer_id", "snapshot_dt"])
    a = a.select(
        "anchor_id",
        "customer_id",
        "as_of",
        *carry,
        *[_attribute(spec, name, F.col(f"u._attr_{name}")) for name in spec.attributes],
    )

    h = spec.history
    send_windows = sorted({*h.n_sends, *h.response_rate})
    response_windows = sorted({*h.n_responses, *h.response_rate})
    history = _history(anchors.select("anchor_id", "customer_id", "as_of"), sends, qualifying, spec)
    if history is not None:
        a = a.join(history, "anchor_id", "left")
    zeros = [f"_sends_{w}d" for w in send_windows] + [f"_responses_{w}d" for w in response_windows]
    a = a.fillna(0, subset=zeros)
    derived = {f"n_sends_{w}d": F.col(f"_sends_{w}d") for w in h.n_sends}
    derived |= {f"n_responses_{w}d": F.col(f"_responses_{w}d") for w in h.n_responses}
    derived |= {
        f"response_rate_{w}d": F.when(F.col(f"_sends_{w}d") > 0, F.col(f"_responses_{w}d") / F.col(f"_sends_{w}d"))
        for w in h.response_rate
    }
    if h.days_since_last_response:
        derived["days_since_last_response"] = _days_between(F.col("as_of"), F.col("_last_response"))
    if h.previous_arm:
        derived["previous_arm"] = F.coalesce(F.col("previous_arm"), F.lit("none"))
    return a.select(
        "anchor_id",
        "customer_id",
        "as_of",
        *carry,
        *[derived[name].alias(name) if name in derived else F.col(name) for name in spec.names],
    )


def label_sends(sends: DataFrame, qualifying: DataFrame, window_days: int, name: str = "label") -> DataFrame:
    """`name` = 1 when the customer made a qualifying response within the window after sent_at."""
    window_end = F.col("s.sent_at") + F.expr(f"INTERVAL {window_days} DAYS")
    hits = (
        sends.alias("s")
        .join(qualifying.alias("r"), "customer_id")
        .where((F.col("r.responded_at") > F.col("s.sent_at")) & (F.col("r.responded_at") <= window_end))
        .select("s.send_id")
        .distinct()
        .withColumn(name, F.lit(1))
    )
    return sends.join(hits, "send_id", "left").fillna(0, subset=[name])


def outcome_labels(sends: DataFrame, responses: DataFrame, settings: Settings, run_date: date) -> DataFrame:
    """sends with `label__<outcome>` for every further outcome: 1 / 0 within the outcome's own
    window, null where that window has not matured by run_date (the send is too recent to know)."""
    for outcome, spec in settings.targeting.outcomes.items():
        column = label_column(outcome)
        responded = responses.where(F.col("response_type").isin(spec.response_types)).select(
            "customer_id", "responded_at"
        )
        sends = label_sends(sends, responded, spec.window_days, column)
        known = F.to_date("sent_at") <= F.lit(run_date - timedelta(days=spec.window_days))
        sends = sends.withColumn(column, F.when(known, F.col(column)))
    return sends


class History(NamedTuple):
    """The sends and responses delivered up to a run date, one row per id (`dedupe`), cached."""

    sends: DataFrame
    responses: DataFrame
    delivered: dict[str, int]  # rows read, per source

    def duplicates_removed(self) -> dict[str, int]:
        """Rows read of sends and responses, and how many of them `dedupe` dropped."""
        counts = {}
        for source, frame in (("sends", self.sends), ("responses", self.responses)):
            counts[f"raw_{source}_rows"] = self.delivered[source]
            counts[f"duplicate_{source}_removed"] = self.delivered[source] - frame.count()
        return counts


def read_history(spark: SparkSession, settings: Settings, run_date: date) -> History:
    """Sends and responses up to run_date, deduplicated once for the labels and both feature sets."""
    sends = read_raw(spark, settings, "sends", run_date)
    responses = read_raw(spark, settings, "responses", run_date)
    return History(
        sends=dedupe(sends, "send_id", ["dt", "sent_at", "customer_id", "arm"]).drop("dt").persist(),
        responses=dedupe(responses, "response_id", ["dt", "responded_at", "customer_id"]).drop("dt").persist(),
        delivered={"sends": sends.count(), "responses": responses.count()},  # from the files' footers
    )


def build_sets(
    spark: SparkSession, settings: Settings, run_date: date, history: History | None = None
) -> tuple[DataFrame, DataFrame]:
    """The training set (matured, labelled sends) and the scoring set of run_date (from `history`,
    read here unless given)."""
    exp, spec = settings.experiment, settings.features
    snapshot_days = [date.fromisoformat(p.name[3:]) for p in raw_partitions(settings, "users", run_date)]
    if not snapshot_days:
        read_raw(spark, settings, "users", run_date)  # raises MissingInputError, naming the source
    if history is None:
        history = read_history(spark, settings, run_date)
    end_of_day = F.lit(run_date + timedelta(days=1)).cast("timestamp")
    sends = history.sends.where(F.col("sent_at") < end_of_day)
    responses = history.responses.where(F.col("responded_at") < end_of_day)
    qualifying = responses.where(F.col("response_type").isin(exp.qualifying_response_types)).select(
        "customer_id", "responded_at"
    )
    last_matured = run_date - timedelta(days=exp.attribution_window_days)
    matured = label_sends(
        sends.where(F.to_date("sent_at") <= F.lit(last_matured)), qualifying, exp.attribution_window_days
    )
    matured = outcome_labels(matured, responses, settings, run_date)
    matured = matured.persist()  # read twice: its days, the anchors
    send_days = [row.d for row in matured.select(F.to_date("sent_at").alias("d")).distinct().collect()]
    keys = training_keys(settings)
    carry = ["campaign_id", "arm", *keys[5:]]  # the send's own columns: never features
    training_anchors = matured.select(
        F.col("send_id").alias("anchor_id"),
        "customer_id",
        F.col("sent_at").alias("as_of"),
        F.to_date("sent_at").alias("anchor_day"),
        *carry,
    )
    training_pairs = _snapshot_pairs(snapshot_days, send_days)
    _require_snapshots(settings, snapshot_days, send_days)
    # Only the snapshots some anchor uses are read (the scoring set: the latest alone).
    training_users = read_raw(
        spark, settings, "users", run_date, days={dt for _, dt in training_pairs} or {max(snapshot_days)}
    )
    training = point_in_time_features(
        training_anchors, training_users, sends, qualifying, _snapshot_for(spark, training_pairs), spec, carry
    )
    training = training.withColumnRenamed("anchor_id", "send_id").withColumnRenamed("as_of", "sent_at")
    training = training.select(*keys, *spec.names)

    scoring_day = run_date + timedelta(days=1)
    latest = read_raw(spark, settings, "users", run_date, days={max(snapshot_days)})
    _check_eligibility(spark, latest, spec.eligibility)
    scoring_anchors = latest.where(spec.eligibility).select(
        F.col("customer_id").alias("anchor_id"),
        "customer_id",
        F.lit(scoring_day).cast("timestamp").alias("as_of"),
        F.lit(scoring_day).alias("anchor_day"),
    )
    scoring = point_in_time_features(
        scoring_anchors,
        latest,
        sends,
        qualifying,
        _snapshot_for(spark, _snapshot_pairs(snapshot_days, [scoring_day])),
        spec,
    ).select(*SCORING_KEYS, *spec.names)
    return training, scoring


def _check_eligibility(spark: SparkSession, users: DataFrame, condition: str) -> None:
    """The eligibility rule may use only the users columns the spec reads (mapped and typed).

    Checked on an empty frame of the same schema: on the real one, Spark would quietly resolve
    an undeclared column from the raw files, under its delivered name and type.
    """
    try:
        spark.createDataFrame([], users.schema).where(condition)
    except AnalysisException as err:
        raise ValueError(
            f"features.eligibility '{condition}' cannot be evaluated on the users columns the feature spec reads "
            f"{[c for c in users.columns if c != 'dt']}: {str(err).splitlines()[0]}. Use those columns, or declare "
            "the one it needs in features.attributes."
        ) from None


def _require_snapshots(settings: Settings, snapshot_days: list[date], send_days: list[date]) -> None:
    """Fail clearly when matured sends exist but none has a users snapshot dated before its day."""
    if send_days and not any(d < max(send_days) for d in snapshot_days):
        raise MissingInputError(
            f"raw source 'users': no snapshot is dated before any matured send day (send days "
            f"{min(send_days)}..{max(send_days)}, snapshots {[str(d) for d in snapshot_days]}): a send's "
            "attributes come from the latest snapshot dated strictly before its day (the state it was "
            f"targeted from). Land that snapshot under {settings.paths.lake / 'raw' / 'users'}/dt=<day before>."
        )


def run_etl(spark: SparkSession, settings: Settings, run_date: date) -> dict[str, int]:
    """Build and publish features/training and features/scoring for run_date."""
    history = read_history(spark, settings, run_date)
    training, scoring = build_sets(spark, settings, run_date, history)
    try:
        training_path = publish_partition(training.repartition(4), settings, "features/training", run_date)
        scoring_path = publish_partition(scoring.repartition(4), settings, "features/scoring", run_date)
        duplicates = history.duplicates_removed()
    finally:
        spark.catalog.clearCache()  # the history and the sets' intermediate caches of build_sets
    return {
        "training_rows": spark.read.parquet(str(training_path)).count(),
        "scoring_rows": spark.read.parquet(str(scoring_path)).count(),
        **duplicates,
    }
