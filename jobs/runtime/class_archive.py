"""Build the class-data archive of this environment's Spark: `python -m jobs.runtime.class_archive`.

A Spark step's JVM starts cold and loads about 17,900 classes, most from Spark's jars, before
it reads a row; at demo size that is a good part of a step. Java's application class-data
sharing maps the classes a previous run loaded from an archive instead (measured on
validate-raw at demo size: 23.0 s -> 19.2 s under spark-submit). The archive is dumped by a
JVM that ran a small workload touching what the steps use (Parquet read and write, joins,
windows, aggregates, Arrow and pandas UDFs) and is valid only for the same JVM and jars:
`make setup` rebuilds it whenever the environment is synced. Drivers use it when it exists
(jobs.runtime.conf.driver_java_options); a stale one is ignored by the JVM
(a warning), never an error.

Run by spark-submit with `--workload`, it is that workload; with `--check`, the job by which
`check` proves that a driver with given options maps an archive.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# spark-submit runs this file as a script: the checkout's `jobs` must be importable from it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.runtime.conf import CONNECT_ENV, class_archive  # noqa: E402


def workload(folder: Path) -> None:
    """20,000 rows through what the steps use: Parquet, windows, joins, aggregates, a pandas UDF."""
    import pandas as pd
    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F

    spark = SparkSession.builder.getOrCreate()
    generated = spark.range(20_000).select(
        F.col("id").cast("string").alias("customer_id"),
        (F.col("id") % 4).cast("string").alias("arm"),
        F.timestamp_seconds(F.lit(1_700_000_000) + F.col("id") * 37).alias("at"),
        (F.rand(1) * 100).alias("x"),
    )
    generated.write.mode("overwrite").parquet(str(folder / "events"))
    events = spark.read.parquet(str(folder / "events")).persist()
    by_time = Window.partitionBy("customer_id").orderBy(F.unix_micros("at")).rangeBetween(-86_400_000_000, -1)
    history = events.withColumn("n", F.count("*").over(by_time)).withColumn(
        "rank", F.row_number().over(Window.orderBy(F.col("x").desc()))
    )
    joined = history.join(F.broadcast(events.groupBy("arm").agg(F.avg("x").alias("m"))), "arm", "left")
    joined = joined.join(events.select("customer_id", F.col("x").alias("y")), "customer_id", "left_semi")

    def doubled(batches):
        for batch in batches:
            yield pd.DataFrame({"customer_id": batch["customer_id"], "x": batch["x"] * 2})

    scored = joined.mapInPandas(doubled, "customer_id string, x double")
    scored.write.mode("overwrite").parquet(str(folder / "scored"))
    spark.read.parquet(str(folder / "scored")).agg(F.sum("x"), F.countDistinct("customer_id")).collect()
    joined.where("x > 50").limit(5).toPandas()
    events.isEmpty()
    spark.catalog.clearCache()
    spark.stop()


def _submit(java_options: str, *args: str) -> None:
    """spark-submit this file with args, the driver JVM running java_options; raise with its log on failure."""
    env = {k: v for k, v in os.environ.items() if k not in CONNECT_ENV}  # a classic driver
    env |= {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "spark-submit"),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            f"spark.driver.extraJavaOptions={java_options}",
            __file__,
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"class archive: {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def check(java_options: str) -> None:
    """Raise unless a driver with java_options maps its archive: -Xshare:on makes "cannot use the
    archive" (other jars, another JVM, a truncated file) an error instead of a warning."""
    _submit(f"-Xshare:on {java_options}", "--check")


def build(target: Path) -> Path:
    """Run the workload in a JVM that dumps the classes it loaded, check that a driver maps the
    dump (a truncated archive would crash every driver), then put it in place."""
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="uplift-class-archive-") as folder:
        _submit(f"-XX:+UseParallelGC -XX:ArchiveClassesAtExit={partial}", "--workload", folder)
    check(f"-XX:SharedArchiveFile={partial}")
    os.replace(partial, target)  # a reader sees the old archive or the new one
    return target


if __name__ == "__main__":
    if sys.argv[1:2] == ["--workload"]:
        workload(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["--check"]:
        from pyspark.sql import SparkSession

        if SparkSession.builder.getOrCreate().range(7).count() != 7:
            sys.exit("a driver mapping the archive miscounted 7 rows")
    else:
        print(build(class_archive()))
