"""The job code as one artifact for a Spark cluster: `python -m jobs.runtime.dist [dist/uplift_jobs.zip]`.

Executors of a standalone (or YARN, Kubernetes) cluster do not see this checkout. Spark ships
the zip named by `spark.py_files` (spark-submit `--py-files`) to every executor and puts it
first on the Python workers' path; the third-party packages come from the environment
`spark.pyspark.python` names. Rebuild the artifact whenever the code is deployed.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_TARGET = PACKAGE.parent / "dist" / "uplift_jobs.zip"


def build_zip(target: Path = DEFAULT_TARGET) -> Path:
    """Write the `jobs` package (sources only, no bytecode) to target; return its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, Path(PACKAGE.name) / path.relative_to(PACKAGE))
    partial.replace(target)  # a job submitted meanwhile sees the old or the new zip, never half of one
    return target


if __name__ == "__main__":
    print(build_zip(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET))
