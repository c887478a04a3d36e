"""Nightly uplift targeting pipeline: the importable jobs behind the DAG and the CLI."""
