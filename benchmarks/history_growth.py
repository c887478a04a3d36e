"""How a night's cost grows with the history behind it, at the same daily volume.

For each history length (30, 60, 90 days by default), in a fresh project home: `uplift generate`
lands that many daily deliveries ending on the run date at the same daily volume (customers and
sends per day fixed), then validate-raw, etl, validate-features and train run as the nightly
DAG runs them (benchmarks.nightly: each its own process, the Spark steps clients of one Spark
Connect server), twice: the first pass pays the server's start and a cold JVM, the second is what
every later night on that server costs. Beside them, on the same data, the pandas + LightGBM
script (benchmarks.references.pandas_tlearner), which reads the whole history every time.

Reported per length: each step's wall time (both passes), the training rows, the rows read, and
the ratios of the longest history to the shortest: the ETL and validation steps together (issue
40's target: at most 1.25 from 30 to 90 days), the train step, and the pandas script.

    python -m benchmarks.history_growth --days 30 60 90

writes benchmarks/results/history-growth-<date>-<commit>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks import publish
from benchmarks.nightly import PROJECT, RUN_DATE, SEED, bench_home, measured, reference, step_command

STEPS = ("validate-raw", "etl", "validate-features", "train")
GROWING = ("validate-raw", "etl", "validate-features")  # the target's steps
CUSTOMERS, SENDS_PER_DAY = 100_000, 16_667  # issue 40's measurement: a fifth of M's daily volume


def run_length(days: int, customers: int, per_day: int, references: bool) -> dict:
    home, logs, env = bench_home(f"uplift-history-{days}-")
    from jobs.runtime.connect import address, stop
    from jobs.settings import load_settings

    settings = load_settings(demo=True)
    generate = [str(Path(sys.executable).parent / "uplift"), "generate", "--last-day", RUN_DATE.isoformat()]
    generate += ["--customers", str(customers), "--sends-per-day", str(per_day), "--days", str(days)]
    generated = measured([*generate, "--seed", str(SEED)], env, logs / "generate.log")["output"]
    print(f"[{days} days] generated {generated}", flush=True)
    port = address(settings.spark.remote)[1]
    passes = {}
    try:
        for label in ("cold", "warm"):
            passes[label] = {}
            for step in STEPS:
                run = measured(step_command(step, settings), env, logs / f"{step}-{label}.log", server_port=port)
                passes[label][step] = {k: v for k, v in run.items() if k != "output"} | {"output": run["output"]}
                print(f"[{days} days] {label} {step} {run['wall_s']} s", flush=True)
    finally:
        stop(settings)
    etl = passes["cold"]["etl"]["output"] or {}
    result = {
        "days": days,
        "sends": generated["sends"],
        "responses": generated["responses"],
        "training_rows": etl.get("training_rows"),
        "raw_sends_read": etl.get("raw_sends_rows"),
        "raw_responses_read": etl.get("raw_responses_rows"),
        "wall_s": {label: {s: r["wall_s"] for s, r in steps.items()} for label, steps in passes.items()},
    }
    if references:
        result["pandas_script"] = reference(
            [sys.executable, "-m", "benchmarks.references", "pandas-tlearner", "--run-date", str(RUN_DATE)],
            env | {"PYTHONPATH": str(PROJECT)},
            logs / "pandas_tlearner.log",
        )
    shutil.rmtree(home)
    return result


def ratios(runs: list[dict]) -> dict:
    """The longest history's figures over the shortest's."""
    first, last = runs[0], runs[-1]

    def total(run: dict, label: str, steps) -> float:
        return sum(run["wall_s"][label][s] for s in steps)

    out = {
        f"{label} {name}": round(total(last, label, steps) / total(first, label, steps), 3)
        for label in ("cold", "warm")
        for name, steps in (("etl and validation", GROWING), ("train", ("train",)))
    }
    if "wall_s" in first.get("pandas_script", {}) and "wall_s" in last.get("pandas_script", {}):
        out["pandas script"] = round(last["pandas_script"]["wall_s"] / first["pandas_script"]["wall_s"], 3)
    return out


def markdown(runs: list[dict], growth: dict, header: str) -> str:
    lines = [header, "", "| days | sends | training rows | sends read | " + " | ".join(STEPS) + " | pandas script |"]
    lines.append("|---" * (len(STEPS) + 5) + "|")
    for run in runs:
        steps = " | ".join(f"{run['wall_s']['cold'][s]} / {run['wall_s']['warm'][s]}" for s in STEPS)
        pandas = run.get("pandas_script", {}).get("wall_s", "")
        lines.append(
            f"| {run['days']} | {run['sends']:,} | {run['training_rows']:,} | {run['raw_sends_read']:,} | {steps} | "
            f"{pandas} |"
        )
    lines += ["", "Longest over shortest history: " + "; ".join(f"{k} {v}" for k, v in growth.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[30, 60, 90])
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    parser.add_argument("--sends-per-day", type=int, default=SENDS_PER_DAY)
    parser.add_argument("--no-references", action="store_true", help="skip the pandas script")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs = [run_length(d, args.customers, args.sends_per_day, not args.no_references) for d in sorted(args.days)]
    growth = ratios(runs)
    seconds = round(time.perf_counter() - started, 1)
    header = (
        f"History growth at {args.sends_per_day:,} sends a day and {args.customers:,} customers, conf/base's settings "
        f"(training.rows_per_arm included): wall seconds per step, first pass (cold server) / second (warm) "
        f"(benchmarks/history_growth.py; {seconds:.0f} s)"
    )
    table = markdown(runs, growth, header)
    result = {
        "customers": args.customers,
        "sends_per_day": args.sends_per_day,
        "runs": runs,
        "growth": growth,
        "seconds": seconds,
    }
    path = publish("history-growth-", result, {f"growth {k}": v for k, v in growth.items()}, table)
    print(table, f"\n-> {path}")
    print(json.dumps(growth))


if __name__ == "__main__":
    main()
