"""Point-in-time ETL: raw sends, responses and users into the training and scoring sets.

Every feature of a row is computed as of an anchor time from data strictly before it:
- a training row is a matured send (`date(sent_at) <= run_date - attribution_window_days`),
  anchored at `sent_at`, labelled 1 when a qualifying response follows within the window;
  each further outcome (`targeting.outcomes`) has its own label column, `label__<outcome>`,
  from its response types within its own window, and null on the sends that window has not
  yet matured for (`_timeline`);
  With `training.rows_per_arm`, only the latest matured sends are training rows: back to the
  day by which every arm has that many (`window_start`); the earlier ones still count in the
  history features;
- a scoring row is an eligible customer of the run date's users snapshot, anchored at the
  end of the run date.
User attributes come from the latest snapshot dated before the anchor's day. Which attributes
and history features are computed is the feature spec's (`features:` in conf, jobs.features).
Nothing about the send itself (its arm, its outcome) enters a feature.

Every training row also says how its arm was assigned and with what probability (ASSIGNMENT_KEYS):
a randomized campaign's share of the arm, or, for a campaign the pipeline published itself
(export.campaign_id), the propensity its audience recorded (jobs.model.policy.assign), which training,
diagnostics and the gate weigh the send by.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.data.lake import (
    MissingInputError,
    assignment_records,
    own_campaigns,
    partition_date,
    publish_partition,
    raw_partitions,
    read_raw,
)
from jobs.features import FeatureSpec
from jobs.names import RANDOMIZED, SCORING_SET, TRAINING_SET, label_column
from jobs.settings import Experiment, Settings

# The send's columns the training set carries next to its features (never features themselves).
TRAINING_KEYS = ["send_id", "customer_id", "campaign_id", "sent_at", "arm", "label"]
# How the send's arm was assigned: `randomized` (a randomized campaign, propensity = its split's share
# of the arm, inclusion 1) or the own audience's record (jobs.model.policy.assign: target, holdout, explore).
ASSIGNMENT_KEYS = ["assignment", "propensity", "inclusion_probability"]


def training_keys(settings: Settings) -> list[str]:
    """TRAINING_KEYS, the label of every further outcome, then ASSIGNMENT_KEYS."""
    return [*TRAINING_KEYS, *(label_column(o) for o in settings.targeting.outcomes), *ASSIGNMENT_KEYS]


def split_share(exp: Experiment, campaign: Column, arm: Column) -> Column:
    """The randomization share of a send's arm in its campaign (campaign_splits, else expected_split)."""
    default = F.create_map(*[F.lit(x) for a, share in exp.expected_split.items() for x in (a, float(share))])
    share = default[arm]
    if exp.campaign_splits:
        own = F.create_map(
            *[
                F.lit(x)
                for c, split in exp.campaign_splits.items()
                for a, v in split.items()
                for x in (f"{c}|{a}", float(v))
            ]
        )
        declared = F.array(*[F.lit(c) for c in exp.campaign_splits])
        share = F.when(
            F.array_contains(declared, campaign), F.coalesce(own[F.concat_ws("|", campaign, arm)], F.lit(0.0))
        ).otherwise(share)
    return share


def with_assignment(spark: SparkSession, training: DataFrame, campaigns: dict[str, Path], exp: Experiment) -> DataFrame:
    """training with ASSIGNMENT_KEYS: a send of an own campaign (campaigns: campaign_id -> its audience,
    jobs.data.lake.own_campaigns) takes its audience's record (by campaign and customer; null when the
    audience has no such row, which validation refuses), any other its split's share."""
    randomized = {
        "assignment": F.lit(RANDOMIZED),
        "propensity": split_share(exp, F.col("campaign_id"), F.col("arm")),
        "inclusion_probability": F.lit(1.0),
    }
    if not campaigns:
        return training.select("*", *[column.alias(name) for name, column in randomized.items()])
    records = assignment_records(spark, campaigns)
    record = records.select("campaign_id", "customer_id", *[F.col(c).alias(f"_own_{c}") for c in ASSIGNMENT_KEYS])
    own = F.col("campaign_id").isin(list(campaigns))
    return training.join(record, ["campaign_id", "customer_id"], "left").select(
        *training.columns,
        *[F.when(own, F.col(f"_own_{name}")).otherwise(column).alias(name) for name, column in randomized.items()],
    )


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


def _history_columns(spec: FeatureSpec) -> list[str]:
    """The aggregates `_timeline` computes for the spec's history features, by name."""
    h = spec.history
    return [
        *(f"_sends_{w}d" for w in sorted({*h.n_sends, *h.response_rate})),
        *(["previous_arm"] if h.previous_arm else []),
        *(f"_responses_{w}d" for w in sorted({*h.n_responses, *h.response_rate})),
        *(["_last_response"] if h.days_since_last_response else []),
    ]


def _timeline(
    sends: DataFrame,
    responses: DataFrame,
    scoring_anchors: DataFrame,
    settings: Settings,
    run_date: date,
    first_day: date | None = None,
) -> DataFrame:
    """Both sets' anchors with their labels and history aggregates, from one pass over time.

    The deduplicated sends and responses up to run_date and the scoring anchors, unioned, are
    sorted once per customer by time; every figure is a range window over the customer's rows:
    - history (`_history_columns`): a window ending 1 microsecond before the row (strictly
      before as_of) and starting `w` days earlier (inclusive);
    - labels: a window starting 1 microsecond after the row and ending `window_days` later
      (inclusive): `label` = a qualifying response in it, `label__<outcome>` = a response of
      that outcome's types in its own window, null on the sends that window has not matured for.
    A matured send (`date(sent_at) <= run_date - attribution_window_days`, and not before
    first_day: `window_start`) is its own training anchor (as_of = sent_at) and reads its figures
    off its own row; the sends before first_day still count in the history of later rows. Returned: the matured sends
    (`scoring` false: send_id as anchor_id, campaign_id, arm, the labels) and the scoring anchors
    (`scoring` true), each with `customer_id`, `as_of` and the aggregates. A join of anchors to
    events would pair every anchor with every event of its customer, then group them again.
    """
    exp, h = settings.experiment, settings.features.history
    outcomes = {None: (exp.qualifying_response_types, exp.attribution_window_days)} | {
        name: (o.response_types, o.window_days) for name, o in settings.targeting.outcomes.items()
    }
    flags = [f"_is_{i}" for i in range(len(outcomes))]  # a response of outcome i's types
    rows = _events(sends, responses, scoring_anchors, flags, [types for types, _ in outcomes.values()])
    rows = rows.where(F.col("customer_id").isNotNull() & F.col("at").isNotNull())
    by_time = Window.partitionBy("customer_id").orderBy(F.unix_micros("at"))
    is_send = F.col("_kind") == 1
    aggs = _window_aggregates(h, by_time, flags, outcomes, run_date)
    last_matured = run_date - timedelta(days=exp.attribution_window_days)
    trained = F.to_date("at") <= F.lit(last_matured)
    if first_day is not None:
        trained &= F.to_date("at") >= F.lit(first_day)
    anchor = (F.col("_kind") == 0) | (is_send & trained)
    return (
        rows.select(
            (F.col("_kind") == 0).alias("scoring"),
            "anchor_id",
            "customer_id",
            F.col("at").alias("as_of"),
            "campaign_id",
            "arm",
            *aggs,
            anchor.alias("_anchor"),
        )
        .where("_anchor")
        .drop("_anchor")
    )


DAY_MICROS = 86_400_000_000


def window_start(counts: dict[tuple[date, str], int], arms: list[str], rows_per_arm: int | None) -> date | None:
    """The first send day of the training window: walking back from the latest matured day, the day
    by which every arm (counts: matured sends per (day, arm)) has rows_per_arm sends; None (every
    matured send) without a budget or when some arm never reaches it."""
    if rows_per_arm is None:
        return None
    seen = dict.fromkeys(arms, 0)
    for day in sorted({d for d, _ in counts}, reverse=True):
        for arm in arms:
            seen[arm] += counts.get((day, arm), 0)
        if min(seen.values()) >= rows_per_arm:
            return day
    return None


def _events(sends, responses, scoring_anchors, flags: list[str], response_types: list[list[str]]) -> DataFrame:
    """The scoring anchors (`_kind` 0), the sends (1) and the responses (2) as one frame of
    customer_id, `at` and the send's keys; on a response, flags[i] says whether its type is one
    of response_types[i]."""
    none = F.lit(None).cast("string")
    no_flags = [F.lit(False).alias(f) for f in flags]
    rows = scoring_anchors.select(
        "customer_id",
        F.col("as_of").alias("at"),
        F.lit(0).alias("_kind"),
        "anchor_id",
        none.alias("campaign_id"),
        none.alias("arm"),
        *no_flags,
    )
    rows = rows.unionByName(
        sends.select(
            "customer_id",
            F.col("sent_at").alias("at"),
            F.lit(1).alias("_kind"),
            F.col("send_id").alias("anchor_id"),
            "campaign_id",
            "arm",
            *no_flags,
        )
    )
    rows = rows.unionByName(
        responses.select(
            "customer_id",
            F.col("responded_at").alias("at"),
            F.lit(2).alias("_kind"),
            none.alias("anchor_id"),
            none.alias("campaign_id"),
            none.alias("arm"),
            *[F.col("response_type").isin(types).alias(f) for f, types in zip(flags, response_types, strict=True)],
        )
    )
    return rows


def _window_aggregates(h, by_time: Window, flags: list[str], outcomes: dict, run_date: date) -> list:
    """The history aggregates (windows ending just before each row) and the labels (windows
    starting just after it, null where the outcome's window has not matured by run_date)."""

    def before(days: int) -> Window:
        return by_time.rangeBetween(-days * DAY_MICROS, -1)

    is_send, qualifying = F.col("_kind") == 1, F.col(flags[0])
    send_windows = sorted({*h.n_sends, *h.response_rate})
    aggs = [F.sum(is_send.cast("long")).over(before(w)).alias(f"_sends_{w}d") for w in send_windows]
    if h.previous_arm:
        latest = F.max(F.when(is_send, F.struct(F.col("at").alias("sent_at"), "arm"))).over(before(h.previous_arm))
        aggs.append(latest["arm"].alias("previous_arm"))
    aggs += [
        F.sum(qualifying.cast("long")).over(before(w)).alias(f"_responses_{w}d")
        for w in sorted({*h.n_responses, *h.response_rate})
    ]
    if h.days_since_last_response:
        last = F.max(F.when(qualifying, F.col("at"))).over(before(h.days_since_last_response))
        aggs.append(last.alias("_last_response"))
    for flag, (outcome, (_, window_days)) in zip(flags, outcomes.items(), strict=True):
        hit = F.max(F.col(flag).cast("int")).over(by_time.rangeBetween(1, window_days * DAY_MICROS))
        known = F.to_date("at") <= F.lit(run_date - timedelta(days=window_days))
        aggs.append(F.when(known, F.coalesce(hit, F.lit(0))).alias(label_column(outcome)))
    return aggs


def point_in_time_features(
    anchors: DataFrame, users: DataFrame, snapshots: DataFrame, spec: FeatureSpec, carry: list[str] = ()
) -> DataFrame:
    """Add the spec's features to anchors (`anchor_id`, `customer_id`, `as_of`, `anchor_day`, the
    history aggregates of `_timeline` and the `carry` columns, kept as they are).

    users: the snapshots (with `dt`) the anchors use (`snapshots`: anchor_day -> snapshot_dt).
    Anchors without a users snapshot before their day are dropped.
    """
    a = anchors.join(F.broadcast(snapshots), "anchor_day").hint("shuffle_hash")
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
        *_history_columns(spec),
        *[_attribute(spec, name, F.col(f"u._attr_{name}")) for name in spec.attributes],
    )

    h = spec.history
    zeros = [f"_sends_{w}d" for w in sorted({*h.n_sends, *h.response_rate})]
    zeros += [f"_responses_{w}d" for w in sorted({*h.n_responses, *h.response_rate})]
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


class History(NamedTuple):
    """The sends and responses delivered up to a run date, one row per id (`dedupe`), cached: with a
    training window (`first_day`), only the deliveries from the window's longest history feature
    before its first day on."""

    sends: DataFrame
    responses: DataFrame
    delivered: dict[str, int]  # rows read, per source
    first_day: date | None = None  # the training window's first send day (`window_start`); None: every send

    def duplicates_removed(self) -> dict[str, int]:
        """Rows read of sends and responses, and how many of them `dedupe` dropped."""
        counts = {}
        for source, frame in (("sends", self.sends), ("responses", self.responses)):
            counts[f"raw_{source}_rows"] = self.delivered[source]
            counts[f"duplicate_{source}_removed"] = self.delivered[source] - frame.count()
        return counts


def read_history(spark: SparkSession, settings: Settings, run_date: date) -> History:
    """Sends and responses up to run_date, deduplicated once for the labels and both feature sets.

    With training.rows_per_arm, the deliveries dated before the training window's first send day
    less the longest history window are not read: no training or scoring row looks back to them
    (an event is delivered on or after its own day). A copy of a send or response delivered again
    later then stands for the one before that date."""
    first_day = _training_window(spark, settings, run_date)
    days: dict[str, set[date] | None] = {"sends": None, "responses": None}
    if first_day is not None:
        since = first_day - timedelta(days=longest_history_window(settings.features))
        for source in days:
            days[source] = {d for d in map(partition_date, raw_partitions(settings, source, run_date)) if d >= since}
    sends = read_raw(spark, settings, "sends", run_date, days=days["sends"])
    responses = read_raw(spark, settings, "responses", run_date, days=days["responses"])
    return History(
        sends=dedupe(sends, "send_id", ["dt", "sent_at", "customer_id", "arm"]).drop("dt").persist(),
        responses=dedupe(responses, "response_id", ["dt", "responded_at", "customer_id"]).drop("dt").persist(),
        delivered={"sends": sends.count(), "responses": responses.count()},  # from the files' footers
        first_day=first_day,
    )


def longest_history_window(spec: FeatureSpec) -> int:
    """How many days before an anchor its history features look (0: none)."""
    h = spec.history
    return max([*h.n_sends, *h.n_responses, *h.response_rate, h.days_since_last_response or 0, h.previous_arm or 0])


def _training_window(spark: SparkSession, settings: Settings, run_date: date) -> date | None:
    """The training window's first send day (`window_start`) from the matured sends' counts per day
    and arm (each send_id once), or None without training.rows_per_arm."""
    if settings.training.rows_per_arm is None:
        return None
    last_matured = run_date - timedelta(days=settings.experiment.attribution_window_days)
    sends = read_raw(spark, settings, "sends", run_date).select("send_id", F.to_date("sent_at").alias("d"), "arm")
    matured = sends.where(F.col("d") <= F.lit(last_matured)).dropDuplicates(["send_id"])
    counts = {(row.d, row.arm): row["count"] for row in matured.groupBy("d", "arm").count().collect()}
    return window_start(counts, settings.experiment.all_arms, settings.training.rows_per_arm)


def build_sets(
    spark: SparkSession, settings: Settings, run_date: date, history: History | None = None
) -> tuple[DataFrame, DataFrame]:
    """The training set (matured, labelled sends) and the scoring set of run_date (from `history`,
    read here unless given)."""
    exp, spec = settings.experiment, settings.features
    snapshot_days = [partition_date(p) for p in raw_partitions(settings, "users", run_date)]
    if not snapshot_days:
        read_raw(spark, settings, "users", run_date)  # raises MissingInputError, naming the source
    if history is None:
        history = read_history(spark, settings, run_date)
    end_of_day = F.lit(run_date + timedelta(days=1)).cast("timestamp")
    sends = history.sends.where(F.col("sent_at") < end_of_day)
    responses = history.responses.where(F.col("responded_at") < end_of_day).drop("response_id")
    last_matured = run_date - timedelta(days=exp.attribution_window_days)
    first_day = history.first_day
    matured = sends.select(F.to_date("sent_at").alias("d")).where(F.col("d") <= F.lit(last_matured))
    if first_day is not None:
        matured = matured.where(F.col("d") >= F.lit(first_day))
    send_days = [row.d for row in matured.distinct().collect()]
    _require_snapshots(settings, snapshot_days, send_days)
    training_pairs = _snapshot_pairs(snapshot_days, send_days)

    scoring_day = run_date + timedelta(days=1)
    latest = read_raw(spark, settings, "users", run_date, days={max(snapshot_days)})
    _check_eligibility(spark, latest, spec.eligibility)
    scoring_anchors = latest.where(spec.eligibility).select(
        F.col("customer_id").alias("anchor_id"), "customer_id", F.lit(scoring_day).cast("timestamp").alias("as_of")
    )
    # Both sets' anchors, labels and history in one pass, kept for the two writes.
    timeline = _timeline(sends, responses, scoring_anchors, settings, run_date, first_day).persist()

    def anchors_of(scoring: bool) -> DataFrame:
        return timeline.where(F.col("scoring") == scoring).withColumn("anchor_day", F.to_date("as_of"))

    keys = training_keys(settings)
    carry = ["campaign_id", "arm", *(label_column(o) for o in [None, *settings.targeting.outcomes])]
    # Only the snapshots some anchor uses are read (the scoring set: the latest alone).
    training_users = read_raw(
        spark, settings, "users", run_date, days={dt for _, dt in training_pairs} or {max(snapshot_days)}
    )
    training = point_in_time_features(
        anchors_of(False), training_users, _snapshot_for(spark, training_pairs), spec, carry
    )
    training = training.withColumnRenamed("anchor_id", "send_id").withColumnRenamed("as_of", "sent_at")
    training = with_assignment(spark, training, own_campaigns(settings, run_date), exp)
    training = training.select(*keys, *spec.names)
    scoring = point_in_time_features(
        anchors_of(True), latest, _snapshot_for(spark, _snapshot_pairs(snapshot_days, [scoring_day])), spec
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
        training_path = publish_partition(training, settings, TRAINING_SET, run_date)
        scoring_path = publish_partition(scoring, settings, SCORING_SET, run_date)
        duplicates = history.duplicates_removed()
    finally:
        spark.catalog.clearCache()  # the history and the timeline of build_sets
    return {
        "training_rows": spark.read.parquet(str(training_path)).count(),
        "scoring_rows": spark.read.parquet(str(scoring_path)).count(),
        **duplicates,
    }
