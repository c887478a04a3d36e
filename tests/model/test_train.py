"""Model behaviour: a model that learned nothing is never promoted."""

import json

import pytest
from pyspark.sql import functions as F

from conftest import RUN_DATE
from helpers import settings_in
from jobs import steps
from jobs.data.lake import partition_dir, publish_partition
from jobs.model import registry
from jobs.model.tracking import use_tracking
from jobs.settings import report_dir


@pytest.mark.slow  # the train, gate and promote steps end to end (test_gate's tier)
def test_a_model_trained_on_shuffled_labels_is_not_promoted(spark, settings, generated, tmp_path):
    from jobs.data.etl import run_etl

    if not partition_dir(settings, "features/training", RUN_DATE).exists():
        run_etl(spark, settings, RUN_DATE)
    isolated = settings_in(settings, tmp_path)
    training = spark.read.parquet(str(partition_dir(settings, "features/training", RUN_DATE)))
    rate = training.agg(F.avg("label")).first()[0]
    # Labels drawn independently of features and arm, at the same rate: nothing to learn.
    noise = training.withColumn("label", (F.rand(seed=0) < rate).cast("int"))
    publish_partition(noise, isolated, "features/training", RUN_DATE)
    scoring = spark.read.parquet(str(partition_dir(settings, "features/scoring", RUN_DATE)))
    publish_partition(scoring, isolated, "features/scoring", RUN_DATE)
    try:
        steps.run("train", RUN_DATE, isolated)
        steps.run("gate", RUN_DATE, isolated)
        result = steps.run("promote", RUN_DATE, isolated)
        assert result["promoted"] is False
        gate = json.loads((report_dir(isolated, RUN_DATE) / "gate.json").read_text())
        assert gate["decision"] == "reject"
        assert registry.alias_version(isolated, registry.CHAMPION) is None
    finally:
        use_tracking(settings)


def test_training_rows_can_be_capped_keeping_arm_shares(spark, settings, generated):
    from jobs.data.etl import run_etl
    from jobs.model.train import load_training_set

    if not partition_dir(settings, "features/training", RUN_DATE).exists():
        run_etl(spark, settings, RUN_DATE)
    full = load_training_set(settings, RUN_DATE)
    capped_settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"max_rows": 20_000})}
    )
    capped = load_training_set(capped_settings, RUN_DATE)
    assert abs(len(capped) - 20_000) < 600
    shares = capped["arm"].value_counts(normalize=True) - full["arm"].value_counts(normalize=True)
    assert shares.abs().max() < 0.02
    assert abs(capped["label"].mean() - full["label"].mean()) < 0.01


def test_training_is_deterministic_for_a_seed(spark, settings, generated):
    from jobs.data.etl import run_etl
    from jobs.model.train import fit_model, load_training_set

    if not partition_dir(settings, "features/training", RUN_DATE).exists():
        run_etl(spark, settings, RUN_DATE)
    rows = load_training_set(settings, RUN_DATE).sample(20_000, random_state=0)
    first = fit_model(rows, settings).predict(None, rows.head(500))
    second = fit_model(rows, settings).predict(None, rows.head(500))
    assert first.equals(second)


def test_the_same_training_rows_in_another_file_order_load_the_same(settings, tmp_path):
    """However the ETL wrote the rows (partitions, their order), training sees the same frame, so a
    rerun on the same data trains the same model and the gate decides the same."""
    import numpy as np
    import pandas as pd

    from jobs.model.train import load_training_set
    from jobs.names import label_column

    rng = np.random.default_rng(3)
    n = 5000
    rows = pd.DataFrame(
        {
            "send_id": [f"S{i:06d}" for i in range(n)],
            "customer_id": [f"C{i % 700:04d}" for i in range(n)],
            "campaign_id": "cmp_1",
            "arm": rng.choice(settings.experiment.all_arms, n),
            **{label_column(o): rng.integers(0, 2, n) for o in [None, *settings.targeting.outcomes]},
            "assignment": "randomized",
            "propensity": 0.25,
            "inclusion_probability": 1.0,
            **{name: rng.integers(0, 50, n) for name in settings.features.names},
        }
    )
    layouts = {}
    for name, order in (("one file", np.arange(n)), ("three shuffled files", rng.permutation(n))):
        folder = partition_dir(settings_in(settings, tmp_path / name), "features/training", RUN_DATE)
        folder.mkdir(parents=True)
        for i, part in enumerate(np.array_split(order, 1 if name == "one file" else 3)):
            rows.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
        layouts[name] = settings_in(settings, tmp_path / name)
    for max_rows in (None, 2000):
        loaded = [
            load_training_set(
                s.model_copy(update={"training": s.training.model_copy(update={"max_rows": max_rows})}), RUN_DATE
            )
            for s in layouts.values()
        ]
        pd.testing.assert_frame_equal(loaded[0], loaded[1])
        # in send order (the rows above are): the whole set as written, a sample as a subsequence
        in_order = rows.drop(columns="send_id")[list(loaded[0].columns)]
        if max_rows:
            assert abs(len(loaded[0]) - max_rows) < 200
            kept = in_order.merge(loaded[0], how="inner")
            pd.testing.assert_frame_equal(kept, loaded[0])
        else:
            pd.testing.assert_frame_equal(in_order, loaded[0], check_dtype=False)
