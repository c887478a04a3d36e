"""Point-in-time ETL on a hand-made history where every expected number is known."""

from datetime import date, datetime, timedelta

import pandas as pd
import pytest

from helpers import settings_in
from jobs.data.etl import dedupe, run_etl
from jobs.data.lake import MissingInputError, partition_dir
from jobs.demo.generate import deliver
from jobs.settings import Outcome

RUN = date(2026, 10, 30)
USERS = pd.DataFrame(
    {
        "customer_id": ["A", "B", "C"],
        "signup_date": [date(2025, 1, 1), date(2026, 9, 1), date(2025, 6, 1)],
        "age": [25, 40, 16],
        "gender": ["F", "M", "U"],
        "customer_type": ["regular", "vip", "occasional"],
        "email": ["a@Gmail.com", "b@corp.example", "c@yahoo.com"],
    }
)


def _send(send_id, customer, at, arm):
    return {"send_id": send_id, "campaign_id": "cmp", "customer_id": customer, "sent_at": at, "arm": arm}


def _response(response_id, customer, at, kind="click"):
    return {"response_id": response_id, "customer_id": customer, "responded_at": at, "response_type": kind}


@pytest.fixture
def history(settings, tmp_path):
    s = settings_in(settings, tmp_path)
    for offset in range(30):
        deliver(s, "users", USERS, RUN - timedelta(days=offset))
    sends = [
        _send("s1", "A", datetime(2026, 10, 5, 10), "subject_1"),
        _send("s1", "A", datetime(2026, 10, 5, 10), "subject_1"),  # delivered twice
        _send("s2", "B", datetime(2026, 10, 5, 11), "control"),
        _send("s3", "A", datetime(2026, 10, 10, 9), "subject_2"),
        _send("s4", "A", datetime(2026, 10, 28, 9), "subject_3"),  # not matured on RUN
    ]
    responses = [
        _response("r1", "A", datetime(2026, 10, 7, 12)),  # s1 responded within 7 days
        _response("r2", "B", datetime(2026, 10, 6, 12), "open"),  # not a qualifying type
        _response("r3", "B", datetime(2026, 10, 20, 12)),  # 15 days after s2: outside the window
        _response("r4", "A", datetime(2026, 10, 31, 1)),  # after RUN: invisible
    ]
    for frame in (pd.DataFrame(sends), pd.DataFrame(responses)):
        key = "sent_at" if "sent_at" in frame else "responded_at"
        source = "sends" if "sent_at" in frame else "responses"
        for day, part in frame.groupby(frame[key].dt.date):
            deliver(s, source, part, day)
    return s


def test_training_rows_are_matured_deduplicated_labelled_sends(spark, history):
    counts = run_etl(spark, history, RUN)
    training = pd.read_parquet(partition_dir(history, "features/training", RUN)).set_index("send_id")
    assert counts["training_rows"] == 3
    assert counts["duplicate_sends_removed"] == 1 and counts["duplicate_responses_removed"] == 0
    assert sorted(training.index) == ["s1", "s2", "s3"]
    assert training["label"].to_dict() == {"s1": 1, "s2": 0, "s3": 0}


def test_each_outcome_label_matures_on_its_own_window(spark, history):
    """A further outcome's label is 0/1 once its window has passed, null before; the rows stay
    the primary outcome's matured sends."""
    outcomes = {
        "late": Outcome(response_types=["click"], window_days=21, value=1.0),
        "quick": Outcome(response_types=["click", "open"], window_days=2, value=1.0),
    }
    local = history.model_copy(update={"targeting": history.targeting.model_copy(update={"outcomes": outcomes})})
    run_etl(spark, local, RUN)
    training = pd.read_parquet(partition_dir(local, "features/training", RUN)).set_index("send_id")
    assert sorted(training.index) == ["s1", "s2", "s3"], "the primary window (7 days) decides the rows"
    assert training["label"].to_dict() == {"s1": 1, "s2": 0, "s3": 0}
    # 21 days: only the sends of Oct 9 or before have matured (s1, s2); r3 is 15 days after s2.
    late = training["label__late"]
    assert late[["s1", "s2"]].to_dict() == {"s1": 1, "s2": 1} and pd.isna(late["s3"])
    # 2 days: r1 came 2 days 2 hours after s1 (too late); B's open came 1 day after s2.
    assert training["label__quick"].to_dict() == {"s1": 0, "s2": 1, "s3": 0}


def test_dedupe_picks_the_same_copy_whatever_the_delivery_order(spark):
    # Two copies of s1 delivered the same day at the same time, differing only in campaign_id.
    copies = [
        ("s1", "cmp_b", "A", datetime(2026, 10, 5, 10), "subject_1", date(2026, 10, 5)),
        ("s1", "cmp_a", "A", datetime(2026, 10, 5, 10), "subject_1", date(2026, 10, 5)),
        ("s2", "cmp_a", "B", datetime(2026, 10, 5, 11), "control", date(2026, 10, 5)),
    ]
    schema = "send_id string, campaign_id string, customer_id string, sent_at timestamp, arm string, dt date"
    order = ["dt", "sent_at", "customer_id", "arm"]
    picks = set()
    for rows in (copies, copies[::-1]):
        kept = dedupe(spark.createDataFrame(rows, schema).repartition(1), "send_id", order).toPandas()
        assert sorted(kept["send_id"]) == ["s1", "s2"]
        picks.add(kept.set_index("send_id").loc["s1", "campaign_id"])
    assert picks == {"cmp_a"}


def test_features_use_only_history_before_the_send(spark, history):
    run_etl(spark, history, RUN)
    t = pd.read_parquet(partition_dir(history, "features/training", RUN)).set_index("send_id")
    assert t.loc["s1", "n_sends_30d"] == 0 and t.loc["s1", "previous_arm"] == "none"
    assert t.loc["s1", "n_responses_30d"] == 0, "s1's own response must not be a feature of s1"
    assert t.loc["s3", "n_sends_30d"] == 1 and t.loc["s3", "previous_arm"] == "subject_1"
    assert t.loc["s3", "n_responses_30d"] == 1
    assert t.loc["s3", "days_since_last_response"] == pytest.approx(2 + 21 / 24)
    assert t.loc["s3", "response_rate_90d"] == 1.0
    assert t.loc["s1", "email_domain"] == "gmail.com"
    assert t.loc["s1", "tenure_days"] == (date(2026, 10, 5) - date(2025, 1, 1)).days


def test_scoring_rows_are_eligible_customers_as_of_the_run_date(spark, history):
    run_etl(spark, history, RUN)
    scoring = pd.read_parquet(partition_dir(history, "features/scoring", RUN)).set_index("customer_id")
    assert sorted(scoring.index) == ["A", "B"], "C is under 18: not eligible"
    assert scoring.loc["A", "n_sends_30d"] == 3 and scoring.loc["A", "previous_arm"] == "subject_3"
    assert scoring.loc["A", "n_responses_90d"] == 1, "the response after the run date is invisible"
    assert scoring.loc["B", "n_responses_90d"] == 1, "the late click counts as history, the open does not"
    assert list(scoring.columns) == history.features.names


def test_no_leakage_or_pii_in_curated_tables(spark, history):
    run_etl(spark, history, RUN)
    for table in ("features/training", "features/scoring"):
        frame = pd.read_parquet(partition_dir(history, table, RUN))
        assert "email" not in frame.columns
        assert not frame.astype(str).apply(lambda c: c.str.contains("@")).any().any()


def test_rerun_replaces_the_partition(spark, history):
    run_etl(spark, history, RUN)
    first = pd.read_parquet(partition_dir(history, "features/training", RUN)).sort_values("send_id")
    run_etl(spark, history, RUN)
    second = pd.read_parquet(partition_dir(history, "features/training", RUN)).sort_values("send_id")
    pd.testing.assert_frame_equal(first.reset_index(drop=True), second.reset_index(drop=True))
    leftovers = [p.name for p in partition_dir(history, "features/training", RUN).parent.iterdir()]
    assert leftovers == [f"run_date={RUN}"]


def test_a_renamed_column_mapping_must_match_the_delivery(spark, history):
    sources = dict(history.sources)
    sends = sources["sends"]
    sources["sends"] = sends.model_copy(update={"columns": {**sends.columns, "arm": "variant"}})
    renamed = history.model_copy(update={"sources": sources})
    with pytest.raises(MissingInputError, match=r"raw source 'sends'.*'variant' \(our 'arm'\).*dt=2026-10-05"):
        run_etl(spark, renamed, RUN)


@pytest.mark.slow  # two datasets generated, validated and through the ETL: make test, not the fast tier
def test_own_column_names_and_csv_need_only_configuration(spark, settings, tmp_path):
    """A user whose files name every column differently, responses as CSV: conf changes only."""
    from conftest import DEMO, RUN_DATE
    from helpers import settings_in
    from jobs.data.validate import validate_raw
    from jobs.demo.generate import generate

    renamed = {
        "users": {
            "customer_id": "cust_no",
            "signup_date": "joined",
            "age": "age_years",
            "gender": "sex",
            "customer_type": "segment",
            "email": "mail",
        },
        "sends": {
            "send_id": "delivery_id",
            "campaign_id": "campaign",
            "customer_id": "cust_no",
            "sent_at": "delivered_ts",
            "arm": "variant",
        },
        "responses": {
            "response_id": "event_id",
            "customer_id": "cust_no",
            "responded_at": "event_ts",
            "response_type": "event",
        },
    }
    sources = {
        name: settings.sources[name].model_copy(
            update={"columns": columns, "format": "csv" if name == "responses" else "parquet"}
        )
        for name, columns in renamed.items()
    }
    # Both homes hold the same small dataset (the columns, not the volume, are under test).
    small = {**DEMO, "customers": 3000, "sends_per_day": 1200}
    ours = settings_in(settings, tmp_path / "ours")
    theirs = settings_in(settings, tmp_path / "theirs").model_copy(update={"sources": sources})
    generate(ours, last_day=RUN_DATE, **small)
    generate(theirs, last_day=RUN_DATE, **small)
    delivered = pd.read_csv(next((theirs.paths.lake / "raw" / "responses" / f"dt={RUN_DATE}").glob("*.csv")))
    assert set(delivered.columns) == {"event_id", "cust_no", "event_ts", "event"}

    validate_raw(spark, theirs, RUN_DATE)
    run_etl(spark, theirs, RUN_DATE)
    run_etl(spark, ours, RUN_DATE)
    for table in ("features/training", "features/scoring"):
        key = ["send_id"] if table.endswith("training") else ["customer_id"]
        expected, got = (pd.read_parquet(partition_dir(s, table, RUN_DATE)).sort_values(key) for s in (ours, theirs))
        assert len(expected) > 1000
        pd.testing.assert_frame_equal(expected.reset_index(drop=True), got.reset_index(drop=True), check_dtype=False)


@pytest.fixture
def edges(settings, tmp_path):
    """Two customers, one send each; D's response lands exactly at the window's end but is
    delivered late (10 days after it happened), E's one second after the window."""
    s = settings_in(settings, tmp_path)
    users = USERS.head(2).assign(customer_id=["D", "E"])
    for offset in range(30):
        day = RUN - timedelta(days=offset)
        # E is upgraded to vip on 10-20: the send of 10-12 must still see 'vip'-less history.
        changed = users.assign(customer_type=["regular", "vip" if day >= date(2026, 10, 20) else "regular"])
        deliver(s, "users", changed, day)
    sends = [_send(f"s_{customer}", customer, datetime(2026, 10, 12, 10), "subject_1") for customer in "DE"]
    deliver(s, "sends", pd.DataFrame(sends), date(2026, 10, 12))
    deliver(s, "responses", pd.DataFrame([_response("r_d", "D", datetime(2026, 10, 19, 10))]), date(2026, 10, 29))
    deliver(s, "responses", pd.DataFrame([_response("r_e", "E", datetime(2026, 10, 19, 10, 0, 1))]), date(2026, 10, 19))
    return s


def test_window_edges_late_responses_and_attribute_history(spark, edges):
    run_etl(spark, edges, RUN)
    t = pd.read_parquet(partition_dir(edges, "features/training", RUN)).set_index("send_id")
    assert t.loc["s_D", "label"] == 1, "a response exactly at sent_at + window counts"
    assert t.loc["s_E", "label"] == 0, "one second later it does not"
    assert t.loc["s_E", "customer_type"] == "regular", "a later upgrade does not rewrite the send's history"
    scoring = pd.read_parquet(partition_dir(edges, "features/scoring", RUN)).set_index("customer_id")
    assert scoring.loc["E", "customer_type"] == "vip"

    earlier = date(2026, 10, 20)  # D's send has matured, but its response is not delivered yet
    run_etl(spark, edges, earlier)
    before = pd.read_parquet(partition_dir(edges, "features/training", earlier)).set_index("send_id")
    assert before.loc["s_D", "label"] == 0, "a run sees only deliveries dated up to its run date"


def test_window_start_walks_back_until_every_arm_has_its_rows():
    from jobs.data.etl import window_start

    days = [RUN - timedelta(days=k) for k in range(5)]  # RUN is the latest
    counts = {(d, "control"): 10 for d in days} | {(d, "subject_1"): 30 for d in days}
    assert window_start(counts, ["control", "subject_1"], None) is None
    assert window_start(counts, ["control", "subject_1"], 30) == days[2]  # control: 10 a day
    assert window_start(counts, ["control", "subject_1"], 50) == days[4]
    assert window_start(counts, ["control", "subject_1"], 51) is None  # never reached: every send
    assert window_start(counts, ["control", "subject_1", "subject_2"], 1) is None  # an arm never sent


@pytest.mark.parametrize("longest", [90, 5], ids=["the demo's 90-day history", "a 5-day history"])
def test_a_row_budget_keeps_the_latest_sends_and_their_full_history(spark, settings, generated, longest):
    """With training.rows_per_arm the training set is the full one's latest send days, row for row
    (features from the whole history), back to the first day every arm has its rows by; the scoring
    set does not change. Deliveries older than the window's history are not read."""
    from pyspark.sql import functions as F

    from conftest import RUN_DATE
    from jobs.data.etl import build_sets, read_history
    from jobs.features import History

    if longest != 90:
        history = History(n_sends=[3], n_responses=[longest], response_rate=[4], days_since_last_response=longest)
        settings = settings.model_copy(update={"features": settings.features.model_copy(update={"history": history})})
    full_training, full_scoring = build_sets(spark, settings, RUN_DATE)
    budget = 4000
    windowed = settings.model_copy(update={"training": settings.training.model_copy(update={"rows_per_arm": budget})})
    training, scoring = build_sets(spark, windowed, RUN_DATE)
    days = training.select(F.min(F.to_date("sent_at")).alias("first")).first()["first"]
    per_arm = dict(training.groupBy("arm").count().collect())
    assert min(per_arm.values()) >= budget and set(per_arm) == set(settings.experiment.all_arms)
    assert max(per_arm.values()) < full_training.count() / len(per_arm), "a window, not every send"
    expected = full_training.where(F.to_date("sent_at") >= F.lit(days))
    assert training.count() == expected.count()
    assert training.exceptAll(expected).count() == 0 and expected.exceptAll(training).count() == 0
    # Starting a day later, some arm would have fewer rows than the budget.
    later = full_training.where(F.to_date("sent_at") > F.lit(days)).groupBy("arm").count().collect()
    assert min(row["count"] for row in later) < budget
    assert scoring.exceptAll(full_scoring).count() == 0 and full_scoring.exceptAll(scoring).count() == 0
    read = {"full": read_history(spark, settings, RUN_DATE), "windowed": read_history(spark, windowed, RUN_DATE)}
    assert read["windowed"].first_day == days
    fewer = read["windowed"].delivered["sends"] < read["full"].delivered["sends"]
    assert fewer == (longest == 5), (longest, days, {k: v.delivered for k, v in read.items()})
    spark.catalog.clearCache()
