"""Results: what every sent audience realized once its label window matured, next to what it expected.

Each night the step reads the training set of the night (every matured send, labelled, jobs.data.etl)
and joins the sends of the pipeline's own campaigns to the audiences that listed them. For each
audience whose sends matured in the last `monitoring.recompute_days` nights (so responses delivered
late are counted), it computes from scratch and replaces the audience's partitions of three tables,
partitioned by the audience's run date:

- `results`: per arm (and `all`), the sent customers (target route) against the holdout of that
  arm (holdout customers the policy recommended the arm to: the same population, randomly split):
  response rate of each, realized incremental responses `n_sent (rate_sent - rate_holdout)` with a
  95% interval (Newcombe's hybrid score interval of the rate difference, scaled by n_sent: right for
  a small holdout and rare outcomes), the same for every further outcome, realized net value, and
  the audience's expected figures for the same customers. The `all` row sums the arms (its interval
  combines theirs); a guardrail outcome's realized increase per send is there against its limit.
- `results_policies`: on the explore rows (drawn at random whatever the model thinks), the sums from
  which the value of any policy follows (Hajek, weights 1 / route_probability): the audience's own
  policy (its recommended arm where selected, else nothing) and every constant policy. `policy_values`
  turns the sums of any set of nights into values with paired intervals (delta method).
- `results_calibration`: per decile of the audience's ranking, realized vs predicted uplift of the
  decile's arm (the recommended one, or the best one where none is recommended) among every row that
  got that arm or control, weighted by 1 / propensity. Sums, so that nights pool by adding them.

Overlapping windows: a customer counts only for their first listing within a label window. With
the default contact window (targeting.contact_window_days) no one is listed twice within a window;
with a shorter one, a listing that follows an earlier one within the window is left out of the
measurement (counted in `overlapped`), since that customer's outcome mixes two sends.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from jobs.data.lake import (
    MissingInputError,
    own_campaigns,
    partition_date,
    partition_dir,
    publish_frame,
    read_table,
)
from jobs.model import policy
from jobs.names import (
    AUDIENCE_POLICY,
    NO_ONE,
    RESULTS,
    RESULTS_CALIBRATION,
    RESULTS_POLICIES,
    TRAINING_SET,
    everyone,
    expected_uplift_column,
    label_column,
    of_outcome,
    uplift_column,
)
from jobs.settings import Settings, report_dir

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

Z = 1.959963984540054  # the 95% two-sided normal quantile
ALL = "all"
TABLES = ("results", "results_policies", "results_calibration")
FOLLOWS = AUDIENCE_POLICY  # the audience's own policy


def audience_date(folder: Path) -> date:
    """The run date of an audience partition or of a kept version of one."""
    return partition_date(folder if folder.name.startswith("run_date=") else folder.parent)


def measured_campaigns(settings: Settings, run_date: date) -> dict[str, Path]:
    """The own campaigns measured tonight: audiences dated up to run_date - attribution window (any
    of their sends can have matured) and from recompute_days before that."""
    last = run_date - timedelta(days=settings.experiment.attribution_window_days)
    return own_campaigns(settings, last, since=last - timedelta(days=settings.monitoring.recompute_days))


def wilson(successes: float, n: float) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_difference(y1: float, n1: float, y0: float, n0: float) -> tuple[float, float, float]:
    """p1 - p0 with Newcombe's hybrid score 95% interval (method 10); NaN without both groups."""
    if n1 <= 0 or n0 <= 0:
        return math.nan, math.nan, math.nan
    p1, p0 = y1 / n1, y0 / n0
    (l1, u1), (l0, u0) = wilson(y1, n1), wilson(y0, n0)
    d = p1 - p0
    return d, d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def mean_difference(s1: float, q1: float, n1: float, s0: float, q0: float, n0: float) -> tuple[float, float, float]:
    """Difference of two means from sums (s) and sums of squares (q), with a Welch normal 95% interval."""
    if n1 <= 1 or n0 <= 1:
        return math.nan, math.nan, math.nan
    m1, m0 = s1 / n1, s0 / n0
    v1, v0 = max(0.0, (q1 - n1 * m1 * m1) / (n1 - 1)), max(0.0, (q0 - n0 * m0 * m0) / (n0 - 1))
    d, se = m1 - m0, math.sqrt(v1 / n1 + v0 / n0)
    return d, d - Z * se, d + Z * se


# ---------------------------------------------------------------- the Spark pass: rows to small sums


def _rows(spark: SparkSession, settings: Settings, run_date: date, campaigns: dict[str, Path]) -> DataFrame:
    """Every listed row of the measured audiences with its matured labels (null: not sent, or not
    matured), net response z, the arm the policy would give it and the overlap flag."""
    from pyspark.sql import functions as F

    targeting = settings.targeting
    labels = [label_column(o) for o in [None, *targeting.outcomes]]
    listed = _with_overlap(spark, settings, run_date, _listed(spark, settings, campaigns), campaigns)
    training_path = partition_dir(settings, TRAINING_SET, run_date)
    if not training_path.exists():
        raise MissingInputError(f"no training set at {training_path}: run `uplift etl --run-date {run_date}` first")
    sends = (
        spark.read.parquet(str(training_path))
        .where(F.col("campaign_id").isin(list(campaigns)))
        .select("campaign_id", "customer_id", *labels)
        .dropDuplicates(["campaign_id", "customer_id"])
    )
    rows = listed.join(sends, ["campaign_id", "customer_id"], "left")
    values = targeting.values()
    z = sum((F.col(label_column(o)).cast("double") * float(v) for o, v in values.items()), F.lit(0.0))
    costs = F.create_map(*[F.lit(x) for a, c in targeting.cost_per_send.items() for x in (a, float(c))])
    return rows.withColumn("z", z).withColumn("cost", F.coalesce(costs[F.col("assigned_arm")], F.lit(0.0)))


def _audience_date(campaigns: dict[str, Path]):
    """A Spark column: the date of the audience that listed a row, by its campaign_id."""
    from pyspark.sql import functions as F

    pairs = [F.lit(x) for c, folder in campaigns.items() for x in (c, audience_date(folder).isoformat())]
    return F.to_date(F.create_map(*pairs)[F.col("campaign_id")])


def _read_listed(spark: SparkSession, campaigns: dict[str, Path]) -> DataFrame:
    """The rows of the audiences of campaigns that were listed (an arm or control assigned)."""
    from pyspark.sql import functions as F

    folders = [str(folder) for folder in campaigns.values()]
    return spark.read.option("mergeSchema", "true").parquet(*folders).where(F.col("assigned_arm").isNotNull())


def _listed(spark: SparkSession, settings: Settings, campaigns: dict[str, Path]) -> DataFrame:
    """The measured audiences' listed rows: their assignment record, the arm the audience's policy
    follows for them, the arm and uplift their decile is read by, and the expectations."""
    from pyspark.sql import functions as F

    exp = settings.experiment
    listed = _read_listed(spark, campaigns)
    if "route_probability" not in listed.columns:
        listed = listed.withColumn("route_probability", F.lit(None).cast("double"))
    best = F.col(uplift_column(exp.arms[0]))
    top = F.lit(exp.arms[0])
    for arm in exp.arms[1:]:
        top = F.when(F.col(uplift_column(arm)) > best, F.lit(arm)).otherwise(top)
        best = F.greatest(best, F.col(uplift_column(arm)))
    recommended = F.col("recommended_arm") != policy.NONE
    return listed.select(
        "campaign_id",
        "customer_id",
        _audience_date(campaigns).alias("audience_date"),
        "assignment",
        "assigned_arm",
        "recommended_arm",
        "propensity",
        "route_probability",
        "decile",
        F.when(F.col("selected") & recommended, F.col("recommended_arm"))
        .otherwise(F.lit(exp.control))
        .alias("follows"),
        F.when(recommended, F.col("recommended_arm")).otherwise(top).alias("decile_arm"),
        F.when(recommended, F.col("expected_uplift")).otherwise(best).alias("predicted"),
        "expected_uplift",
        *[F.col(expected_uplift_column(o)) for o in settings.targeting.outcomes],
        "expected_net_value",
        "send_cost",
        "policy",
        "model_version",
    )


def _with_overlap(spark: SparkSession, settings: Settings, run_date: date, listed: DataFrame, campaigns) -> DataFrame:
    """listed with `overlapped`: the customer was on an earlier audience's list less than a label
    window before this one."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    earlier_since = min(audience_date(f) for f in campaigns.values()) - timedelta(days=settings.window_days)
    every = own_campaigns(settings, run_date, since=earlier_since)
    history = _read_listed(spark, every).select("customer_id", _audience_date(every).alias("listed_on")).distinct()
    previous = F.lag("listed_on").over(Window.partitionBy("customer_id").orderBy("listed_on"))
    history = history.withColumn("previous_listing", previous)
    return listed.join(
        history.select("customer_id", F.col("listed_on").alias("audience_date"), "previous_listing"),
        ["customer_id", "audience_date"],
        "left",
    ).withColumn(
        "overlapped",
        F.coalesce(F.datediff("audience_date", "previous_listing") < settings.window_days, F.lit(False)),
    )


def _sums(rows: DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three aggregates (arm groups, explore policy sums, calibration sums), small enough to collect."""
    from pyspark.sql import functions as F

    counted = rows.where(~F.col("overlapped"))
    return (
        _arm_sums(rows, list(settings.targeting.outcomes)).toPandas(),
        _policy_sums(counted).toPandas(),
        _calibration_sums(counted, settings.experiment.control).toPandas(),
    )


def _arm_sums(rows: DataFrame, outcomes: list[str]) -> DataFrame:
    """Per campaign, route and arm: rows listed and overlapped, and the counted rows' sums of every outcome."""
    from pyspark.sql import functions as F

    counted = ~F.col("overlapped")
    matured = F.col("label").isNotNull()

    def total(column) -> F.Column:
        return F.sum(F.when(matured & counted, column).otherwise(F.lit(0.0)))

    def count(condition) -> F.Column:
        return F.sum((condition & counted).cast("long"))

    segment = F.when(F.col("assignment") == policy.EXPLORE, F.col("assigned_arm")).otherwise(F.col("recommended_arm"))
    return rows.groupBy("campaign_id", "audience_date", "assignment", segment.alias("segment")).agg(
        F.count("*").alias("listed"),
        F.sum(F.col("overlapped").cast("long")).alias("overlapped"),
        count(matured).alias("n"),
        total(F.col("label")).alias("y"),
        *[
            expr
            for o in outcomes
            for expr in (
                count(F.col(label_column(o)).isNotNull()).alias(of_outcome("n", o)),
                total(F.coalesce(F.col(label_column(o)), F.lit(0))).alias(of_outcome("y", o)),
            )
        ],
        count(F.col("z").isNotNull()).alias("n_z"),
        total(F.coalesce(F.col("z"), F.lit(0.0))).alias("z"),
        total(F.coalesce(F.col("z") * F.col("z"), F.lit(0.0))).alias("z2"),
        total(F.col("expected_uplift")).alias("expected"),
        *[total(F.col(expected_uplift_column(o))).alias(of_outcome("expected", o)) for o in outcomes],
        total(F.col("expected_net_value")).alias("expected_net_value"),
        total(F.col("cost")).alias("cost"),
        F.first("policy").alias("policy"),
        F.first("model_version").alias("model_version"),
    )


def _policy_sums(counted: DataFrame) -> DataFrame:
    """Per campaign and explored arm, split by whether the policy would have chosen it: weighted value sums."""
    from pyspark.sql import functions as F

    w = 1.0 / F.col("route_probability")
    v = F.col("z") - F.col("cost")
    explored = (F.col("assignment") == policy.EXPLORE) & F.col("z").isNotNull() & (F.col("route_probability") > 0)
    follows = (F.col("assigned_arm") == F.col("follows")).alias("follows")
    return (
        counted.where(explored)
        .groupBy("campaign_id", "audience_date", "assigned_arm", follows)
        .agg(
            F.count("*").alias("n"),
            F.sum(w).alias("w"),
            F.sum(w * v).alias("wv"),
            F.sum(w * w).alias("ww"),
            F.sum(w * w * v).alias("wwv"),
            F.sum(w * w * v * v).alias("wwvv"),
        )
    )


def _calibration_sums(counted: DataFrame, control: str) -> DataFrame:
    """Per campaign, predicted-uplift decile and group (the decile's arm or control): weighted label sums."""
    from pyspark.sql import functions as F

    iw = 1.0 / F.col("propensity")
    group = F.when(F.col("assigned_arm") == F.col("decile_arm"), F.lit("treated")).when(
        F.col("assigned_arm") == control, F.lit("control")
    )
    return (
        counted.where(F.col("label").isNotNull() & (F.col("propensity") > 0))
        .withColumn("group", group)
        .where(F.col("group").isNotNull())
        .groupBy("campaign_id", "audience_date", "decile", "group")
        .agg(
            F.count("*").alias("n"),
            F.sum(iw).alias("w"),
            F.sum(iw * F.col("label")).alias("wy"),
            F.sum(iw * iw).alias("ww"),
            F.sum(iw * iw * F.col("label")).alias("wwy"),
            F.sum(iw * F.col("predicted")).alias("wp"),
        )
    )


# ---------------------------------------------------------------- sums to figures


def arm_results(groups: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One audience's results per arm and `all` from its arm groups (the `arms` sums of _sums)."""
    exp, targeting = settings.experiment, settings.targeting
    outcomes = list(targeting.outcomes)
    out = []
    by = {(r.assignment, r.segment): r for r in groups.itertuples(index=False)}
    empty = {c: 0.0 for c in groups.columns if c not in ("campaign_id", "audience_date", "assignment", "segment")}
    for arm in exp.arms:
        sent = by.get((policy.TARGET, arm))
        held = by.get((policy.HOLDOUT, arm))
        sent = sent._asdict() if sent is not None else empty
        held = held._asdict() if held is not None else empty
        row = {"arm": arm, "sent": int(sent["n"]), "holdout": int(held["n"])}
        row["listed"] = int(sent["listed"] + held["listed"])
        row["overlapped"] = int(sent["overlapped"] + held["overlapped"])
        row["rate_sent"] = sent["y"] / sent["n"] if sent["n"] else math.nan
        row["rate_holdout"] = held["y"] / held["n"] if held["n"] else math.nan
        for o in [None, *outcomes]:
            n1, n0 = sent[of_outcome("n", o)], held[of_outcome("n", o)]
            d, low, high = rate_difference(sent[of_outcome("y", o)], n1, held[of_outcome("y", o)], n0)
            incremental = of_outcome("incremental", o)
            row[incremental] = n1 * d
            row[f"{incremental}_low"], row[f"{incremental}_high"] = n1 * low, n1 * high
            row[of_outcome("expected_incremental", o)] = sent[of_outcome("expected", o)]
        d, low, high = mean_difference(sent["z"], sent["z2"], sent["n_z"], held["z"], held["z2"], held["n_z"])
        cost = targeting.cost_per_send[arm] * sent["n_z"]
        row["net_value"], row["net_value_low"], row["net_value_high"] = (sent["n_z"] * x - cost for x in (d, low, high))
        row["expected_net_value"] = sent["expected_net_value"]
        out.append(row)
    frame = pd.DataFrame(out)
    total = {"arm": ALL, **{c: frame[c].sum() for c in ("sent", "holdout", "listed", "overlapped")}}
    held_all = sum(by[k].y for k in by if k[0] == policy.HOLDOUT and k[1] in exp.arms)
    sent_all = sum(by[k].y for k in by if k[0] == policy.TARGET and k[1] in exp.arms)
    total["rate_sent"] = sent_all / total["sent"] if total["sent"] else math.nan
    total["rate_holdout"] = held_all / total["holdout"] if total["holdout"] else math.nan
    for base in ["incremental", *[of_outcome("incremental", o) for o in outcomes], "net_value"]:
        estimate = frame[base]
        total[base] = estimate.sum(min_count=1)
        # Arms are independent samples: their half-widths add in quadrature, on each side.
        total[f"{base}_low"] = total[base] - math.sqrt(((estimate - frame[f"{base}_low"]) ** 2).sum(min_count=1))
        total[f"{base}_high"] = total[base] + math.sqrt(((frame[f"{base}_high"] - estimate) ** 2).sum(min_count=1))
    for c in ["expected_incremental", *[of_outcome("expected_incremental", o) for o in outcomes], "expected_net_value"]:
        total[c] = frame[c].sum()
    frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    for o, guard in targeting.guardrails.items():
        per_send = frame["sent"].where(frame["sent"] > 0)
        for part in ("", "_low", "_high"):
            frame[f"increase_per_send__{o}{part}"] = frame[f"incremental__{o}{part}"] / per_send
        frame[f"limit_per_send__{o}"] = guard.max_increase_per_send
    return frame


def policy_values(sums: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Net value per customer (vs sending no one) of the audience's policy and of every constant
    policy, with 95% intervals, and the audience's policy minus each (paired: the same rows), from
    results_policies sums of one or more nights.

    Each policy's value is a Hajek mean over the explore rows that got what the policy gives
    (weights 1 / route_probability); a difference of two such means has the delta-method variance
    S(X)/W_X^2 + S(Y)/W_Y^2 - 2 C(X and Y)/(W_X W_Y), the last term over the rows both policies share.
    """
    exp = settings.experiment
    columns = ["policy", "rows", "value", "low", "high", "difference", "difference_low", "difference_high"]
    if sums.empty:
        return pd.DataFrame(columns=columns)
    fields = ["n", "w", "wv", "ww", "wwv", "wwvv"]
    follows = sums["follows"].astype(bool)
    sets = {FOLLOWS: follows}
    for arm in exp.all_arms:
        sets[NO_ONE if arm == exp.control else everyone(arm)] = sums["assigned_arm"] == arm

    def total(mask) -> pd.Series:
        return sums.loc[mask, fields].sum()

    def mean(s) -> float:
        return s["wv"] / s["w"] if s["w"] > 0 else math.nan

    def spread(s, a: float, b: float) -> float:  # the set's sum of w^2 (v - a)(v - b)
        return s["wwvv"] - (a + b) * s["wwv"] + a * b * s["ww"]

    def difference(x, y) -> tuple[float, float]:
        sx, sy, both = total(sets[x]), total(sets[y]), total(sets[x] & sets[y])
        if x == y:
            return 0.0, 0.0
        mx, my = mean(sx), mean(sy)
        variance = spread(sx, mx, mx) / sx["w"] ** 2 + spread(sy, my, my) / sy["w"] ** 2
        if both["w"] > 0:
            variance -= 2 * spread(both, mx, my) / (sx["w"] * sy["w"])
        return mx - my, Z * math.sqrt(max(variance, 0.0)) if not math.isnan(variance) else math.nan

    out = []
    for name, mask in sets.items():
        value, half = difference(name, NO_ONE)
        diff, diff_half = difference(FOLLOWS, name)
        out.append(
            {
                "policy": name,
                "rows": int(total(mask)["n"]),
                "value": value,
                "low": value - half,
                "high": value + half,
                "difference": diff,
                "difference_low": diff - diff_half,
                "difference_high": diff + diff_half,
            }
        )
    return pd.DataFrame(out, columns=columns)


def calibration(sums: pd.DataFrame) -> pd.DataFrame:
    """Realized vs predicted uplift per decile, from results_calibration sums of one or more nights."""
    out = []
    for decile, part in sums.groupby("decile"):
        g = part.groupby("group")[["n", "w", "wy", "ww", "wwy", "wp"]].sum()
        if not {"treated", "control"} <= set(g.index) or (g.loc[["treated", "control"], "w"] <= 0).any():
            continue
        means, variance = {}, 0.0
        for name in ("treated", "control"):
            s = g.loc[name]
            m = s["wy"] / s["w"]
            means[name] = m
            variance += (s["wwy"] - 2 * m * s["wwy"] + m * m * s["ww"]) / s["w"] ** 2
        realized, half = means["treated"] - means["control"], Z * math.sqrt(max(variance, 0.0))
        out.append(
            {
                "decile": int(decile),
                "rows": int(g["n"].sum()),
                "predicted": float(g["wp"].sum() / g["w"].sum()),
                "realized": realized,
                "low": realized - half,
                "high": realized + half,
            }
        )
    return pd.DataFrame(out, columns=["decile", "rows", "predicted", "realized", "low", "high"])


def calibration_slope(table: pd.DataFrame, against: str = "predicted") -> dict | None:
    """The slope of the deciles' realized uplift on `against` (least squares, each decile weighed by
    the inverse variance of its realized uplift), with its 95% interval: 1 where the realized follows
    `against` one for one, 0 where the ranking tells nothing. A decile measured on few rows (one the
    budget sends only on its explore rows) counts little, and deciles tied on `against` cannot
    disorder it, as they disorder a rank correlation. None with fewer than 3 measured deciles or
    without spread in `against`."""
    se = (table["high"] - table["low"]) / (2 * Z)
    usable = (se > 0) & table["realized"].notna()
    if usable.sum() < 3:
        return None
    w, x, y = 1 / se[usable] ** 2, table.loc[usable, against], table.loc[usable, "realized"]
    centre = (w * x).sum() / w.sum()
    spread = float((w * (x - centre) ** 2).sum())
    if spread <= 0:
        return None
    slope, half = float((w * (x - centre) * y).sum() / spread), Z / math.sqrt(spread)
    return {"slope": slope, "slope_low": slope - half, "slope_high": slope + half}


def validated(settings: Settings, audience_day: date) -> bool:
    """Whether the night after the audience (the day its sends were delivered) passed validate-raw."""
    path = report_dir(settings, audience_day + timedelta(days=1)) / "validation" / "raw.json"
    if not path.exists():
        return False
    import json

    return bool(json.loads(path.read_text()).get("success"))


def measure(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Compute and publish the results of every audience measured tonight (measured_campaigns)."""
    campaigns = measured_campaigns(settings, run_date)
    if not campaigns:
        return {"audiences": [], "note": "no audience has matured sends yet"}
    rows = _rows(spark, settings, run_date, campaigns).persist()  # three aggregates over one join
    try:
        arms, policies, calibrations = _sums(rows, settings)
    finally:
        rows.unpersist()
    computed = datetime.now(UTC).replace(tzinfo=None)
    measured = []
    for campaign, folder in sorted(campaigns.items(), key=lambda kv: (audience_date(kv[1]), kv[0])):
        day = audience_date(folder)
        groups = arms[arms["campaign_id"] == campaign]
        if groups.empty or groups["n"].sum() == 0:
            continue  # nothing sent, or not matured yet
        meta = {
            "campaign_id": campaign,
            "audience_date": day,
            "computed_on": run_date,
            "computed_at": computed,
            "policy": groups["policy"].dropna().iloc[0] if groups["policy"].notna().any() else None,
            "model_version": groups["model_version"].dropna().iloc[0]
            if groups["model_version"].notna().any()
            else None,
            "validated": validated(settings, day),
        }
        table = arm_results(groups, settings).assign(**meta)
        mine = policies[policies["campaign_id"] == campaign].drop(columns=["audience_date"]).assign(**meta)
        deciles = calibrations[calibrations["campaign_id"] == campaign].drop(columns=["audience_date"]).assign(**meta)
        measured.append((day, campaign, table, mine, deciles))
    # One partition per audience date: every campaign (version) of that date together.
    for day in sorted({m[0] for m in measured}):
        for name, index in zip(TABLES, (2, 3, 4), strict=True):
            frame = pd.concat([m[index] for m in measured if m[0] == day], ignore_index=True)
            publish_frame(frame, settings, name, day)
    summary = []
    for day, campaign, table, mine, _ in measured:
        row = table[table["arm"] == ALL].iloc[0]
        values = policy_values(mine, settings)
        summary.append(
            {
                "audience_date": day.isoformat(),
                "campaign_id": campaign,
                "sent": int(row["sent"]),
                "holdout": int(row["holdout"]),
                "incremental": _round(row["incremental"]),
                "interval": [_round(row["incremental_low"]), _round(row["incremental_high"])],
                "expected": _round(row["expected_incremental"]),
                "net_value": _round(row["net_value"]),
                "expected_net_value": _round(row["expected_net_value"]),
                "policy_vs_constants": {
                    r.policy: _round(r.difference) for r in values.itertuples() if r.policy != FOLLOWS
                },
            }
        )
        _log_to_model_run(settings, table, day)
    return {"audiences": summary}


def _round(x: float, digits: int = 4):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def _log_to_model_run(settings: Settings, table: pd.DataFrame, day: date) -> None:
    """The realized figures as metrics of the MLflow run of the model version that made the audience
    (step: the audience's date as YYYYMMDD; a recomputation logs the newer value at the same step)."""
    version = table["model_version"].iloc[0]
    if version is None or (isinstance(version, float) and math.isnan(version)):
        return
    import mlflow

    from jobs.model.tracking import use_tracking

    use_tracking(settings)
    client = mlflow.MlflowClient()
    run_id = client.get_model_version(settings.mlflow.registered_model, str(version)).run_id
    step = int(day.strftime("%Y%m%d"))
    for row in table.itertuples(index=False):
        for name in ("incremental", "expected_incremental", "net_value", "expected_net_value"):
            value = getattr(row, name)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                client.log_metric(run_id, f"realized.{row.arm}.{name}", float(value), step=step)


def view(settings: Settings, audiences: int = 30) -> dict:
    """What the Results page and `uplift audience results` show: the latest computation of the
    results of the last `audiences` measured audience dates (newest first), the policies' realized
    values and the calibration pooled over the last monitoring.window of them, and the champion's
    latest monitoring assessment."""
    table = read_table(settings, RESULTS)
    if table.empty:
        return {"rows": [], "dates": [], "policies": [], "calibration": [], "calibration_slope": None, "window": []}
    dates = sorted(set(table["audience_date"]), reverse=True)[:audiences]
    table = table[table["audience_date"].isin(dates)]
    order = {a: k for k, a in enumerate([*settings.experiment.arms, ALL])}
    table = table.assign(_order=table["arm"].map(order)).sort_values(
        ["audience_date", "campaign_id", "_order"], ascending=[False, True, True]
    )
    window = dates[: settings.monitoring.window]
    sums = read_table(settings, RESULTS_POLICIES)
    sums = sums[sums["audience_date"].isin(window)] if not sums.empty else sums
    deciles = read_table(settings, RESULTS_CALIBRATION)
    deciles = deciles[deciles["audience_date"].isin(window)] if not deciles.empty else deciles
    pooled = calibration(deciles) if not deciles.empty else None
    guardrails = [o for o, g in settings.targeting.guardrails.items() if g.max_increase_per_send is not None]
    rows = _records(table.drop(columns="_order"))
    for r in rows:
        r["audience_date"] = r["audience_date"].isoformat()
        r["guardrails"] = [
            {
                "outcome": o,
                "per_send": r.get(f"increase_per_send__{o}"),
                "low": r.get(f"increase_per_send__{o}_low"),
                "high": r.get(f"increase_per_send__{o}_high"),
                "limit": r.get(f"limit_per_send__{o}"),
            }
            for o in guardrails
        ]
    return {
        "rows": rows,
        "dates": [d.isoformat() for d in dates],
        "window": [d.isoformat() for d in window],
        "policies": _records(policy_values(sums, settings)) if not sums.empty else [],
        "calibration": _records(pooled) if pooled is not None else [],
        "calibration_slope": calibration_slope(pooled) if pooled is not None else None,
    }


def _records(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


def show(settings: Settings, audiences: int = 30) -> str:
    """`view` as text: the numbers the Results page shows."""
    data = view(settings, audiences)
    if not data["rows"]:
        return "No results yet: an audience is measured once its sends' label window has matured."

    def fig(r, base: str, digits: int = 2) -> str:
        value, low, high = r.get(base), r.get(f"{base}_low"), r.get(f"{base}_high")
        if value is None:
            return "-"
        return (
            f"{value:,.{digits}f} [{low:,.{digits}f}, {high:,.{digits}f}]"
            if low is not None
            else f"{value:,.{digits}f}"
        )

    lines = ["Realized vs expected, per audience and arm (sent vs their holdout, 95% intervals)"]
    lines.append(
        f"{'audience':<11} {'arm':<12} {'sent':>7} {'holdout':>7}  {'incremental responses':<30} {'expected':>9}  "
        f"{'net value':<32} {'expected':>10}"
    )
    for r in data["rows"]:
        lines.append(
            f"{r['audience_date']:<11} {r['arm']:<12} {r['sent']:>7,} {r['holdout']:>7,}  "
            f"{fig(r, 'incremental', 1):<30} {r['expected_incremental']:>9,.1f}  "
            f"{fig(r, 'net_value'):<32} {r['expected_net_value']:>10,.2f}"
        )
        for g in r["guardrails"] if r["arm"] == ALL else []:
            if g["per_send"] is not None:
                lines.append(
                    f"{'':<11} guardrail {g['outcome']}: increase per send {g['per_send']:.4f} "
                    f"[{g['low']:.4f}, {g['high']:.4f}], limit {g['limit']}"
                )
    if data["policies"]:
        lines.append(
            f"\nPolicies on the explore rows of {', '.join(data['window'])} (net value per customer vs no one)"
        )
        for p in data["policies"]:
            lines.append(f"  {p['policy']:<26} {fig(p, 'value', 4):<32} audience's minus it: {fig(p, 'difference', 4)}")
    if data["calibration"]:
        lines.append("\nCalibration: realized vs predicted uplift by decile (pooled over the same audiences)")
        for c in data["calibration"]:
            lines.append(
                f"  decile {c['decile']:>2}: predicted {c['predicted']:.4f}, realized {c['realized']:.4f} "
                f"[{c['low']:.4f}, {c['high']:.4f}] ({c['rows']:,} rows)"
            )
        if data["calibration_slope"]:
            slope = fig(data["calibration_slope"], "slope", 2)
            lines.append(f"  slope of realized on predicted: {slope} (1: calibrated, 0: the ranking tells nothing)")
    return "\n".join(lines)


def chart(settings: Settings, name: str) -> bytes:
    """A PNG of the Results page: `trend` (realized incremental responses of every audience with its
    interval, and the expected, per audience date) or `calibration` (realized vs predicted uplift by
    decile, pooled over the monitoring window)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.pyplot as plt

    data = view(settings)
    fig, ax = plt.subplots(figsize=(7, 3.6) if name == "trend" else (5.6, 3.6), dpi=100)
    if name == "trend":
        rows = sorted((r for r in data["rows"] if r["arm"] == ALL), key=lambda r: r["audience_date"])
        x = [date.fromisoformat(r["audience_date"]) for r in rows]
        value = np.array([np.nan if r["incremental"] is None else r["incremental"] for r in rows], dtype=float)
        low = np.array([np.nan if r["incremental_low"] is None else r["incremental_low"] for r in rows], dtype=float)
        high = np.array([np.nan if r["incremental_high"] is None else r["incremental_high"] for r in rows], dtype=float)
        ax.errorbar(x, value, yerr=[value - low, high - value], fmt="o", capsize=3, label="realized (95% interval)")
        ax.plot(x, [r["expected_incremental"] for r in rows], "s--", color="#c0572b", label="expected")
        ax.set_ylabel("incremental responses")
        ax.set_xlabel("audience date")
        if len(x) == 1:  # one night: a day either side, not matplotlib's default span of years
            ax.set_xlim(x[0] - timedelta(days=1), x[0] + timedelta(days=1))
        span = (max(x) - min(x)).days if x else 0
        ax.xaxis.set_major_locator(matplotlib.dates.DayLocator(interval=max(1, span // 8)))
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    else:
        table = pd.DataFrame(data["calibration"])
        if not table.empty:
            ax.errorbar(
                table["predicted"],
                table["realized"],
                yerr=[table["realized"] - table["low"], table["high"] - table["realized"]],
                fmt="o",
                capsize=3,
                label="deciles (95% interval)",
            )
            for row in table.itertuples():
                ax.annotate(
                    str(row.decile),
                    (row.predicted, row.realized),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            edge = [min(table["predicted"].min(), 0), table["predicted"].max()]
            ax.plot(edge, edge, ":", color="grey", label="realized = predicted")
        ax.set_xlabel("predicted uplift")
        ax.set_ylabel("realized uplift")
    ax.axhline(0, color="#999", linewidth=0.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
