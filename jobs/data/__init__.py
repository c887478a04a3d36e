"""The data: the Parquet lake's tables and partitions, the point-in-time ETL that turns sends,
responses and users into training and scoring sets, and the validation that refuses a bad
delivery or feature table before anything downstream is written."""
