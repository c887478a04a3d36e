"""The lake layout and its operations: read raw deliveries up to a date, publish a partition, stream a table.

    <lake>/raw/<source>/dt=YYYY-MM-DD/         landed by upstream (CSV or Parquet)
    <lake>/features/{training,scoring}/run_date=YYYY-MM-DD/
    <lake>/audience/run_date=YYYY-MM-DD/
    <lake>/audience_versions/run_date=YYYY-MM-DD/version=N/   earlier audiences of a republished date
    <lake>/audience_summary/run_date=YYYY-MM-DD/

Publishing writes into a staging folder and swaps it in with a rename, so a reader sees the
old partition or the new one, never half of one, and a rerun replaces instead of appending.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.names import AUDIENCE
from jobs.settings import Settings, UserError

if TYPE_CHECKING:  # Spark is imported where it runs: readers of the lake (audience, UI, gate) never load it
    from pyspark.sql import DataFrame, SparkSession


class MissingInputError(UserError, RuntimeError):
    """A required raw delivery or upstream partition is not there."""


def raw_dir(settings: Settings, source: str) -> Path:
    return settings.paths.lake / "raw" / source


def table_dir(settings: Settings, table: str) -> Path:
    return settings.paths.lake / table


def partition_dir(settings: Settings, table: str, run_date: date) -> Path:
    return table_dir(settings, table) / f"run_date={run_date.isoformat()}"


def raw_partitions(settings: Settings, source: str, run_date: date) -> list[Path]:
    """Delivery folders of a source dated on or before run_date, oldest first."""
    return [folder for day, folder in dated_folders(raw_dir(settings, source), "dt") if day <= run_date]


def delivery_dir(settings: Settings, source: str, day: date) -> Path:
    return raw_dir(settings, source) / f"dt={day.isoformat()}"


def missing_deliveries(settings: Settings, run_date: date) -> list[str]:
    """The run date's deliveries that a night needs and that have not landed: for every source with
    `delivery: daily`, its dt= folder holding at least one data file (a file whose name starts with
    neither `.` nor `_`, as Spark reads them: a `_SUCCESS` marker alone is no delivery)."""
    missing = []
    for source, cfg in settings.sources.items():
        folder = delivery_dir(settings, source, run_date)
        files = folder.iterdir() if folder.is_dir() else ()
        if cfg.delivery == "daily" and not any(f.is_file() and f.name[0] not in "._" for f in files):
            missing.append(str(folder))
    return missing


def read_raw(
    spark: SparkSession,
    settings: Settings,
    source: str,
    run_date: date,
    *,
    only_run_date: bool = False,
    days: set[date] | None = None,
    check_types: bool = False,
) -> DataFrame:
    """A source's deliveries up to run_date (or of run_date alone), in canonical names and types.

    Adds `dt` (the delivery date). Only the contract's columns (for users: customer_id and the
    columns the feature spec reads) are kept, so nothing undeclared travels further. A value
    that does not parse as its type becomes null; with check_types, `unparsable` lists such
    columns per row, `raw_<column>` keeps what was delivered and `source_file` the file (its
    dt= folder and name), for validation to report. `days` reads only the deliveries of those
    dates (e.g. the users snapshots some anchor uses): the others are not even listed.
    """
    folders = raw_partitions(settings, source, run_date)
    if only_run_date:
        folders = [f for f in folders if f.name == f"dt={run_date.isoformat()}"]
    if days is not None:
        folders = [f for f in folders if partition_date(f) in days]
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
    types = settings.raw_types(source)
    missing = {name: conf.delivered(name) for name in types if conf.delivered(name) not in frame.columns}
    if missing:
        files = sorted({f.name for f in folders if not _has_columns(spark, conf, f, missing.values())})
        raise MissingInputError(
            f"raw source '{source}': the delivery lacks columns "
            + ", ".join(f"'{d}'" + (f" (our '{n}')" if n != d else "") for n, d in missing.items())
            + f" in {', '.join(files) or 'some files'} under {raw_dir(settings, source)}; delivered columns: "
            f"{[c for c in frame.columns if c != 'dt']}. Map them in conf sources.{source}.columns, or fix "
            "the feature spec (features.attributes) that reads them."
        )
    from pyspark.sql import functions as F

    delivered = {name: F.col(f"`{conf.delivered(name)}`") for name in types}
    typed = [column.try_cast(types[name]).alias(name) for name, column in delivered.items()]
    dt = F.col("dt").cast("date").alias("dt")
    if not check_types:
        return frame.select(*typed, dt)
    raw = [column.cast("string").alias(f"raw_{name}") for name, column in delivered.items()]
    failed = [F.when(F.col(f"raw_{name}").isNotNull() & F.col(name).isNull(), F.lit(name)) for name in types]
    # The dt= folder and the file name: the path's last two parts (a regular expression over the
    # whole path cost more than every other check of a delivery together).
    source_file = F.substring_index(F.input_file_name(), "/", -2).alias("source_file")
    return frame.select(*typed, *raw, dt, source_file).withColumn("unparsable", F.concat_ws(",", *failed))


def _has_columns(spark: SparkSession, conf, folder: Path, columns) -> bool:
    """Whether one delivery folder has all of columns (to name the deliveries that lack some)."""
    reader = spark.read.option("header", "true")
    frame = reader.csv(str(folder)) if conf.format == "csv" else reader.parquet(str(folder))
    return all(c in frame.columns for c in columns)


def version_dir(settings: Settings, table: str, run_date: date, version: int) -> Path:
    """Where a replaced partition of a versioned table is kept: <table>_versions/run_date=<d>/version=<n>/."""
    return table_dir(settings, f"{table}_versions") / f"run_date={run_date.isoformat()}" / f"version={version}"


def kept_versions(settings: Settings, table: str, run_date: date) -> list[int]:
    """The versions of run_date's partition that a republish replaced, oldest first."""
    root = version_dir(settings, table, run_date, 0).parent
    return sorted(int(p.name[len("version=") :]) for p in root.glob("version=*")) if root.exists() else []


def next_version(settings: Settings, table: str, run_date: date) -> int:
    """The version number the next publish of run_date's partition gets (1 for the first)."""
    return len(kept_versions(settings, table, run_date)) + partition_dir(settings, table, run_date).exists() + 1


def publish_partition(df: DataFrame, settings: Settings, table: str, run_date: date, keep: bool = False) -> Path:
    """Write df as the run_date partition of table, replacing any previous one atomically.

    keep: the partition it replaces is kept, moved to version_dir (its number: next_version's
    before this publish), never deleted: an audience is the record of what was sent."""
    target = partition_dir(settings, table, run_date)
    # Left by a writer killed mid-way: never read (hidden), removed by the next publish.
    for stale in table_dir(settings, table).glob(f".staging-{run_date.isoformat()}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = table_dir(settings, table) / f".staging-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
    df.write.mode("overwrite").parquet(str(staging))
    retired = staging.with_name(staging.name + "-retired")
    if target.exists() and keep:
        kept = version_dir(settings, table, run_date, next_version(settings, table, run_date) - 1)
        kept.parent.mkdir(parents=True, exist_ok=True)
        target.rename(kept)
    elif target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


def publish_frame(frame: pd.DataFrame, settings: Settings, table: str, run_date: date) -> Path:
    """publish_partition for a small pandas frame (one Parquet file): the same staging and swap."""
    target = partition_dir(settings, table, run_date)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = table_dir(settings, table) / f".staging-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    frame.to_parquet(staging / "part-0.parquet", index=False)
    retired = staging.with_name(staging.name + "-retired")
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


def read_table(settings: Settings, table: str, since: date | None = None) -> pd.DataFrame:
    """Every partition of a small table (from `since`) as one frame, with its run_date; empty if none."""
    days = [d for d in partition_dates(settings, table) if since is None or d >= since]
    frames = [pd.read_parquet(partition_dir(settings, table, d)).assign(run_date=d) for d in days]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def partition_date(folder: Path) -> date:
    """The date of a partition folder: run_date=YYYY-MM-DD (a table, a report) or dt=YYYY-MM-DD (a delivery)."""
    return date.fromisoformat(folder.name.partition("=")[2])


def dated_folders(root: Path, column: str = "run_date") -> list[tuple[date, Path]]:
    """(date, folder) of root's <column>=YYYY-MM-DD folders, oldest first; a folder whose name is
    not a date is not a partition and is left out."""
    dated = []
    for folder in root.glob(f"{column}=*") if root.exists() else []:
        try:
            dated.append((partition_date(folder), folder))
        except ValueError:
            continue
    return sorted(dated)


def partition_dates(settings: Settings, table: str) -> list[date]:
    """The run dates a table has published, oldest first."""
    return [day for day, _ in dated_folders(table_dir(settings, table))]


# The audience columns the nights after read back: how each customer's arm was assigned (jobs.model.policy.assign).
ASSIGNMENT_RECORD = ["campaign_id", "customer_id", "assignment", "assigned_arm", "propensity", "inclusion_probability"]


def own_campaigns(settings: Settings, run_date: date, since: date | None = None) -> dict[str, Path]:
    """campaign_id -> audience partition, of every audience published up to run_date (from `since`)
    that carries an assignment record: the campaigns whose sends are the pipeline's own."""
    out = {}
    for day in partition_dates(settings, AUDIENCE):
        if day > run_date:
            break
        if since is not None and day < since:
            continue
        folders = [version_dir(settings, AUDIENCE, day, v) for v in kept_versions(settings, AUDIENCE, day)]
        for folder in [*folders, partition_dir(settings, AUDIENCE, day)]:
            dataset = pads.dataset(str(folder), format="parquet")
            if not set(ASSIGNMENT_RECORD) <= set(dataset.schema.names):
                continue
            first = dataset.head(1, columns=["campaign_id"])
            if first.num_rows:
                out[first.column("campaign_id")[0].as_py()] = folder
    return out


def resting_customers(spark: SparkSession, settings: Settings, run_date: date) -> DataFrame | None:
    """customer_id of everyone an audience of the contact_window_days nights before run_date listed
    (any version: what was sent), whose label window tonight's send could overlap; or None."""
    yesterday = run_date - timedelta(days=1)
    listed = own_campaigns(settings, yesterday, since=run_date - timedelta(days=settings.contact_window_days))
    if not listed:
        return None
    rows = spark.read.parquet(*[str(folder) for folder in listed.values()]).where("assigned_arm IS NOT NULL")
    return rows.select("customer_id").distinct()


def assignment_records(spark: SparkSession, campaigns: dict[str, Path]) -> DataFrame:
    """The assignment records (rows with an arm assigned) of the own campaigns' audiences
    (campaign_id -> folder, own_campaigns)."""
    records = spark.read.parquet(*[str(p) for p in campaigns.values()]).select(*ASSIGNMENT_RECORD)
    return records.where("assigned_arm IS NOT NULL")


def read_partition(spark: SparkSession, settings: Settings, table: str, run_date: date) -> DataFrame:
    path = partition_dir(settings, table, run_date)
    if not path.exists():
        raise MissingInputError(
            f"table '{table}' has no partition run_date={run_date} at {path}: run the step that writes it first"
        )
    return spark.read.parquet(str(path))


def sample_parquet(
    path: Path,
    columns: list[str] | None,
    rows: int,
    seed: int,
    key: str | None = None,
    where=None,
    share: float | None = None,
) -> pd.DataFrame:
    """A uniform random sample of about `rows` rows, read one record batch at a time.

    Every row is kept with the same probability, so the shares of any group (arm, label)
    are preserved in expectation and memory stays bounded by the sample, not the table.

    With `key` (a column of unique values): a row is kept by a seeded hash of its key and the
    sample comes sorted by key, so the same rows give the same frame whatever order
    the files hold them in (how many partitions wrote them, in which order).
    """
    if not path.exists():
        raise MissingInputError(f"no table at {path}")
    dataset = pads.dataset(str(path), format="parquet")
    if share is None:
        total = dataset.count_rows(filter=where)
        share = min(1.0, rows / total) if total else 1.0
    if key is not None:
        return _sample_by_key(dataset, columns, share, seed, key, where)
    rng = np.random.default_rng(seed)
    parts = []
    for batch in dataset.to_batches(columns=columns, filter=where):
        keep = rng.random(batch.num_rows) < share
        if keep.any():
            parts.append(batch.filter(pa.array(keep)).to_pandas())
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _sample_by_key(dataset, columns: list[str] | None, share: float, seed: int, key: str, where=None) -> pd.DataFrame:
    """sample_parquet with a key: rows kept by a seeded hash of the key, in key order (the key
    column itself only when asked for)."""
    names = list(columns or dataset.schema.names)
    read = names if key in names else [*names, key]
    if share >= 1:
        table = dataset.to_table(columns=read, filter=where)
    else:
        hash_key, limit = f"{seed:016d}"[-16:], np.uint64(int(share * 2**64))
        batches = [
            batch.filter(
                pa.array(
                    pd.util.hash_array(
                        batch.column(key).to_numpy(zero_copy_only=False).astype(object), hash_key=hash_key
                    )
                    < limit
                )
            )
            for batch in dataset.to_batches(columns=read, filter=where)
        ]
        table = pa.Table.from_batches(batches, schema=dataset.schema.empty_table().select(read).schema)
    # Arrow's take, then one conversion: pandas' take of the converted strings cost a second more at M.
    return table.select(names).take(pc.sort_indices(table.column(key))).to_pandas()
