"""The installed stack is the one the pipeline was checked with."""

from importlib import metadata

import pytest


def test_one_pyspark_in_site_packages():
    # pyspark-client (pulled by the Spark provider) would overwrite pyspark's own files.
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("pyspark-client")
    import pyspark

    assert pyspark.__version__ == metadata.version("pyspark")


def test_pandas_below_3():
    assert int(metadata.version("pandas").split(".")[0]) < 3, "evidently 0.7 fails to import with pandas 3"
