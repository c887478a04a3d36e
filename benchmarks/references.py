"""Reference implementations the benchmarks compare the pipeline against.

- `duckdb_etl`: the same point-in-time training and scoring sets as `jobs.data.etl.build_sets`,
  built by one DuckDB SQL session on a single node (2 threads) straight from the raw parquet.
  Its SQL is generated from the feature spec (`features:` in conf), as the Spark ETL is.
  tests/unit/test_references.py proves it equal to the Spark ETL, row for row and value for value.
- `pandas_tlearner`: what a user would write instead of the pipeline: one in-memory pandas +
  LightGBM script from the raw parquet to the per-arm holdout Qini of a T-learner, on the
  spec's features.

Each is also a command printing its result as one JSON line, so a harness can run it in a
fresh process and measure that process's peak memory:

    python -m benchmarks.references duckdb-etl --run-date 2026-10-30 --out /tmp/etl
    python -m benchmarks.references pandas-tlearner --run-date 2026-10-30

Settings come from `jobs.settings.load_settings()` (UPLIFT_HOME, UPLIFT_CONF).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from jobs.data.etl import window_start
from jobs.data.lake import ASSIGNMENT_RECORD, MissingInputError, own_campaigns, raw_dir, raw_partitions
from jobs.features import FeatureSpec
from jobs.names import label_column
from jobs.settings import Settings, Source, load_settings

# DuckDB spelling of the Spark types raw columns are read as (Settings.raw_types).
DUCKDB_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "date": "DATE", "timestamp": "TIMESTAMP"}
DUCKDB_THREADS = 2  # as Spark's local[2]
# One LightGBM thread: with n_jobs=2, a fit slows down about 5x as soon as another process
# competes for the cores (OpenMP threads spin-wait), and timings become noise.
LIGHTGBM_THREADS = 1
# The history aggregates per anchor: alias -> (CTE, events table, event timestamp).
HISTORY_TABLES = {"p": ("prior_sends", "sends", "sent_at"), "r": ("prior_responses", "qualifying", "responded_at")}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parquet_source(settings: Settings, source: str) -> Source:
    conf = settings.sources[source]
    if conf.format != "parquet":
        raise ValueError(
            f"raw source '{source}' is delivered as {conf.format}: the reference implementations read parquet "
            f"deliveries only; benchmark them on parquet data (conf sources.{source}.format: parquet)"
        )
    return conf


def _raw_sql(settings: Settings, source: str, run_date: date) -> str:
    """A source's deliveries dated up to run_date, in our names and read types (try-cast), with `dt`."""
    conf = _parquet_source(settings, source)
    days = [folder.name[3:] for folder in raw_partitions(settings, source, run_date)]
    if not days:
        raise MissingInputError(f"raw source '{source}': no delivery dt<={run_date} under {raw_dir(settings, source)}")
    columns = ", ".join(
        f"TRY_CAST({_ident(conf.delivered(name))} AS {DUCKDB_TYPES[spark_type]}) AS {_ident(name)}"
        for name, spark_type in settings.raw_types(source).items()
    )
    files = _quote(str(raw_dir(settings, source) / "dt=*" / "*.parquet"))
    return (
        f"SELECT {columns}, CAST(dt AS DATE) AS dt "
        f"FROM read_parquet({files}, hive_partitioning = true, hive_types = {{'dt': VARCHAR}}, union_by_name = true) "
        f"WHERE dt IN ({', '.join(_quote(d) for d in days)})"
    )


def _attribute_sql(spec: FeatureSpec, name: str) -> str:
    """jobs.data.etl._attribute in SQL, over the users snapshot `u` joined to the anchor `a`."""
    attribute, column = spec.attributes[name], f"u.{_ident(spec.source_column(name))}"
    if attribute.derive == "days_since":
        return f"CAST(CAST(a.as_of AS DATE) - {column} AS INTEGER)"  # Spark's datediff is an int
    if attribute.derive == "email_domain":
        # As jobs.data.etl: after the last '@', null without one.
        return f"CASE WHEN contains({column}, '@') THEN lower(string_split({column}, '@')[-1]) END"
    return column


def _since(at: str, days: int) -> str:
    """SQL: the event timestamp `at` is at most `days` days before the anchor's as_of."""
    return f"{at} >= a.as_of - INTERVAL {days} DAYS"


def _history_aggregates(spec: FeatureSpec) -> dict[str, list[str]]:
    """Per history table alias, the aggregates over its prior events that the spec's features need."""
    h = spec.history
    sends = [
        f"count(*) FILTER (WHERE {_since('e.sent_at', w)}) AS _sends_{w}d"
        for w in sorted({*h.n_sends, *h.response_rate})
    ]
    if h.previous_arm:
        # Spark's max(struct(sent_at, arm)): a tie goes to the greatest arm, and a null arm ranks
        # lowest there, highest in DuckDB: has_arm restores Spark's order.
        latest = "struct_pack(sent_at := e.sent_at, has_arm := e.arm IS NOT NULL, arm := e.arm)"
        sends.append(f"(max({latest}) FILTER (WHERE {_since('e.sent_at', h.previous_arm)})).arm AS previous_arm")
    responses = [
        f"count(*) FILTER (WHERE {_since('e.responded_at', w)}) AS _responses_{w}d"
        for w in sorted({*h.n_responses, *h.response_rate})
    ]
    if h.days_since_last_response:
        window = _since("e.responded_at", h.days_since_last_response)
        responses.append(f"max(e.responded_at) FILTER (WHERE {window}) AS last_response")
    return {"p": sends, "r": responses}


def _history_sql(spec: FeatureSpec) -> dict[str, str]:
    """Each history feature of the spec in SQL, over the aggregates p (sends) and r (responses)."""
    h = spec.history
    features = {f"n_sends_{w}d": f"coalesce(p._sends_{w}d, 0)" for w in h.n_sends}
    features |= {f"n_responses_{w}d": f"coalesce(r._responses_{w}d, 0)" for w in h.n_responses}
    features |= {  # DuckDB's / on integers divides as doubles, as Spark's
        f"response_rate_{w}d": f"CASE WHEN p._sends_{w}d > 0 THEN coalesce(r._responses_{w}d, 0) / p._sends_{w}d END"
        for w in h.response_rate
    }
    if h.days_since_last_response:
        # Spark casts timestamps to whole seconds (floor) before subtracting.
        features["days_since_last_response"] = (
            "(epoch(date_trunc('second', a.as_of)) - epoch(date_trunc('second', r.last_response))) / 86400.0"
        )
    if h.previous_arm:
        features["previous_arm"] = "coalesce(p.previous_arm, 'none')"
    return features


def _point_in_time_sql(spec: FeatureSpec, anchors: str) -> str:
    """jobs.data.etl.point_in_time_features in SQL: anchor_id, customer_id, as_of and the spec's features.

    `anchors` names a table (anchor_id, customer_id, as_of, anchor_day); tables users, sends,
    qualifying and snapshot_days must exist. Anchors without a snapshot before their day drop.
    """
    ctes, joins = [], []
    for alias, aggregates in _history_aggregates(spec).items():
        if not aggregates:
            continue  # no feature reads these events: neither scanned nor joined
        cte, events, at = HISTORY_TABLES[alias]
        ctes.append(f"""{cte} AS (
        SELECT a.anchor_id, {", ".join(aggregates)}
        FROM {anchors} a JOIN {events} e ON e.customer_id = a.customer_id
        WHERE e.{at} < a.as_of AND {_since(f"e.{at}", spec.lookback_days)}
        GROUP BY a.anchor_id
    )""")
        joins.append(f"LEFT JOIN {cte} {alias} ON {alias}.anchor_id = a.anchor_id")
    features = {name: _attribute_sql(spec, name) for name in spec.attributes} | _history_sql(spec)
    columns = ",\n           ".join(f"{features[name]} AS {_ident(name)}" for name in spec.names)
    history, history_joins = "".join(f",\n    {cte}" for cte in ctes), "\n    ".join(joins)
    return f"""
    WITH snapshot_for AS (  -- the latest users snapshot dated strictly before the anchor's day
        SELECT a.anchor_day, max(d.snapshot_dt) AS snapshot_dt
        FROM (SELECT DISTINCT anchor_day FROM {anchors}) a JOIN snapshot_days d ON d.snapshot_dt < a.anchor_day
        GROUP BY a.anchor_day
    ){history}
    SELECT a.anchor_id, a.customer_id, a.as_of,
           {columns}
    FROM {anchors} a
    JOIN snapshot_for USING (anchor_day)
    JOIN users u ON u.customer_id = a.customer_id AND u.dt = snapshot_for.snapshot_dt
    {history_joins}
    """


def _records_sql(settings: Settings, run_date: date) -> str:
    """The own campaigns' assignment records (jobs.data.lake.assignment_records), or an empty table of them."""
    folders = [str(p / "*.parquet") for p in own_campaigns(settings, run_date).values()]
    if not folders:
        return (
            "SELECT NULL::VARCHAR AS campaign_id, NULL::VARCHAR AS customer_id, NULL::VARCHAR AS assignment, "
            "NULL::VARCHAR AS assigned_arm, NULL::DOUBLE AS propensity, NULL::DOUBLE AS inclusion_probability "
            "WHERE false"
        )
    columns = ", ".join(ASSIGNMENT_RECORD)
    return f"SELECT {columns} FROM read_parquet({folders!r}) WHERE assigned_arm IS NOT NULL"


def _split_sql(settings: Settings) -> str:
    """The randomization share of m.arm in m.campaign_id (jobs.data.etl.split_share)."""
    exp = settings.experiment
    default = " ".join(f"WHEN m.arm = {_quote(a)} THEN {float(v)!r}" for a, v in exp.expected_split.items())
    own = " ".join(
        f"WHEN m.campaign_id = {_quote(c)} AND m.arm = {_quote(a)} THEN {float(v)!r}"
        for c, split in exp.campaign_splits.items()
        for a, v in split.items()
    )
    declared = ", ".join(_quote(c) for c in exp.campaign_splits)
    fallback = f"CASE {default} END"
    if not declared:
        return fallback
    return f"CASE WHEN m.campaign_id IN ({declared}) THEN COALESCE(CASE {own} END, 0.0) ELSE {fallback} END"


def duckdb_etl(settings: Settings, run_date: date, out_dir: Path) -> dict:
    """Write out_dir/training.parquet and out_dir/scoring.parquet as jobs.data.etl.build_sets defines them,
    its training window (`training.rows_per_arm`) included; every delivery is read.

    The features are the conf's feature spec's. Reads parquet deliveries only (conf `format:
    parquet`; a CSV source raises), honouring the conf's column mapping. Everything stays
    inside DuckDB; Python sees only the row counts.
    Returns {"training_rows", "scoring_rows", "seconds"} (wall time, connection included).
    """
    started = time.perf_counter()
    exp, spec = settings.experiment, settings.features
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    end_of_day = f"TIMESTAMP '{run_date + timedelta(days=1)}'"
    scoring_day = f"DATE '{run_date + timedelta(days=1)}'"
    last_matured = f"DATE '{run_date - timedelta(days=exp.attribution_window_days)}'"
    window = f"INTERVAL {exp.attribution_window_days} DAYS"
    qualifying_types = ", ".join(_quote(t) for t in exp.qualifying_response_types)
    features = ", ".join(f"f.{_ident(name)}" for name in spec.names)
    snapshot_days = ", ".join(f"(DATE '{f.name[3:]}')" for f in raw_partitions(settings, "users", run_date))

    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {DUCKDB_THREADS}")
        con.execute("SET TimeZone = 'UTC'")  # as the Spark session: dates of timestamps are UTC dates
        con.execute(f"CREATE TEMP TABLE users AS {_raw_sql(settings, 'users', run_date)}")
        con.execute(f"CREATE TEMP TABLE snapshot_days AS SELECT * FROM (VALUES {snapshot_days}) v(snapshot_dt)")
        # Dedupe as jobs.data.etl.dedupe: the first delivered row per key (other columns break ties),
        # then the run-date cut.
        con.execute(f"""
            CREATE TEMP TABLE sends AS
            SELECT send_id, campaign_id, customer_id, sent_at, arm FROM ({_raw_sql(settings, "sends", run_date)})
            QUALIFY row_number() OVER (PARTITION BY send_id
                ORDER BY dt ASC NULLS LAST, sent_at ASC NULLS LAST, customer_id ASC NULLS LAST, arm ASC NULLS LAST,
                    campaign_id ASC NULLS LAST) = 1
            AND sent_at < {end_of_day}
        """)
        con.execute(f"""
            CREATE TEMP TABLE responses AS
            SELECT customer_id, responded_at, response_type FROM ({_raw_sql(settings, "responses", run_date)})
            QUALIFY row_number() OVER (PARTITION BY response_id
                ORDER BY dt ASC NULLS LAST, responded_at ASC NULLS LAST, customer_id ASC NULLS LAST,
                    response_type ASC NULLS LAST) = 1
            AND responded_at < {end_of_day}
        """)
        con.execute(
            f"CREATE TEMP TABLE qualifying AS SELECT * FROM responses WHERE response_type IN ({qualifying_types})"
        )
        # The training window (jobs.data.etl.window_start), from the matured sends per day and arm.
        first_day = window_start(
            {
                (d, arm): n
                for d, arm, n in con.execute(
                    f"SELECT CAST(sent_at AS DATE), arm, count(*) FROM sends "
                    f"WHERE CAST(sent_at AS DATE) <= {last_matured} GROUP BY ALL"
                ).fetchall()
            },
            exp.all_arms,
            settings.training.rows_per_arm,
        )
        in_window = "" if first_day is None else f" AND CAST(s.sent_at AS DATE) >= DATE '{first_day}'"
        # Each further outcome's label: its types within its window, null before the window has matured.
        outcome_labels = "".join(
            f""", CASE WHEN CAST(s.sent_at AS DATE) <= DATE '{run_date - timedelta(days=o.window_days)}'
                THEN CAST(EXISTS (SELECT 1 FROM responses r WHERE r.customer_id = s.customer_id
                    AND r.response_type IN ({", ".join(_quote(t) for t in o.response_types)})
                    AND r.responded_at > s.sent_at AND r.responded_at <= s.sent_at + INTERVAL {o.window_days} DAYS)
                AS INTEGER) END AS {_ident(label_column(name))}"""
            for name, o in settings.targeting.outcomes.items()
        )
        con.execute(f"""
            CREATE TEMP TABLE matured AS
            SELECT s.*, CAST(EXISTS (
                SELECT 1 FROM qualifying r WHERE r.customer_id = s.customer_id
                AND r.responded_at > s.sent_at AND r.responded_at <= s.sent_at + {window}) AS INTEGER) AS label
                {outcome_labels}
            FROM sends s WHERE CAST(s.sent_at AS DATE) <= {last_matured}{in_window}
        """)
        con.execute("""
            CREATE TEMP TABLE training_anchors AS
            SELECT send_id AS anchor_id, customer_id, sent_at AS as_of, CAST(sent_at AS DATE) AS anchor_day FROM matured
        """)
        con.execute(f"""
            CREATE TEMP TABLE scoring_anchors AS
            SELECT customer_id AS anchor_id, customer_id, CAST({scoring_day} AS TIMESTAMP) AS as_of,
                   {scoring_day} AS anchor_day
            FROM users WHERE dt = (SELECT max(snapshot_dt) FROM snapshot_days)
            AND ({spec.eligibility})  -- Spark SQL, which DuckDB reads alike for plain conditions
        """)
        con.execute(f"CREATE TEMP TABLE records AS {_records_sql(settings, run_date)}")
        training_file, scoring_file = out_dir / "training.parquet", out_dir / "scoring.parquet"
        training_rows = con.execute(f"""
            COPY (
                SELECT f.anchor_id AS send_id, f.customer_id, m.campaign_id, f.as_of AS sent_at, m.arm, m.label,
                       {"".join(f"m.{_ident(label_column(o))}, " for o in settings.targeting.outcomes)}
                       CASE WHEN o.campaign_id IS NOT NULL THEN r.assignment ELSE 'randomized' END AS assignment,
                       CASE WHEN o.campaign_id IS NOT NULL THEN r.propensity ELSE {_split_sql(settings)} END
                           AS propensity,
                       CASE WHEN o.campaign_id IS NOT NULL THEN r.inclusion_probability ELSE 1.0 END
                           AS inclusion_probability,
                       {features}
                FROM ({_point_in_time_sql(spec, "training_anchors")}) f JOIN matured m ON m.send_id = f.anchor_id
                LEFT JOIN (SELECT DISTINCT campaign_id FROM records) o ON o.campaign_id = m.campaign_id
                LEFT JOIN records r ON r.campaign_id = m.campaign_id AND r.customer_id = m.customer_id
            ) TO {_quote(str(training_file))} (FORMAT parquet)
        """).fetchone()[0]
        scoring_rows = con.execute(f"""
            COPY (SELECT f.customer_id, {features} FROM ({_point_in_time_sql(spec, "scoring_anchors")}) f)
            TO {_quote(str(scoring_file))} (FORMAT parquet)
        """).fetchone()[0]
    finally:
        con.close()
    return {
        "training_rows": int(training_rows),
        "scoring_rows": int(scoring_rows),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _pandas_cast(column: pd.Series, spark_type: str) -> pd.Series:
    """A delivered column as the Spark type it is read as; a value that does not parse becomes null."""
    if spark_type == "double":
        return pd.to_numeric(column, errors="coerce").astype("float64")
    if spark_type in ("date", "timestamp"):
        parsed = pd.to_datetime(column, errors="coerce")
        return parsed.dt.normalize() if spark_type == "date" else parsed
    return column  # strings: parquet delivers them as such


def _read_raw_pandas(settings: Settings, source: str, run_date: date) -> pd.DataFrame:
    """A source's parquet deliveries up to run_date, in our names and read types, with `dt`."""
    conf = _parquet_source(settings, source)
    frame = pd.read_parquet(raw_dir(settings, source), filters=[("dt", "<=", run_date.isoformat())])
    typed = {name: _pandas_cast(frame[conf.delivered(name)], t) for name, t in settings.raw_types(source).items()}
    return pd.DataFrame(typed).assign(dt=pd.to_datetime(frame["dt"].astype(str)))


def _pandas_attributes(rows: pd.DataFrame, as_of: pd.Series, spec: FeatureSpec) -> pd.DataFrame:
    """jobs.data.etl._attribute in pandas, over anchors joined to their users snapshot (our column names)."""
    out = {}
    for name, attribute in spec.attributes.items():
        column = rows[spec.source_column(name)]
        if attribute.derive == "days_since":
            out[name] = (as_of.dt.normalize() - column).dt.days
        elif attribute.derive == "email_domain":
            out[name] = column.str.split("@").str[-1].str.lower().where(column.str.contains("@"))  # as jobs.data.etl
        else:
            out[name] = column
    return pd.DataFrame(out, index=rows.index)


def _prior(anchors: pd.DataFrame, events: pd.DataFrame, lookback: int) -> pd.DataFrame:
    """Each anchor's events (customer_id, at, ...) strictly before as_of, at most lookback days back, with their age."""
    joined = anchors.merge(events, on="customer_id")
    age = joined["as_of"] - joined["at"]
    keep = (age > pd.Timedelta(0)) & (age <= pd.Timedelta(days=lookback))
    return joined[keep].assign(age=age[keep])


def _within(prior: pd.DataFrame, days: int) -> pd.DataFrame:
    """The prior events at most `days` days before their anchor."""
    return prior[prior["age"] <= pd.Timedelta(days=days)]


def _counts(prior: pd.DataFrame, windows: set[int], index: pd.Index) -> dict[int, pd.Series]:
    """Per window, each anchor's number of prior events in it (0 without any)."""
    return {w: _within(prior, w).groupby("anchor_id").size().reindex(index, fill_value=0) for w in windows}


def _pandas_history(
    anchors: pd.DataFrame, sends: pd.DataFrame, qualifying: pd.DataFrame, spec: FeatureSpec
) -> pd.DataFrame:
    """The spec's history features per anchor_id, as jobs.data.etl.point_in_time_features computes them.

    anchors: anchor_id, customer_id, as_of; sends: customer_id, sent_at, arm; qualifying:
    customer_id, responded_at.
    """
    h, index = spec.history, pd.Index(anchors["anchor_id"].unique(), name="anchor_id")
    prior_sends = _prior(anchors, sends.rename(columns={"sent_at": "at"}), spec.lookback_days)
    prior_responses = _prior(anchors, qualifying.rename(columns={"responded_at": "at"}), spec.lookback_days)
    n_sends = _counts(prior_sends, {*h.n_sends, *h.response_rate}, index)
    n_responses = _counts(prior_responses, {*h.n_responses, *h.response_rate}, index)
    out = pd.DataFrame(index=index)
    for w in h.n_sends:
        out[f"n_sends_{w}d"] = n_sends[w]
    for w in h.n_responses:
        out[f"n_responses_{w}d"] = n_responses[w]
    for w in h.response_rate:
        out[f"response_rate_{w}d"] = (n_responses[w] / n_sends[w]).where(n_sends[w] > 0)
    if h.days_since_last_response:
        last = _within(prior_responses, h.days_since_last_response).groupby("anchor_id")["at"].max()
        as_of = anchors.drop_duplicates("anchor_id").set_index("anchor_id")["as_of"]
        elapsed = as_of.reindex(index).dt.floor("s") - last.reindex(index).dt.floor("s")  # Spark floors to seconds
        out["days_since_last_response"] = elapsed.dt.total_seconds() / 86400.0
    if h.previous_arm:
        # Spark's max(struct(sent_at, arm)): the latest send, a tie to the greatest arm (nulls lowest).
        latest = _within(prior_sends, h.previous_arm).sort_values(["at", "arm"], na_position="first", kind="stable")
        arms = latest.drop_duplicates("anchor_id", keep="last").set_index("anchor_id")["arm"]
        out["previous_arm"] = arms.reindex(index).fillna("none")
    return out


def pandas_tlearner(settings: Settings, run_date: date) -> dict:
    """The T-learner end to end in memory: raw parquet -> features -> per-arm holdout Qini.

    The features (the conf's feature spec) and labels are jobs.data.etl's training set (same rows);
    the holdout split and LightGBM parameters are conf `training`'s, without the pipeline's
    early stopping, on LIGHTGBM_THREADS threads. Parquet deliveries only. Qini is
    jobs.model.metrics.qini_auc_score on arm-vs-control holdout rows, uplift = p_arm - p_control.
    Returns {"seconds", "training_rows", "qini": {arm: value}}.
    """
    # Imported here: the DuckDB reference's process should not carry LightGBM and scikit-learn.
    import lightgbm as lgb
    from sklearn.model_selection import train_test_split

    from jobs.model.metrics import qini_auc_score

    started = time.perf_counter()
    exp, cfg, spec = settings.experiment, settings.training, settings.features
    window = pd.Timedelta(days=exp.attribution_window_days)
    end_of_day = pd.Timestamp(run_date + timedelta(days=1))

    users = _read_raw_pandas(settings, "users", run_date)
    sends = _read_raw_pandas(settings, "sends", run_date)
    sends = sends.sort_values(["dt", "sent_at", "customer_id", "arm", "campaign_id"], kind="stable")
    sends = sends.drop_duplicates("send_id")
    sends = sends[sends["sent_at"] < end_of_day]
    responses = _read_raw_pandas(settings, "responses", run_date)
    responses = responses.sort_values(["dt", "responded_at", "customer_id", "response_type"], kind="stable")
    responses = responses.drop_duplicates("response_id")
    qualifying = responses.loc[
        responses["response_type"].isin(exp.qualifying_response_types) & (responses["responded_at"] < end_of_day),
        ["customer_id", "responded_at"],
    ]

    # Label: a qualifying response in (sent_at, sent_at + window].
    last_matured = pd.Timestamp(run_date - timedelta(days=exp.attribution_window_days))
    data = sends[sends["sent_at"].dt.normalize() <= last_matured].drop(columns="dt")
    pairs = data[["send_id", "customer_id", "sent_at"]].merge(qualifying, on="customer_id")
    hit = (pairs["responded_at"] > pairs["sent_at"]) & (pairs["responded_at"] <= pairs["sent_at"] + window)
    data["label"] = data["send_id"].isin(pairs.loc[hit, "send_id"]).astype(int)
    # Each further outcome (targeting.outcomes): its types within its window, null before it matured.
    for name, outcome in settings.targeting.outcomes.items():
        events = responses.loc[
            responses["response_type"].isin(outcome.response_types) & (responses["responded_at"] < end_of_day),
            ["customer_id", "responded_at"],
        ]
        pairs = data[["send_id", "customer_id", "sent_at"]].merge(events, on="customer_id")
        within = pd.Timedelta(days=outcome.window_days)
        hit = (pairs["responded_at"] > pairs["sent_at"]) & (pairs["responded_at"] <= pairs["sent_at"] + within)
        known = data["sent_at"].dt.normalize() <= pd.Timestamp(run_date - timedelta(days=outcome.window_days))
        data[label_column(name)] = data["send_id"].isin(pairs.loc[hit, "send_id"]).astype(float).where(known)

    # User attributes from the latest snapshot dated strictly before the send's day.
    snapshots = np.sort(users["dt"].unique())
    before = np.searchsorted(snapshots, data["sent_at"].dt.normalize().to_numpy(), side="left") - 1
    data = data[before >= 0].assign(dt=snapshots[before[before >= 0]])
    data = data.merge(users, on=["customer_id", "dt"])
    attributes = _pandas_attributes(data, data["sent_at"], spec)

    # History strictly before the send, over the spec's windows.
    anchors = data[["send_id", "customer_id", "sent_at"]].set_axis(["anchor_id", "customer_id", "as_of"], axis=1)
    history = _pandas_history(anchors, sends[["customer_id", "sent_at", "arm"]], qualifying, spec)
    labels = ["label", *(label_column(name) for name in settings.targeting.outcomes)]
    data = data[["send_id", "arm", *labels]].join(attributes).join(history, on="send_id")
    for name in spec.categorical:
        data[name] = data[name].astype("category")

    # The T-learner: one classifier per arm, control included; uplift = p_arm - p_control.
    strata = data["arm"] + "/" + data["label"].astype(str)
    train, holdout = train_test_split(data, test_size=cfg.holdout_fraction, stratify=strata, random_state=cfg.seed)
    p = {}
    for label in labels:  # as the pipeline: a model per arm for every outcome (on its matured rows)
        for arm in exp.all_arms:
            rows = train[(train["arm"] == arm) & train[label].notna()]
            model = lgb.LGBMClassifier(**cfg.lightgbm, random_state=cfg.seed, n_jobs=LIGHTGBM_THREADS, verbose=-1)
            model.fit(rows[spec.names], rows[label].astype(int))
            if label == "label":
                p[arm] = model.predict_proba(holdout[spec.names])[:, 1]
            else:
                model.predict_proba(holdout[spec.names])
    qini = {}
    for arm in exp.arms:
        rows = holdout["arm"].isin([arm, exp.control]).to_numpy()
        treated = (holdout["arm"].to_numpy()[rows] == arm).astype(int)
        uplift = p[arm][rows] - p[exp.control][rows]
        qini[arm] = round(qini_auc_score(holdout["label"].to_numpy()[rows], uplift, treated), 4)
    return {"seconds": round(time.perf_counter() - started, 3), "training_rows": len(data), "qini": qini}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    etl = commands.add_parser("duckdb-etl", help=duckdb_etl.__doc__.splitlines()[0])
    etl.add_argument("--run-date", type=date.fromisoformat, required=True)
    etl.add_argument("--out", type=Path, required=True, help="folder for training.parquet and scoring.parquet")
    tlearner = commands.add_parser("pandas-tlearner", help=pandas_tlearner.__doc__.splitlines()[0])
    tlearner.add_argument("--run-date", type=date.fromisoformat, required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.command == "duckdb-etl":
        result = duckdb_etl(settings, args.run_date, args.out)
    else:
        result = pandas_tlearner(settings, args.run_date)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
