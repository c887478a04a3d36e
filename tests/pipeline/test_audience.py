"""Where campaign managers read the audience: terminal summary, CSV send list, what-if, PostgreSQL."""

import uuid

import pandas as pd
import psycopg
import pytest

from conftest import RUN_DATE
from jobs.data.lake import partition_dir
from jobs.targeting import audience as aud

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture(scope="module")
def published(settings, nightly):
    return pd.read_parquet(partition_dir(settings, "audience", RUN_DATE))


def test_show_summarises_arms_and_top_customers(settings, published):
    text = aud.show(settings, RUN_DATE, top=5)
    assert f"{len(published):,} customers scored" in text
    for arm in published.loc[published["selected"], "recommended_arm"].unique():
        assert arm in text
    top = published.sort_values("rank").head(5)["customer_id"]
    assert all(customer in text for customer in top)


def test_export_writes_the_send_list_with_its_assignment_record(settings, published, tmp_path):
    rows = aud.export_csv(settings, RUN_DATE, "subject_2", tmp_path / "send.csv")
    sent = published[published["assigned_arm"] == "subject_2"]
    exported = pd.read_csv(tmp_path / "send.csv")
    assert rows == len(sent) == len(exported) > 0
    assert set(exported["customer_id"]) == set(sent["customer_id"])
    assert set(exported["assignment"]) == {"target", "explore"}
    assert (exported["campaign_id"] == settings.export.campaign_of(RUN_DATE)).all()
    assert exported["propensity"].between(0, 1, inclusive="right").all()
    # The control rows go out too (holdout and explore-control), as a randomized campaign's control.
    everyone = aud.export_csv(settings, RUN_DATE, None, tmp_path / "all.csv")
    listed = pd.read_csv(tmp_path / "all.csv")
    assert everyone == int(published["assigned_arm"].notna().sum()) == len(listed)
    control = listed[listed["assigned_arm"] == "control"]
    assert set(control["assignment"]) == {"holdout", "explore"}
    assert set(listed.loc[listed["assignment"] == "holdout", "customer_id"]) == set(
        published.loc[published["holdout"], "customer_id"]
    )
    with pytest.raises(ValueError, match="unknown arm 'subject_7'"):
        aud.export_csv(settings, RUN_DATE, "subject_7", tmp_path / "x.csv")


def test_what_if_shows_who_a_message_helps_and_harms(settings, nightly):
    young = aud.what_if(settings, RUN_DATE, "age_band = '<25'", "subject_1")
    seniors = aud.what_if(settings, RUN_DATE, "age_band = '60+'", "subject_1")
    assert young["customers"] > 0 and seniors["customers"] > 0
    assert young["response_rate_with"] > young["response_rate_without"]
    assert seniors["expected_uplift"] < 0, "subject_1 harms customers 60 and over"


@pytest.fixture
def postgres_dsn(monkeypatch, settings):
    name = f"uplift_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    monkeypatch.setenv(settings.export.postgres_dsn_env, dsn)
    yield dsn
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_copy_replaces_the_run_date_in_one_transaction(settings, published, postgres_dsn):
    assert aud.to_postgres(settings, RUN_DATE) == len(published)
    assert aud.to_postgres(settings, RUN_DATE) == len(published), "a rerun replaces, never appends"
    with psycopg.connect(postgres_dsn) as conn:
        total, dates = conn.execute("SELECT count(*), count(DISTINCT run_date) FROM audience").fetchone()
        per_arm = dict(conn.execute("SELECT recommended_arm, count(*) FROM audience GROUP BY 1").fetchall())
        uplift = conn.execute(
            "SELECT uplift_subject_1 FROM audience WHERE customer_id = %s", [published.iloc[0]["customer_id"]]
        ).fetchone()[0]
    assert total == len(published) and dates == 1
    assert per_arm == published["recommended_arm"].value_counts().to_dict()
    assert uplift == pytest.approx(published.iloc[0]["uplift_subject_1"])


def test_a_table_from_before_the_outcomes_gains_their_columns(settings, published, postgres_dsn):
    """An upgrade: the table an earlier version created (no outcome columns) takes the new audience."""
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(
            "CREATE TABLE audience (run_date date NOT NULL, customer_id text, recommended_arm text, "
            "PRIMARY KEY (run_date, customer_id))"
        )
    assert aud.to_postgres(settings, RUN_DATE) == len(published)
    with psycopg.connect(postgres_dsn) as conn:
        harmed = conn.execute("SELECT max(uplift_high_subject_3__unsubscribe) FROM audience").fetchone()[0]
    assert harmed == pytest.approx(published["uplift_high_subject_3__unsubscribe"].max())


def test_the_nightly_export_publishes_the_send_list_and_the_postgres_copy(settings, published, postgres_dsn):
    exported = aud.publish_export(settings, RUN_DATE)
    send_list = pd.read_csv(exported["send_list"])
    listed = published[published["assigned_arm"].notna()]
    assert exported["rows"] == len(listed) == len(send_list) and exported["postgres_rows"] == len(published)
    assert set(send_list["customer_id"]) == set(listed["customer_id"])
    assert aud.publish_export(settings, RUN_DATE)["rows"] == len(send_list), "a rerun replaces the send list"
    assert [p.name for p in partition_dir(settings, "exports", RUN_DATE).iterdir()] == ["send_list.csv"]


def test_the_approval_shows_the_night_in_a_campaign_managers_words(settings, published):
    text = aud.approval_summary(settings, RUN_DATE)
    routes = published["assignment"].value_counts()
    assert settings.export.campaign_of(RUN_DATE) in text and published["policy"].iloc[0] in text
    assert f"{routes['target']:,} target" in text and f"{routes['holdout']:,} holdout" in text
    assert f"{(published['assigned_arm'].notna()).sum():,} customers on the send list" in text
    for arm in published.loc[published["selected"], "recommended_arm"].unique():
        assert f"| {arm} |" in text


def test_no_export_without_a_connection_string(settings, published, monkeypatch):
    monkeypatch.delenv(settings.export.postgres_dsn_env, raising=False)
    assert aud.to_postgres(settings, RUN_DATE) is None


def test_the_documented_queries_read_the_audience(spark, settings, published):
    """The Spark SQL and DuckDB queries shown in docs/audience.md, on the real table."""
    import duckdb

    lake = settings.paths.lake
    spark_rows = spark.sql(
        f"SELECT recommended_arm, count(*) AS customers FROM parquet.`{lake / 'audience'}` "
        f"WHERE run_date = '{RUN_DATE}' AND selected GROUP BY recommended_arm"
    ).collect()
    duck_rows = duckdb.sql(
        f"SELECT recommended_arm, count(*) AS customers "
        f"FROM read_parquet('{lake}/audience/*/*.parquet', hive_partitioning = true) "
        f"WHERE run_date = '{RUN_DATE}' AND selected GROUP BY recommended_arm"
    ).fetchall()
    expected = published[published["selected"]]["recommended_arm"].value_counts().to_dict()
    assert {r["recommended_arm"]: r["customers"] for r in spark_rows} == expected
    assert dict(duck_rows) == expected
