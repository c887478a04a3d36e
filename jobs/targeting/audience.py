"""The audience table where campaign managers read it: terminal summary, CSV send list, what-if
(jobs.targeting.queries), and a PostgreSQL copy for campaign tools.

Everything here streams the published Parquet partition in record batches (pyarrow); no
table is loaded whole. The PostgreSQL copy replaces a run date's rows in one transaction, so
a reader of the table sees the old run or the new one, never a mix. Its connection string is
read from the environment variable named by `export.postgres_dsn_env`, never from a file in
the repository.
"""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from jobs.data.lake import MissingInputError, kept_versions, next_version, partition_dir, version_dir
from jobs.names import AUDIENCE, AUDIENCE_SUMMARY, BUDGET_CURVE, EXPORTS, SEND_LIST, is_constant_policy
from jobs.settings import Settings, report_dir
from jobs.targeting.queries import segment_rates

PG_TYPES = {
    pa.string(): "text",
    pa.large_string(): "text",
    pa.float64(): "double precision",
    pa.float32(): "real",
    pa.int64(): "bigint",
    pa.int32(): "integer",
    pa.bool_(): "boolean",
}


def _folder(settings: Settings, table: str, run_date: date, version: int | None) -> Path:
    """A partition of table: the current one, or one it replaced (jobs.data.lake.version_dir)."""
    if version is None or version not in kept_versions(settings, table, run_date):
        return partition_dir(settings, table, run_date)
    return version_dir(settings, table, run_date, version)


def _dataset(settings: Settings, run_date: date, version: int | None = None) -> pads.Dataset:
    path = _folder(settings, "audience", run_date, version)
    if not path.exists():
        raise MissingInputError(f"no audience for run_date={run_date} at {path}: run `uplift score` first")
    current = next_version(settings, AUDIENCE, run_date) - 1
    if version is not None and version != current and path == partition_dir(settings, AUDIENCE, run_date):
        raise MissingInputError(f"no version {version} of the audience of run_date={run_date}: versions 1..{current}")
    return pads.dataset(str(path), format="parquet")


def show(settings: Settings, run_date: date, top: int = 10, version: int | None = None) -> str:
    """Per-arm counts, expected lift and spend, then the top customers by expected net value
    (of the audience's current version, or of `version`: a rerun keeps the ones it replaced)."""
    dataset = _dataset(settings, run_date, version)
    summary = pd.read_parquet(_folder(settings, "audience_summary", run_date, version)).sort_values("recommended_arm")
    columns = ["rank", "customer_id", "recommended_arm", "expected_uplift", "expected_net_value", "holdout"]
    best = dataset.to_table(columns=columns, filter=pc.field("rank") <= top).to_pandas().sort_values("rank")
    total = dataset.count_rows()
    first = dataset.head(1, columns=["policy"]) if "policy" in dataset.schema.names else None
    label = first.column("policy")[0].as_py() if first is not None and first.num_rows else "model"
    peak = budget_peak(settings, run_date)
    curve = (
        f"Budget curve (holdout estimate): net value peaks at {int(peak['sends']):,} sends, "
        f"{peak['net_value']:,.2f} [{peak['net_value_low']:,.2f}, {peak['net_value_high']:,.2f}] "
        f"(max_sends counts the holdout too: {int(peak['sends'] / (1 - settings.targeting.holdout_share)):,})"
        if peak
        else "Budget curve: none recorded for this run date (run the gate)"
    )
    return "\n".join(
        [
            f"Audience {run_date}: {total:,} customers scored, {int(summary['customers'].sum()):,} selected, "
            f"{int(summary['sends'].sum()):,} to send ({int(summary['holdout'].sum()):,} held out), "
            f"spend {summary['spend'].sum():,.2f}",
            f"Policy: {label}"
            + ("  (no model has passed the gate: a constant policy)" if is_constant_policy(label) else ""),
            curve,
            "",
            summary.drop(columns=["model_version", "policy"], errors="ignore").to_string(
                index=False, float_format=lambda v: f"{v:,.2f}"
            ),
            "",
            f"Top {top} customers by expected net value:",
            best.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
        ]
    )


def budget_peak(settings: Settings, run_date: date) -> dict | None:
    """Where the deployed policy's expected net value peaks, from the run date's budget curve (jobs.model.gate)."""
    path = report_dir(settings, run_date) / f"{BUDGET_CURVE}.csv"
    if not path.exists():
        return None
    curve = pd.read_csv(path)
    return curve.loc[curve["net_value"].idxmax()].to_dict()


def export_csv(settings: Settings, run_date: date, arm: str | None, output: Path) -> int:
    """Write the send list as CSV (every assigned row, or one arm's: control names the holdout and
    explore-control rows, delivered back as `control` like a randomized campaign's); return the rows.

    Each row carries what the e-mail tool sends back under campaign_id and what the nights after
    learn from: the assigned arm, how it was assigned and its propensity.
    """
    exp = settings.experiment
    if arm is not None and arm not in exp.all_arms:
        raise ValueError(f"unknown arm '{arm}': the arms are {exp.all_arms}")
    dataset = _dataset(settings, run_date)
    if "assigned_arm" not in dataset.schema.names:
        raise MissingInputError(
            f"the audience of run_date={run_date} has no assignment record: rescore it (`uplift score`) to export it"
        )
    wanted = pc.field("assigned_arm").is_valid() if arm is None else pc.field("assigned_arm") == arm
    columns = [
        "customer_id",
        "campaign_id",
        "assigned_arm",
        "assignment",
        "propensity",
        "recommended_arm",
        "expected_net_value",
        "rank",
        "model_version",
    ]
    scanner = dataset.scanner(columns=columns, filter=wanted)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pacsv.CSVWriter(str(output), scanner.projected_schema) as writer:
        for batch in scanner.to_batches():
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def publish_export(settings: Settings, run_date: date) -> dict:
    """Hand run_date's send list to the e-mail tool: `<lake>/exports/run_date=<d>/send_list.csv`
    (every row with an assigned arm, as `export_csv` writes it, swapped in whole) and the PostgreSQL
    copy (`export.postgres_dsn_env`). A night that is not exported leaves the earlier ones as they are."""
    folder = partition_dir(settings, EXPORTS, run_date)
    staging = folder.with_name(f".{folder.name}.staging")
    rows = export_csv(settings, run_date, None, staging / SEND_LIST)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return {"send_list": str(folder / SEND_LIST), "rows": rows, "postgres_rows": to_postgres(settings, run_date)}


def approval_summary(settings: Settings, run_date: date) -> str:
    """What a campaign manager approves: the night's send list in a few lines (Markdown)."""
    summary = pd.read_parquet(partition_dir(settings, AUDIENCE_SUMMARY, run_date))
    dataset = _dataset(settings, run_date)
    head = dataset.head(1, columns=["policy", "model_version", "campaign_id"]).to_pylist()[0]
    routes: dict[str, int] = {}
    for batch in dataset.scanner(columns=["assignment"]).to_batches():
        for count in pc.value_counts(batch.column("assignment")).to_pylist():
            routes[count["values"]] = routes.get(count["values"], 0) + count["counts"]
    listed = sum(n for route, n in routes.items() if route != "none")
    lines = [
        f"**{run_date}**: campaign `{head['campaign_id']}`, policy `{head['policy']}`"
        + (f" (model version {head['model_version']})" if head["model_version"] else ""),
        "",
        f"{listed:,} customers on the send list: "
        + ", ".join(f"{routes.get(r, 0):,} {r}" for r in ("target", "holdout", "explore")),
        "",
        "| message | sends | expected incremental responses | expected net value | spend |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {row.recommended_arm} | {row.sends:,} | {row.expected_incremental_responses:,.1f} | "
            f"{row.expected_net_value:,.2f} | {row.spend:,.2f} |"
            for row in summary.sort_values("recommended_arm").itertuples()
        ],
        "",
        "Approve to export the send list to the e-mail tool; reject to keep the previous export.",
    ]
    return "\n".join(lines)


def what_if(settings: Settings, run_date: date, where: str, arm: str) -> dict:
    """Expected response rate of a segment with and without `arm` (SQL condition `where`, DuckDB).

    The segment is defined on the scoring features, the audience columns and, for every numeric
    attribute with `bins` in the feature spec, a `<name>_band` column ("25-34" for bins 25 and
    35, "<25" below the first edge, "60+" from the last). The Campaigns page's segments run the
    same query (jobs.targeting.queries.segment_rates).
    """
    return {**segment_rates(settings, run_date, arm, where), "where": where}


def to_postgres(settings: Settings, run_date: date) -> int | None:
    """Replace run_date's rows of the PostgreSQL audience table; None when not configured.

    The table is created on first use; columns the audience has and the table lacks (a new
    outcome, a column added by a later version) are added, so an upgrade never fails the export.
    """
    cfg = settings.export
    dsn = os.environ.get(cfg.postgres_dsn_env) if cfg.postgres_dsn_env else None
    if not dsn:
        return None
    import psycopg
    from psycopg import sql

    dataset = _dataset(settings, run_date)
    schema = dataset.schema
    table = sql.Identifier(cfg.postgres_table)
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(PG_TYPES.get(f.type, "timestamptz"))) for f in schema
    ]
    names = sql.SQL(", ").join(sql.Identifier(n) for n in ["run_date", *schema.names])
    rows = 0
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (run_date date NOT NULL, {}, PRIMARY KEY (run_date, customer_id))"
            ).format(table, sql.SQL(", ").join(columns))
        )
        for column in columns:  # a table made by an earlier version gains the columns it lacks (outcomes...)
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {}").format(table, column))
        conn.execute(sql.SQL("DELETE FROM {} WHERE run_date = %s").format(table), [run_date])
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, names)) as copy:
            for batch in dataset.to_batches():
                for record in batch.to_pylist():
                    copy.write_row([run_date, *record.values()])
                rows += batch.num_rows
    return rows
