"""The lake layout and its two operations: read raw deliveries up to a date, publish a partition.

    <lake>/raw/<source>/dt=YYYY-MM-DD/         landed by upstream (CSV or Parquet)
    <lake>/features/{training,scoring}/run_date=YYYY-MM-DD/
    <lake>/audience/run_date=YYYY-MM-DD/
    <lake>/audience_summary/run_date=YYYY-MM-DD/

Publishing writes into a staging folder and swaps it in with a rename, so a reader sees the
old partition or the new one, never half of one, and a rerun replaces instead of appending.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.settings import CANONICAL_COLUMNS, Settings

# Canonical Spark types of the raw contract; delivered columns are renamed then cast.
RAW_TYPES = {
    "customer_id": "string",
    "signup_date": "date",
    "age": "int",
    "gender": "string",
    "customer_type": "string",
    "email": "string",
    "send_id": "string",
    "campaign_id": "string",
    "sent_at": "timestamp",
    "arm": "string",
    "response_id": "string",
    "responded_at": "timestamp",
    "response_type": "string",
}


class MissingInputError(RuntimeError):
    """A required raw delivery or upstream partition is not there."""


def raw_dir(settings: Settings, source: str) -> Path:
    return settings.paths.lake / "raw" / source


def table_dir(settings: Settings, table: str) -> Path:
    return settings.paths.lake / table


def partition_dir(settings: Settings, table: str, run_date: date) -> Path:
    return table_dir(settings, table) / f"run_date={run_date.isoformat()}"


def raw_partitions(settings: Settings, source: str, run_date: date) -> list[Path]:
    """Delivery folders of a source dated on or before run_date, oldest first."""
    root = raw_dir(settings, source)
    dated = []
    for folder in root.glob("dt=*") if root.exists() else []:
        try:
            dt = date.fromisoformat(folder.name[3:])
        except ValueError:
            continue
        if dt <= run_date:
            dated.append((dt, folder))
    return [folder for _, folder in sorted(dated)]


def read_raw(
    spark: SparkSession,
    settings: Settings,
    source: str,
    run_date: date,
    *,
    only_run_date: bool = False,
    check_types: bool = False,
) -> DataFrame:
    """A source's deliveries up to run_date (or of run_date alone), in canonical names and types.

    Adds `dt` (the delivery date). Columns outside the contract are dropped here, so nothing
    unmapped (and no PII beyond the contract) travels further. A value that does not parse as
    its type becomes null; with check_types, `unparsable` lists such columns per row (and
    `raw_<column>` keeps what was delivered) for validation to report.
    """
    folders = raw_partitions(settings, source, run_date)
    if only_run_date:
        folders = [f for f in folders if f.name == f"dt={run_date.isoformat()}"]
    if not folders:
        which = f"dt={run_date}" if only_run_date else f"dt<={run_date}"
        raise MissingInputError(f"raw source '{source}': no delivery {which} under {raw_dir(settings, source)}")
    conf = settings.sources[source]
    reader = spark.read.option("basePath", str(raw_dir(settings, source)))
    if conf.format == "csv":
        reader = reader.option("header", "true")
        frame = reader.csv([str(f) for f in folders])
    else:
        frame = reader.parquet(*[str(f) for f in folders])
    missing = [delivered for delivered in conf.columns.values() if delivered not in frame.columns]
    if missing:
        raise MissingInputError(
            f"raw source '{source}': delivered columns {frame.columns} lack {missing} "
            f"(mapped in conf sources.{source}.columns)"
        )
    delivered = {name: F.col(f"`{conf.columns[name]}`") for name in CANONICAL_COLUMNS[source]}
    typed = [column.try_cast(RAW_TYPES[name]).alias(name) for name, column in delivered.items()]
    dt = F.col("dt").cast("date").alias("dt")
    if not check_types:
        return frame.select(*typed, dt)
    raw = [column.cast("string").alias(f"raw_{name}") for name, column in delivered.items()]
    failed = [
        F.when(F.col(f"raw_{name}").isNotNull() & F.col(name).isNull(), F.lit(name))
        for name in CANONICAL_COLUMNS[source]
    ]
    return frame.select(*typed, *raw, dt).withColumn("unparsable", F.concat_ws(",", *failed))


def publish_partition(df: DataFrame, settings: Settings, table: str, run_date: date) -> Path:
    """Write df as the run_date partition of table, replacing any previous one atomically."""
    target = partition_dir(settings, table, run_date)
    # Left by a writer killed mid-way: never read (hidden), removed by the next publish.
    for stale in table_dir(settings, table).glob(f".staging-{run_date.isoformat()}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = table_dir(settings, table) / f".staging-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
    df.write.mode("overwrite").parquet(str(staging))
    retired = staging.with_name(staging.name + "-retired")
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


def partition_dates(settings: Settings, table: str) -> list[date]:
    """The run dates a table has published, oldest first."""
    root = table_dir(settings, table)
    return (
        sorted(date.fromisoformat(p.name[len("run_date=") :]) for p in root.glob("run_date=*")) if root.exists() else []
    )


def read_partition(spark: SparkSession, settings: Settings, table: str, run_date: date) -> DataFrame:
    path = partition_dir(settings, table, run_date)
    if not path.exists():
        raise MissingInputError(
            f"table '{table}' has no partition run_date={run_date} at {path}: run the step that writes it first"
        )
    return spark.read.parquet(str(path))


def sample_parquet(path: Path, columns: list[str] | None, rows: int, seed: int) -> pd.DataFrame:
    """A uniform random sample of about `rows` rows, read one record batch at a time.

    Every row is kept with the same probability, so the shares of any group (arm, label)
    are preserved in expectation and memory stays bounded by the sample, not the table.
    """
    if not path.exists():
        raise MissingInputError(f"no table at {path}")
    dataset = pads.dataset(str(path), format="parquet")
    total = dataset.count_rows()
    share = min(1.0, rows / total) if total else 1.0
    rng = np.random.default_rng(seed)
    parts = []
    for batch in dataset.to_batches(columns=columns):
        keep = rng.random(batch.num_rows) < share
        if keep.any():
            parts.append(batch.filter(pa.array(keep)).to_pandas())
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
