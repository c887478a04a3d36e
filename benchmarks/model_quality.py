"""Model quality against the ground truth: Qini of the T-learner vs the oracle ranking.

Generates data with known true uplift, builds the training set with the real Spark ETL, fits
the T-learner exactly as `uplift train` does, and compares on the same holdout:
- the model's Qini per arm (scikit-uplift normalisation) with the Qini of ranking by the
  true uplift (the oracle), and their ratio (target: at least 0.8);
- the Spearman correlation of predicted and true uplift.
Writes benchmarks/results/model_quality-<date>.json and prints a markdown table.

    python -m benchmarks.model_quality --customers 150000 --sends-per-day 25000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUN_DATE = date(2026, 10, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=150_000)
    parser.add_argument("--sends-per-day", type=int, default=25_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="uplift-bench-"))
    os.environ["UPLIFT_HOME"] = str(home)
    from jobs.settings import load_settings

    settings = load_settings()

    import numpy as np
    import pandas as pd
    from scipy import stats
    from sklearn.model_selection import train_test_split

    from jobs import metrics
    from jobs.etl import run_etl
    from jobs.generate import generate
    from jobs.spark import get_spark
    from jobs.train import evaluate, fit_t_learner, load_training_set

    timings = {}
    started = time.perf_counter()
    generate(
        settings,
        customers=args.customers,
        days=args.days,
        sends_per_day=args.sends_per_day,
        last_day=RUN_DATE,
        seed=args.seed,
    )
    timings["generate_s"] = time.perf_counter() - started

    started = time.perf_counter()
    counts = run_etl(get_spark(settings, "uplift-bench"), settings, RUN_DATE)
    timings["etl_s"] = time.perf_counter() - started

    started = time.perf_counter()
    data = load_training_set(settings, RUN_DATE)
    strata = data["arm"].astype(str) + "/" + data["label"].astype(str)
    train_rows, holdout = train_test_split(
        data, test_size=settings.training.holdout_fraction, stratify=strata, random_state=settings.training.seed
    )
    model = fit_t_learner(train_rows, settings)
    timings["fit_s"] = time.perf_counter() - started
    results, scored = evaluate(model, holdout, settings)

    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet")
    scored = scored.merge(truth, on="customer_id", suffixes=("", "_true"))
    exp = settings.experiment
    arms = {}
    for arm in exp.arms:
        rows = scored[scored["arm"].isin([arm, exp.control])]
        y, t = rows["label"].to_numpy(), (rows["arm"] == arm).to_numpy().astype(int)
        true_uplift = (rows[f"p_{arm}_true"] - rows["p_control_true"]).to_numpy()
        oracle = metrics.qini_auc_score(y, true_uplift, t)
        model_qini = results[arm]["qini"]
        arms[arm] = {
            "qini_model": round(model_qini, 4),
            "qini_oracle": round(oracle, 4),
            "ratio": round(model_qini / oracle, 3) if oracle > 0 else None,
            "spearman_true_uplift": round(float(stats.spearmanr(rows[f"uplift_{arm}"], true_uplift).statistic), 3),
        }
    report = {
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.model_quality "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "training_rows": counts["training_rows"],
        "train_split_rows": len(train_rows),
        "holdout_rows": len(holdout),
        "cores": os.cpu_count(),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "lightgbm": settings.training.lightgbm,
        "arms": arms,
        "qini_definition": "scikit-uplift qini_auc_score",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"model_quality-{report['date']}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"training rows {counts['training_rows']:,} (fit on {len(train_rows):,}, holdout {len(holdout):,})")
    print("| arm | Qini model | Qini oracle | model / oracle | Spearman vs true uplift |")
    print("| --- | --- | --- | --- | --- |")
    for arm, row in arms.items():
        print(
            f"| {arm} | {row['qini_model']} | {row['qini_oracle']} | {row['ratio']} | {row['spearman_true_uplift']} |"
        )
    print(f"written {out}")
    if np.any([row["ratio"] is None or row["ratio"] < 0.8 for row in arms.values()]):
        print("below target: some arm's Qini is under 0.8 of the oracle")


if __name__ == "__main__":
    main()
