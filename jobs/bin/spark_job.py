"""Entry point handed to spark-submit: `spark-submit spark_job.py <step> --run-date YYYY-MM-DD`."""

from jobs.cli import app

if __name__ == "__main__":
    app()
