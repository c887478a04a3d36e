"""Nightly uplift targeting pipeline: the importable jobs behind the DAG and the CLI.

Rooms, from the ground up (each may import only those below it; `tests/unit/test_layers.py` holds
the contracts in pyproject.toml's `[tool.importlinter]`):
- `settings`, `features`, `names`: the configuration and the names every room shares;
- `runtime`: the Spark session, the Connect server, the class archive, the workers, the zip;
- `data`: the lake, the ETL and the validation of deliveries and feature tables;
- `model`: the T-learner, the policy rule, evaluation, training, the gate and the registry;
- `targeting`: nightly scoring and the audience it publishes;
- `monitoring`: drift, realized results, the champion's online verdict and the night's report;
- `ui`: the Campaigns page in Airflow and its queries;
- `steps`: every stage of the night as a function; `demo`: the generator and the loop simulation;
- `cli`: the `uplift` command.
"""
