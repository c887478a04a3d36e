"""Submitted by test_cluster.py like a pipeline job: where do the executors import `jobs` from?

Writes, as JSON to the path given as the only argument, each executor's `jobs.__file__`, working
directory, interpreter and the SHA-256 of the `--py-files` zip it received.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession


def where(_):
    import importlib.util

    import jobs

    shipped = Path(os.getcwd()) / "uplift_jobs.zip"
    # Where unpickling the champion's boosters would load their class from (found, not imported: cheap).
    model = importlib.util.find_spec("jobs.model.portable").origin
    yield {
        "jobs": os.path.normpath(os.path.join(os.getcwd(), jobs.__file__)),
        "model": os.path.normpath(os.path.join(os.getcwd(), model)),
        "cwd": os.getcwd(),
        "python": sys.executable,
        "zip_sha256": hashlib.sha256(shipped.read_bytes()).hexdigest() if shipped.exists() else None,
    }


if __name__ == "__main__":
    spark = SparkSession.builder.getOrCreate()
    executors = spark.sparkContext.parallelize([0], 1).mapPartitions(where).collect()
    Path(sys.argv[1]).write_text(json.dumps({"executors": executors}))
    spark.stop()
