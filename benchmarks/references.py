"""Reference implementations the benchmarks compare the pipeline against.

- `duckdb_etl`: the same point-in-time training and scoring sets as `jobs.etl.build_sets`,
  built by one DuckDB SQL session on a single node (2 threads) straight from the raw parquet.
  tests/test_references.py proves it equal to the Spark ETL, row for row and value for value.
- `pandas_tlearner`: what a user would write instead of the pipeline: one in-memory pandas +
  LightGBM script from the raw parquet to the per-arm holdout Qini of a T-learner.

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

from jobs.etl import FEATURES, LOOKBACK_DAYS
from jobs.lake import MissingInputError, raw_dir, raw_partitions
from jobs.settings import CANONICAL_COLUMNS, Settings, Source, load_settings

# DuckDB spelling of jobs.lake.RAW_TYPES: delivered columns are renamed, then try-cast.
DUCKDB_TYPES = {
    "customer_id": "VARCHAR",
    "signup_date": "DATE",
    "age": "INTEGER",
    "gender": "VARCHAR",
    "customer_type": "VARCHAR",
    "email": "VARCHAR",
    "send_id": "VARCHAR",
    "campaign_id": "VARCHAR",
    "sent_at": "TIMESTAMP",
    "arm": "VARCHAR",
    "response_id": "VARCHAR",
    "responded_at": "TIMESTAMP",
    "response_type": "VARCHAR",
}
DUCKDB_THREADS = 2  # as Spark's local[2]
# One LightGBM thread: with n_jobs=2, a fit slows down about 5x as soon as another process
# competes for the cores (OpenMP threads spin-wait), and timings become noise.
LIGHTGBM_THREADS = 1


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
    """A source's deliveries dated up to run_date, canonical names and types, with `dt`."""
    conf = _parquet_source(settings, source)
    days = [folder.name[3:] for folder in raw_partitions(settings, source, run_date)]
    if not days:
        raise MissingInputError(f"raw source '{source}': no delivery dt<={run_date} under {raw_dir(settings, source)}")
    columns = ", ".join(
        f"TRY_CAST({_ident(conf.columns[name])} AS {DUCKDB_TYPES[name]}) AS {name}"
        for name in CANONICAL_COLUMNS[source]
    )
    files = _quote(str(raw_dir(settings, source) / "dt=*" / "*.parquet"))
    return (
        f"SELECT {columns}, CAST(dt AS DATE) AS dt "
        f"FROM read_parquet({files}, hive_partitioning = true, hive_types = {{'dt': VARCHAR}}, union_by_name = true) "
        f"WHERE dt IN ({', '.join(_quote(d) for d in days)})"
    )


def _point_in_time_sql(anchors: str) -> str:
    """jobs.etl.point_in_time_features in SQL: anchor_id, customer_id, as_of and the features.

    `anchors` names a table (anchor_id, customer_id, as_of, anchor_day); tables users, sends,
    qualifying and snapshot_days must exist. Anchors without a snapshot before their day drop.
    """
    return f"""
    WITH snapshot_for AS (  -- the latest users snapshot dated strictly before the anchor's day
        SELECT a.anchor_day, max(d.snapshot_dt) AS snapshot_dt
        FROM (SELECT DISTINCT anchor_day FROM {anchors}) a JOIN snapshot_days d ON d.snapshot_dt < a.anchor_day
        GROUP BY a.anchor_day
    ),
    prior_sends AS (
        SELECT a.anchor_id,
               count(*) AS n_sends_90d,
               CAST(count_if(s.sent_at >= a.as_of - INTERVAL 30 DAYS) AS BIGINT) AS n_sends_30d,
               arg_max_null(s.arm, s.sent_at) AS previous_arm
        FROM {anchors} a JOIN sends s ON s.customer_id = a.customer_id
        WHERE s.sent_at < a.as_of AND s.sent_at >= a.as_of - INTERVAL {LOOKBACK_DAYS} DAYS
        GROUP BY a.anchor_id
    ),
    prior_responses AS (
        SELECT a.anchor_id,
               count(*) AS n_responses_90d,
               CAST(count_if(r.responded_at >= a.as_of - INTERVAL 30 DAYS) AS BIGINT) AS n_responses_30d,
               max(r.responded_at) AS last_response
        FROM {anchors} a JOIN qualifying r ON r.customer_id = a.customer_id
        WHERE r.responded_at < a.as_of AND r.responded_at >= a.as_of - INTERVAL {LOOKBACK_DAYS} DAYS
        GROUP BY a.anchor_id
    )
    SELECT a.anchor_id, a.customer_id, a.as_of,
           u.age,
           CAST(CAST(a.as_of AS DATE) - u.signup_date AS INTEGER) AS tenure_days,
           CAST(dayofweek(a.anchor_day) + 1 AS INTEGER) AS weekday,  -- Spark: 1 = Sunday
           coalesce(p.n_sends_30d, 0) AS n_sends_30d,
           coalesce(p.n_sends_90d, 0) AS n_sends_90d,
           coalesce(r.n_responses_30d, 0) AS n_responses_30d,
           coalesce(r.n_responses_90d, 0) AS n_responses_90d,
           -- Spark casts timestamps to whole seconds (floor) before subtracting
           (epoch(date_trunc('second', a.as_of)) - epoch(date_trunc('second', r.last_response))) / 86400.0
               AS days_since_last_response,
           CASE WHEN coalesce(p.n_sends_90d, 0) > 0
                THEN coalesce(r.n_responses_90d, 0) / p.n_sends_90d END AS response_rate_90d,
           u.gender, u.customer_type,
           lower(string_split(u.email, '@')[-1]) AS email_domain,
           coalesce(p.previous_arm, 'none') AS previous_arm
    FROM {anchors} a
    JOIN snapshot_for USING (anchor_day)
    JOIN users u ON u.customer_id = a.customer_id AND u.dt = snapshot_for.snapshot_dt
    LEFT JOIN prior_sends p ON p.anchor_id = a.anchor_id
    LEFT JOIN prior_responses r ON r.anchor_id = a.anchor_id
    """


def duckdb_etl(settings: Settings, run_date: date, out_dir: Path) -> dict:
    """Write out_dir/training.parquet and out_dir/scoring.parquet as jobs.etl.build_sets defines them.

    Reads parquet deliveries only (conf `format: parquet`; a CSV source raises), honouring the
    conf's column mapping. Everything stays inside DuckDB; Python sees only the row counts.
    Returns {"training_rows", "scoring_rows", "seconds"} (wall time, connection included).
    """
    started = time.perf_counter()
    exp = settings.experiment
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    end_of_day = f"TIMESTAMP '{run_date + timedelta(days=1)}'"
    scoring_day = f"DATE '{run_date + timedelta(days=1)}'"
    last_matured = f"DATE '{run_date - timedelta(days=exp.attribution_window_days)}'"
    window = f"INTERVAL {exp.attribution_window_days} DAYS"
    qualifying_types = ", ".join(_quote(t) for t in exp.qualifying_response_types)
    features = ", ".join(FEATURES)
    snapshot_days = ", ".join(f"(DATE '{f.name[3:]}')" for f in raw_partitions(settings, "users", run_date))

    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {DUCKDB_THREADS}")
        con.execute("SET TimeZone = 'UTC'")  # as the Spark session: dates of timestamps are UTC dates
        con.execute(f"CREATE TEMP TABLE users AS {_raw_sql(settings, 'users', run_date)}")
        con.execute(f"CREATE TEMP TABLE snapshot_days AS SELECT * FROM (VALUES {snapshot_days}) v(snapshot_dt)")
        # Dedupe as jobs.etl.dedupe: the first delivered row per key (other columns break ties), then the run-date cut.
        con.execute(f"""
            CREATE TEMP TABLE sends AS
            SELECT send_id, campaign_id, customer_id, sent_at, arm FROM ({_raw_sql(settings, "sends", run_date)})
            QUALIFY row_number() OVER (PARTITION BY send_id
                ORDER BY dt ASC NULLS LAST, sent_at ASC NULLS LAST, customer_id ASC NULLS LAST, arm ASC NULLS LAST,
                    campaign_id ASC NULLS LAST) = 1
            AND sent_at < {end_of_day}
        """)
        con.execute(f"""
            CREATE TEMP TABLE qualifying AS
            SELECT customer_id, responded_at FROM ({_raw_sql(settings, "responses", run_date)})
            QUALIFY row_number() OVER (PARTITION BY response_id
                ORDER BY dt ASC NULLS LAST, responded_at ASC NULLS LAST, customer_id ASC NULLS LAST,
                    response_type ASC NULLS LAST) = 1
            AND response_type IN ({qualifying_types}) AND responded_at < {end_of_day}
        """)
        con.execute(f"""
            CREATE TEMP TABLE matured AS
            SELECT s.*, CAST(EXISTS (
                SELECT 1 FROM qualifying r WHERE r.customer_id = s.customer_id
                AND r.responded_at > s.sent_at AND r.responded_at <= s.sent_at + {window}) AS INTEGER) AS label
            FROM sends s WHERE CAST(s.sent_at AS DATE) <= {last_matured}
        """)
        con.execute("""
            CREATE TEMP TABLE training_anchors AS
            SELECT send_id AS anchor_id, customer_id, sent_at AS as_of, CAST(sent_at AS DATE) AS anchor_day FROM matured
        """)
        con.execute(f"""
            CREATE TEMP TABLE scoring_anchors AS
            SELECT customer_id AS anchor_id, customer_id, CAST({scoring_day} AS TIMESTAMP) AS as_of,
                   {scoring_day} AS anchor_day
            FROM users WHERE dt = (SELECT max(snapshot_dt) FROM snapshot_days) AND ({settings.features.eligibility})
        """)
        training_file, scoring_file = out_dir / "training.parquet", out_dir / "scoring.parquet"
        training_rows = con.execute(f"""
            COPY (
                SELECT f.anchor_id AS send_id, f.customer_id, m.campaign_id, f.as_of AS sent_at, m.arm, m.label,
                       {features}
                FROM ({_point_in_time_sql("training_anchors")}) f JOIN matured m ON m.send_id = f.anchor_id
            ) TO {_quote(str(training_file))} (FORMAT parquet)
        """).fetchone()[0]
        scoring_rows = con.execute(f"""
            COPY (SELECT customer_id, {features} FROM ({_point_in_time_sql("scoring_anchors")}))
            TO {_quote(str(scoring_file))} (FORMAT parquet)
        """).fetchone()[0]
    finally:
        con.close()
    return {
        "training_rows": int(training_rows),
        "scoring_rows": int(scoring_rows),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _read_raw_pandas(settings: Settings, source: str, run_date: date) -> pd.DataFrame:
    """A source's parquet deliveries up to run_date, renamed to canonical columns, with `dt`."""
    conf = _parquet_source(settings, source)
    frame = pd.read_parquet(raw_dir(settings, source), filters=[("dt", "<=", run_date.isoformat())])
    frame = frame.rename(columns={delivered: name for name, delivered in conf.columns.items()})
    return frame[list(CANONICAL_COLUMNS[source])].assign(dt=pd.to_datetime(frame["dt"].astype(str)))


def pandas_tlearner(settings: Settings, run_date: date) -> dict:
    """The T-learner end to end in memory: raw parquet -> features -> per-arm holdout Qini.

    The features and labels are jobs.etl's training set (same rows); the holdout split and
    LightGBM parameters are conf `training`'s, without the pipeline's early stopping, on
    LIGHTGBM_THREADS threads. Parquet deliveries only. Qini is
    jobs.metrics.qini_auc_score on arm-vs-control holdout rows, uplift = p_arm - p_control.
    Returns {"seconds", "training_rows", "qini": {arm: value}}.
    """
    # Imported here: the DuckDB reference's process should not carry LightGBM and scikit-learn.
    import lightgbm as lgb
    from sklearn.model_selection import train_test_split

    from jobs.etl import CATEGORICAL_FEATURES
    from jobs.metrics import qini_auc_score

    started = time.perf_counter()
    exp, cfg = settings.experiment, settings.training
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

    # User attributes from the latest snapshot dated strictly before the send's day.
    data["day"] = data["sent_at"].dt.normalize()
    snapshots = np.sort(users["dt"].unique())
    before = np.searchsorted(snapshots, data["day"].to_numpy(), side="left") - 1
    data = data[before >= 0].assign(dt=snapshots[before[before >= 0]])
    data = data.merge(users, on=["customer_id", "dt"])
    data["tenure_days"] = (data["day"] - pd.to_datetime(data["signup_date"])).dt.days
    data["weekday"] = (data["day"].dt.dayofweek + 1) % 7 + 1  # Spark's dayofweek: 1 = Sunday
    data["email_domain"] = data["email"].str.rsplit("@", n=1).str[-1].str.lower()

    # History strictly before the send, over 90 and 30 days: counts and the latest event.
    def history(events: pd.DataFrame, noun: str, latest: str) -> pd.DataFrame:
        joined = data[["send_id", "customer_id", "sent_at"]].merge(events, on="customer_id")
        age = joined["sent_at"] - joined["at"]
        joined = joined[(age > pd.Timedelta(0)) & (age <= pd.Timedelta(days=LOOKBACK_DAYS))]
        joined = joined.assign(recent=age <= pd.Timedelta(days=30)).sort_values("at", kind="stable")
        return joined.groupby("send_id").agg(
            **{f"n_{noun}_90d": ("at", "size"), f"n_{noun}_30d": ("recent", "sum"), f"last_{noun}": (latest, "last")}
        )

    earlier_sends = sends[["customer_id", "sent_at", "arm"]].rename(columns={"sent_at": "at"})
    data = data.join(history(earlier_sends, "sends", "arm"), on="send_id")
    data = data.join(history(qualifying.rename(columns={"responded_at": "at"}), "responses", "at"), on="send_id")
    counts = ["n_sends_30d", "n_sends_90d", "n_responses_30d", "n_responses_90d"]
    data[counts] = data[counts].fillna(0)
    data["previous_arm"] = data["last_sends"].fillna("none")
    elapsed = data["sent_at"].dt.floor("s") - data["last_responses"].dt.floor("s")  # Spark floors to seconds
    data["days_since_last_response"] = elapsed.dt.total_seconds() / 86400.0
    data["response_rate_90d"] = (data["n_responses_90d"] / data["n_sends_90d"]).where(data["n_sends_90d"] > 0)
    for name in CATEGORICAL_FEATURES:
        data[name] = data[name].astype("category")

    # The T-learner: one classifier per arm, control included; uplift = p_arm - p_control.
    strata = data["arm"] + "/" + data["label"].astype(str)
    train, holdout = train_test_split(data, test_size=cfg.holdout_fraction, stratify=strata, random_state=cfg.seed)
    p = {}
    for arm in exp.all_arms:
        rows = train[train["arm"] == arm]
        model = lgb.LGBMClassifier(**cfg.lightgbm, random_state=cfg.seed, n_jobs=LIGHTGBM_THREADS, verbose=-1)
        model.fit(rows[FEATURES], rows["label"])
        p[arm] = model.predict_proba(holdout[FEATURES])[:, 1]
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
