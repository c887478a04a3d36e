"""How many training rows per arm the models need: decision value against the rows trained on.

For each simulator of benchmarks.simulators, each seed and each budget B (rows per arm, control
counted as an arm): the selected candidate of the conf's training.learners (benchmarks.learners'
`selected`) is fitted on B x (arms + 1) randomized sends and valued on a separate test sample with
the true uplifts, as benchmarks.learners values it (decision value ratio vs the oracle policy, gain
ratio per arm). The curve says from which budget more rows stop buying value within noise: the
default of `training.rows_per_arm`, which bounds what a night's ETL reads and trains on.

    python -m benchmarks.training_budget --seeds 3

writes benchmarks/results/training-budget-<date>-<commit>.{json,md} (about 11 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from benchmarks import publish
from benchmarks.learners import TEST_ROWS, interval, run_seed
from benchmarks.simulators import SIMULATORS

BUDGETS = [2_500, 5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 320_000]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", type=int, nargs="+", default=BUDGETS)
    parser.add_argument("--test-rows", type=int, default=TEST_ROWS)
    parser.add_argument("--simulators", nargs="+", choices=list(SIMULATORS), default=list(SIMULATORS))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lines = []
    for simulator in args.simulators:
        groups = len(SIMULATORS[simulator](0, 100).settings.experiment.all_arms)
        for budget in args.budgets:
            for seed in range(args.seeds):
                for line in run_seed(simulator, seed, budget * groups, args.test_rows, ["selected"]):
                    if line["candidate"] == "selected":
                        lines.append({**line, "rows_per_arm": budget, "rows": budget * groups})
    frame = pd.DataFrame(lines)
    gains = [c for c in frame.columns if c.startswith("gain_ratio.")]
    summary = [
        {"simulator": simulator, "rows_per_arm": budget, "figure": figure, **interval(rows[figure])}
        for (simulator, budget), rows in frame.groupby(["simulator", "rows_per_arm"], sort=False)
        for figure in ["value_ratio", *gains, "fit_seconds"]
        if rows[figure].notna().any()
    ]
    seconds = round(time.perf_counter() - started, 1)
    table = [
        f"Decision value ratio vs the oracle policy against the training rows per arm (selected learner, "
        f"{args.seeds} seeds, {args.test_rows:,} test customers; mean [95% interval]; "
        f"benchmarks/training_budget.py; {seconds:.0f} s)",
        "",
        "| rows per arm | " + " | ".join(args.simulators) + " |",
        "|---" * (len(args.simulators) + 1) + "|",
    ]
    values = {(r["simulator"], r["rows_per_arm"]): r for r in summary if r["figure"] == "value_ratio"}
    for budget in args.budgets:
        cells = [values[(s, budget)] for s in args.simulators]
        table.append(
            f"| {budget:,} | " + " | ".join(f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" for c in cells) + " |"
        )
    markdown = "\n".join(table) + "\n"
    result = {
        "seeds": args.seeds,
        "budgets": args.budgets,
        "test_rows": args.test_rows,
        "definitions": {
            "rows_per_arm": "randomized training sends per arm, control included (B x (arms + 1) rows in all)",
            "value_ratio": "benchmarks.learners' decision value ratio of the selected candidate vs the oracle policy",
        },
        "summary": summary,
        "seconds": seconds,
        "runs": lines,
    }
    headline = {f"{s} value_ratio at {b}": round(r["mean"], 4) for (s, b), r in values.items()}
    path = publish("training-budget-", result, headline, markdown)
    print(markdown, f"\n-> {path}")


if __name__ == "__main__":
    main()
