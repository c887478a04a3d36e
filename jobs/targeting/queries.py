"""The one engine that reads a published audience back: DuckDB over its Parquet partition, no JVM.

`uplift audience what-if`, the Campaigns page's segments and its budget what-if call these: the
segment columns (categorical attributes and `<name>_band`s of the binned numeric ones) over the
scoring features joined with the audience, a segment's response rates with and without an arm and
the increase of each guardrail outcome, and what the audience would select under another
`max_sends` or `max_spend` by the policy's own budget rule (jobs.model.policy.within_budget, as a
DuckDB expression). Aggregates, filters and window functions run in DuckDB; only their results
reach Python.
"""

from __future__ import annotations

from datetime import date
from itertools import pairwise

import duckdb
import pandas as pd

from jobs.data.lake import MissingInputError, partition_dir
from jobs.model.policy import NONE, within_budget
from jobs.names import AUDIENCE, SCORING_SET, p_column, uplift_column
from jobs.settings import Guardrail, Settings


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


def columns_of(settings: Settings, table: str, run_date: date) -> set[str]:
    """The columns of a published table (an audience scored before an outcome was configured lacks its columns)."""
    return set(query("SELECT * FROM read_parquet(?) LIMIT 0", [files(settings, table, run_date)]).columns)


def above_limits(guardrail: Guardrail, increase: float) -> list[str]:
    """The limits of a guardrail that an expected increase per customer sent lies above (as the gate names them)."""
    limits = {"max_increase_per_send": guardrail.max_increase_per_send, "max_uplift": guardrail.max_uplift}
    return [name for name, limit in limits.items() if limit is not None and increase > limit]


def guardrail_increases(settings: Settings, arm: str, run_date: date) -> dict[str, str]:
    """Guardrail outcome -> the audience column of arm's expected uplift on it (the outcomes the audience has)."""
    present = columns_of(settings, AUDIENCE, run_date)
    wanted = {o: uplift_column(arm, o) for o in settings.targeting.guardrails}
    return {o: column for o, column in wanted.items() if column in present}


def guardrail_figures(settings: Settings, increases: dict[str, float]) -> dict[str, dict]:
    """outcome -> its expected increase per customer sent and the limits it lies above."""
    return {
        o: {"increase_per_send": float(v), "above": above_limits(settings.targeting.guardrails[o], float(v))}
        for o, v in increases.items()
        if not pd.isna(v)
    }


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
    per-arm probabilities, and each guardrail outcome's expected increase per customer sent arm
    (`guardrails`: outcome -> increase_per_send, above: the limits it lies above); condition: SQL
    over segment_base's columns (with `?` for params)."""
    if arm not in settings.experiment.arms:
        raise ValueError(f"unknown arm '{arm}': the arms are {settings.experiment.arms}")
    base, base_params = segment_base(settings, run_date)
    guarded = guardrail_increases(settings, arm, run_date)
    increases = "".join(f', avg("{column}") AS "guardrail_{o}"' for o, column in guarded.items())
    row = query(
        f"""
        SELECT count(*) AS customers, avg(p_control) AS without_message, avg("{p_column(arm)}") AS with_message,
               avg(CASE WHEN recommended_arm = ? THEN 1.0 ELSE 0.0 END) AS recommended_share,
               sum(CASE WHEN assigned_arm = ? THEN 1 ELSE 0 END) AS sends,
               avg("{uplift_column(arm)}") AS targeting_uplift{increases}
        FROM ({base}) WHERE {condition}
        """,
        [arm, arm, *base_params, *params],
    ).iloc[0]
    out = {"customers": int(row["customers"]), "arm": arm}
    if not out["customers"]:
        return out
    out.update(
        recommended_share=float(row["recommended_share"]),
        sends=int(row["sends"]),
        guardrails=guardrail_figures(settings, {o: row[f"guardrail_{o}"] for o in guarded}),
    )
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


RANKED = f"""
    SELECT recommended_arm, expected_uplift, expected_net_value, send_cost,
           recommended_arm <> '{NONE}' AS recommended,
           sum(CASE WHEN recommended_arm <> '{NONE}' THEN 1 ELSE 0 END) OVER (ORDER BY rank) AS so_far,
           sum(CASE WHEN recommended_arm <> '{NONE}' THEN send_cost ELSE 0 END) OVER (ORDER BY rank) AS spent
    FROM read_parquet(?)
"""  # the published ranking with the recommended customers' running count and spend (policy.within_budget's inputs)


def budget(settings: Settings, run_date: date, max_sends: int | None = None, max_spend: float | None = None) -> dict:
    """What the audience would select with another budget, in sends (`max_sends`, holdout counted) or
    money (`max_spend`), per arm, without rerunning.

    The policy's budget rule (jobs.model.policy.within_budget, the one that scoring applies) over the
    published ranking: recommended customers in rank order while their running count (or spend) is
    within the budget less the exploration share; no budget: every recommended customer. Sums are
    the model's expectations over the selected, before the fresh holdout is drawn from them.
    """
    rule = settings.targeting.model_copy(update={"max_sends": max_sends, "max_spend": max_spend})
    selected = within_budget(
        duckdb.ColumnExpression("recommended"),
        duckdb.ColumnExpression("so_far"),
        duckdb.ColumnExpression("spent"),
        rule,
    )
    with duckdb.connect() as con:
        con.execute("SET threads TO 2")
        ranked = con.sql(RANKED, params=[files(settings, AUDIENCE, run_date)])
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
        "max_spend": max_spend,
        "arms": frame.to_dict(orient="records"),
        "customers": int(frame["customers"].sum()),
        "expected_incremental_responses": float(frame["expected_incremental_responses"].sum()),
        "expected_net_value": float(frame["expected_net_value"].sum()),
        "spend": float(frame["spend"].sum()),
    }


def ranking_spend(settings: Settings, run_date: date, sends: list[int]) -> list[float]:
    """What sending the first n recommended customers of the published ranking costs, for each n of sends
    (all of them when n is past their number)."""
    wanted = sorted({max(0, int(n)) for n in sends})
    frame = query(
        f"""
        WITH ranked AS ({RANKED})
        SELECT so_far AS n, spent FROM ranked
        WHERE recommended AND (list_contains(?, so_far) OR so_far = (SELECT max(so_far) FROM ranked))
        """,
        [files(settings, AUDIENCE, run_date), wanted],
    )
    spent = dict(zip(frame["n"].astype(int), frame["spent"].astype(float), strict=True))
    last = max(spent, default=0)
    return [0.0 if n <= 0 else spent.get(min(int(n), last), 0.0) for n in sends]
