"""The one engine that reads a published audience back: DuckDB over its Parquet partition, no JVM.

`uplift audience what-if`, the Campaigns page's segments and its budget what-if call these: the
segment columns (categorical attributes and `<name>_band`s of the binned numeric ones) over the
scoring features joined with the audience, a segment's response rates with and without an arm,
and what the audience would select under another `max_sends` by the policy's own budget rule
(jobs.model.policy.within_budget, as a DuckDB expression). Aggregates, filters and window functions
run in DuckDB; only their results reach Python.
"""

from __future__ import annotations

from datetime import date
from itertools import pairwise

import duckdb
import pandas as pd

from jobs.data.lake import MissingInputError, partition_dir
from jobs.model.policy import NONE, within_budget
from jobs.names import AUDIENCE, SCORING_SET, p_column, uplift_column
from jobs.settings import Settings


def band_labels(edges: list[float]) -> list[str]:
    """Labels of the bands between edges: "<25", "25-34", ..., "60+" (integers shown without .0)."""
    inner = [f"{lo:g}-{hi - 1:g}" if float(hi).is_integer() else f"{lo:g}-{hi:g}" for lo, hi in pairwise(edges)]
    return [f"<{edges[0]:g}", *inner, f"{edges[-1]:g}+"]


def files(settings: Settings, table: str, run_date: date) -> str:
    path = partition_dir(settings, table, run_date)
    if not path.exists():
        raise MissingInputError(f"no {table} for run_date={run_date} at {path}")
    return str(path / "*.parquet")


def query(sql: str, params: list | None = None) -> pd.DataFrame:
    with duckdb.connect() as con:
        con.execute("SET threads TO 2")
        return con.execute(sql, params or []).df()


def band_sql(column: str, edges: list[float]) -> str:
    """DuckDB's form of jobs.targeting.audience.band: the label of a numeric column's band."""
    labels = band_labels(edges)
    cases = " ".join(
        f"WHEN \"{column}\" < {float(e)!r} THEN '{label}'" for e, label in zip(edges, labels, strict=False)
    )
    return f"CASE WHEN \"{column}\" IS NULL THEN NULL {cases} ELSE '{labels[-1]}' END"


def segment_columns(settings: Settings) -> dict[str, str]:
    """Segment column -> its SQL over the scoring features: categorical attributes and `<name>_band`s."""
    spec = settings.features
    columns = {name: f'"{name}"' for name, a in spec.attributes.items() if a.kind == "categorical"}
    columns.update({f"{name}_band": band_sql(name, edges) for name, edges in spec.segments().items()})
    return columns


def segment_base(settings: Settings, run_date: date) -> tuple[str, list]:
    """The segment base (features joined with the audience, with the segment columns), and its parameters."""
    extra = ", ".join(f'{sql} AS "{name}"' for name, sql in segment_columns(settings).items())
    sql = (
        f"SELECT a.*, {extra} FROM read_parquet(?) f JOIN read_parquet(?) a USING (customer_id)"
        if extra
        else "SELECT a.* FROM read_parquet(?) f JOIN read_parquet(?) a USING (customer_id)"
    )
    return sql, [files(settings, SCORING_SET, run_date), files(settings, AUDIENCE, run_date)]


def where_clause(picks: dict[str, str]) -> str:
    """The Spark SQL condition of a segment, for `uplift audience what-if --where` (the CLI's same numbers)."""
    if not picks:
        return "true"
    return " AND ".join(f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in picks.items())


def check_segment(settings: Settings, picks: dict[str, str], arm: str) -> None:
    if arm not in settings.experiment.arms:
        raise ValueError(f"unknown arm '{arm}': the arms are {settings.experiment.arms}")
    unknown = [name for name in picks if name not in segment_columns(settings)]
    if unknown:
        raise ValueError(f"unknown segment columns {unknown}: the segments are {list(segment_columns(settings))}")


def segment_rates(settings: Settings, run_date: date, arm: str, condition: str = "true", params=()) -> dict:
    """A segment's customers and expected response rates with and without arm, from the model's
    per-arm probabilities; condition: SQL over segment_base's columns (with `?` for params)."""
    if arm not in settings.experiment.arms:
        raise ValueError(f"unknown arm '{arm}': the arms are {settings.experiment.arms}")
    base, base_params = segment_base(settings, run_date)
    row = query(
        f"""
        SELECT count(*) AS customers, avg(p_control) AS without_message, avg("{p_column(arm)}") AS with_message,
               avg(CASE WHEN recommended_arm = ? THEN 1.0 ELSE 0.0 END) AS recommended_share,
               sum(CASE WHEN assigned_arm = ? THEN 1 ELSE 0 END) AS sends,
               avg("{uplift_column(arm)}") AS targeting_uplift
        FROM ({base}) WHERE {condition}
        """,
        [arm, arm, *base_params, *params],
    ).iloc[0]
    out = {"customers": int(row["customers"]), "arm": arm}
    if not out["customers"]:
        return out
    out.update(recommended_share=float(row["recommended_share"]), sends=int(row["sends"]))
    if pd.isna(row["without_message"]):
        out["note"] = (
            "this audience is a constant policy (no model has passed the gate): no per-customer response rates; "
            f"the arm's average effect is {row['targeting_uplift']:.4f}"
        )
        return out
    uplift = float(row["with_message"] - row["without_message"])
    out.update(
        response_rate_without=float(row["without_message"]),
        response_rate_with=float(row["with_message"]),
        expected_uplift=uplift,
        expected_incremental_responses=uplift * out["customers"],
    )
    return out


def budget(settings: Settings, run_date: date, max_sends: int) -> dict:
    """What the audience would select with another `max_sends` (holdout counted), per arm, without rerunning.

    The policy's budget rule (jobs.model.policy.within_budget, the one that scoring applies) over the
    published ranking: recommended customers in rank order while their running count is within the
    budget less the exploration share; `max_spend`, if set, is not applied here. Sums are the
    model's expectations over the selected, before the fresh holdout is drawn from them.
    """
    rule = settings.targeting.model_copy(update={"max_sends": max_sends, "max_spend": None})
    selected = within_budget(duckdb.ColumnExpression("recommended"), duckdb.ColumnExpression("so_far"), None, rule)
    with duckdb.connect() as con:
        con.execute("SET threads TO 2")
        ranked = con.sql(
            f"""
            SELECT recommended_arm, expected_uplift, expected_net_value, send_cost,
                   recommended_arm <> '{NONE}' AS recommended,
                   sum(CASE WHEN recommended_arm <> '{NONE}' THEN 1 ELSE 0 END) OVER (ORDER BY rank) AS so_far
            FROM read_parquet(?)
            """,
            params=[files(settings, AUDIENCE, run_date)],
        )
        frame = (
            ranked.filter(selected)
            .aggregate(
                "recommended_arm, count(*) AS customers, sum(expected_uplift) AS expected_incremental_responses, "
                "sum(expected_net_value) AS expected_net_value, sum(send_cost) AS spend",
                "recommended_arm",
            )
            .order("recommended_arm")
            .df()
        )
    return {
        "max_sends": max_sends,
        "arms": frame.to_dict(orient="records"),
        "customers": int(frame["customers"].sum()),
        "expected_incremental_responses": float(frame["expected_incremental_responses"].sum()),
        "expected_net_value": float(frame["expected_net_value"].sum()),
        "spend": float(frame["spend"].sum()),
    }
