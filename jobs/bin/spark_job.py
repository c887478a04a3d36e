"""Entry point handed to spark-submit: `spark-submit spark_job.py <step> --run-date YYYY-MM-DD`.

The driver runs the `jobs` package this file belongs to, next to the checkout's conf/ and
expectations/. spark-submit puts a `--py-files` artifact (`spark.py_files`, built from the
same checkout by `make dist`) first on the driver's path as well, where the package could not
find its conf/ and expectations/: that artifact is for the executors.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
