"""The ETL at ten times the M scale: 25M sends, 5M customers, 30 days of deliveries.

Generates the data in a fresh project home, then runs the ETL step as the nightly DAG runs
it (`uplift etl` on a Spark Connect server it starts, local[2], the same driver memory as
`benchmarks.nightly`), with the settings a user gets (conf/base). Records the wall time and
peak memory of each, the rows of the raw deliveries and of the published training and scoring
sets (counted from Parquet metadata: nothing is collected), and the size of the raw deliveries
on disk.

    python -m benchmarks.etl_scale [--scale 10]

Writes benchmarks/results/etl-scale-<date>-<commit>.json and prints a table.
"""

from __future__ import annotations

import argparse
import shutil
from datetime import date
from pathlib import Path

import pyarrow.dataset as pads

from benchmarks import publish
from benchmarks.nightly import RUN_DATE, SIZES, bench_home, generate_command, measured, step_command


def _rows(path: Path) -> int:
    return pads.dataset(str(path), format="parquet").count_rows()


def _disk_mb(path: Path) -> int:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20)


def run(scale: int, keep: bool) -> dict:
    customers, per_day = (n * scale for n in SIZES["M"])
    home, logs, env = bench_home(f"uplift-etl-x{scale}-")
    from jobs.runtime.connect import address, stop
    from jobs.settings import load_settings

    settings = load_settings(demo=True)
    print(f"[x{scale}] home {home}", flush=True)
    stages = {"generate": measured(generate_command(customers, per_day), env, logs / "generate.log")}
    generated = stages["generate"].pop("output")
    print(f"[x{scale}] generate {stages['generate']}: {generated}", flush=True)
    lake = settings.paths.lake
    raw = {source: _rows(lake / "raw" / source) for source in ("users", "sends", "responses")}
    raw_mb = _disk_mb(lake / "raw")
    try:
        port = address(settings.spark.remote)[1]
        stages["etl"] = measured(step_command("etl", settings), env, logs / "etl.log", server_port=port)
    finally:
        stop(settings)
    etl = stages["etl"].pop("output")
    print(f"[x{scale}] etl {stages['etl']}: {etl}", flush=True)
    published = {table: _rows(lake / "features" / table / f"run_date={RUN_DATE}") for table in ("training", "scoring")}
    result = {
        "scale": scale,
        "customers": customers,
        "sends": generated["sends"],
        "responses": generated["responses"],
        "raw_rows": raw,
        "raw_mb": raw_mb,
        "stages": stages,
        "etl_summary": etl,
        "published_rows": published,
        "etl_rows_per_s": round(sum(raw.values()) / stages["etl"]["wall_s"]),
        "home": str(home),
    }
    if not keep:
        shutil.rmtree(home)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="multiple of the M size (customers and sends)")
    parser.add_argument("--keep", action="store_true", help="keep the project home (data, logs)")
    args = parser.parse_args()
    from benchmarks.nightly import environment

    report = {
        "date": date.today().isoformat(),
        "command": f"python -m benchmarks.etl_scale --scale {args.scale}",
        "environment": environment(),
        **run(args.scale, args.keep),
    }
    g, e = report["stages"]["generate"], report["stages"]["etl"]
    scale = f"x{args.scale}"
    out = publish("etl-scale-", report, {f"{scale} etl wall_s": e["wall_s"], f"{scale} etl jvm_mb": e["jvm_mb"]})
    print(f"| x{args.scale} | {report['sends']:,} sends, {report['customers']:,} customers |")
    print("| --- | --- |")
    print(f"| raw rows | {report['raw_rows']} ({report['raw_mb']} MB Parquet) |")
    print(f"| generate | {g['wall_s']} s, peak {g['driver_mb']} MB |")
    memory = f"driver {e['driver_mb']} MB, JVM {e['jvm_mb']} MB"
    print(f"| etl | {e['wall_s']} s, {report['etl_rows_per_s']:,} raw rows/s; {memory} |")
    print(f"| published | {report['published_rows']} |")
    print(f"written {out}")


if __name__ == "__main__":
    main()
