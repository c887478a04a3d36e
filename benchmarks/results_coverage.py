"""Did it work, honestly? The results step's intervals against the truth, and monitoring's detection.

For each seed, `uplift simulate` (jobs.demo.simulate) plays the loop with a short label window: every
night runs the whole nightly (its results step included), its audience is sent as exported and the
responses come from the generator's truth. Then:

- coverage: for every (audience, arm) the results measured with sends and a holdout, whether the 95%
  interval of the realized incremental responses holds the true ones (the sum of the sent customers'
  true uplifts of the arm they got, jobs.demo.simulate.true_incremental); the aim is at least 90%;
- calibration: the realized uplift by decile pooled over the seed's audiences against the true mean
  uplift of the same deciles (every eligible customer of the audiences), over the audiences a model
  made: Spearman rank correlation, and the inverse-variance weighted slope of realized on true
  uplift with its 95% interval (the deciles order as the truth does when it lies above 0);
- false alarms: nights on which monitoring flagged the loop's own (trained, gated) champion;
- detection: the champion is then replaced by a deliberately bad one (its uplifts negated: it
  sends no one) and the nights go on without training; the nights until monitoring rolls it back.

    python -m benchmarks.results_coverage --seeds 3 --nights 10
    # writes benchmarks/results/results-coverage-seeds0-2-<date>-<commit>.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import publish
from benchmarks.loop import FIRST_NIGHT, _home
from jobs.data.lake import partition_dir, read_table
from jobs.demo.simulate import SERVING_STEPS, negated_champion, play, simulate, true_incremental
from jobs.model import registry
from jobs.monitoring.results import calibration, calibration_slope
from jobs.names import p_column, uplift_column
from jobs.settings import load_settings, report_dir

DATA = {"customers": 20_000, "days": 10, "sends_per_day": 5_000}
# A budget: every night sends a slice of the customers (the contact window rests each slice for the
# label window), so that every night has an audience to measure; the holdout share stays the default.
MAX_SENDS = 5_000
WINDOW_DAYS = 2
BAD_NIGHTS = 6  # nights the bad champion is given to be caught (monitoring window 3 + the label window + 1)


def _short(settings):
    exp = settings.experiment.model_copy(update={"attribution_window_days": WINDOW_DAYS})
    outcomes = {n: o.model_copy(update={"window_days": WINDOW_DAYS}) for n, o in settings.targeting.outcomes.items()}
    targeting = settings.targeting.model_copy(update={"outcomes": outcomes, "max_sends": MAX_SENDS})
    return settings.model_copy(update={"experiment": exp, "targeting": targeting})


def coverage_cases(settings, truth: pd.DataFrame) -> list[dict]:
    results = read_table(settings, "results")
    cases = []
    for day, part in results.groupby("audience_date"):
        true = true_incremental(settings, pd.read_parquet(partition_dir(settings, "audience", day)), truth)
        for row in part.itertuples():
            if row.arm == "all" or not row.sent or not row.holdout or pd.isna(row.incremental):
                continue
            cases.append(
                {
                    "audience_date": day.isoformat(),
                    "arm": row.arm,
                    "sent": int(row.sent),
                    "holdout": int(row.holdout),
                    "truth": true[row.arm],
                    "realized": float(row.incremental),
                    "low": float(row.incremental_low),
                    "high": float(row.incremental_high),
                    "covered": bool(row.incremental_low <= true[row.arm] <= row.incremental_high),
                }
            )
    return cases


def calibration_order(settings, truth: pd.DataFrame) -> dict | None:
    """The pooled realized uplift by decile against the true one: Spearman correlation, and the
    slope of realized on true uplift (least squares weighted by each decile's inverse variance, with
    its 95% interval). The slope weighs a decile by what it holds: a decile the budget sends only on
    its explore rows counts little, and deciles the truth ties cannot disorder it."""
    sums = read_table(settings, "results_calibration")
    if not sums.empty:  # a model's audiences: a constant policy ranks no one above anyone
        sums = sums[sums["policy"].str.startswith("model:")]
    if sums.empty:
        return None
    realized = calibration(sums).set_index("decile")[["realized", "low", "high"]]
    control = settings.experiment.control
    frames = []
    for day in sorted(set(sums["audience_date"])):
        columns = ["customer_id", "recommended_arm", "decile", *[uplift_column(a) for a in settings.experiment.arms]]
        rows = pd.read_parquet(partition_dir(settings, "audience", day), columns=columns).merge(truth, on="customer_id")
        uplifts = np.column_stack([rows[uplift_column(a)] for a in settings.experiment.arms])
        best = np.array(settings.experiment.arms)[uplifts.argmax(axis=1)]
        arm = np.where(rows["recommended_arm"] != "none", rows["recommended_arm"], best)
        p = {a: rows[p_column(a)].to_numpy() for a in settings.experiment.all_arms}
        tau = np.choose(
            pd.Categorical(arm, categories=settings.experiment.arms).codes, [p[a] for a in settings.experiment.arms]
        )
        frames.append(pd.DataFrame({"decile": rows["decile"], "tau": tau - p[control]}))
    true = pd.concat(frames).groupby("decile")["tau"].mean()
    both = realized.join(true, how="inner")
    if len(both) < 3:
        return None
    return {
        "spearman": float(both[["realized", "tau"]].rank().corr().iloc[0, 1]),
        "slope": calibration_slope(both, against="tau"),
        "deciles": both.reset_index().to_dict(orient="records"),
    }


def bad_champion(settings, start: date, seed: int) -> dict:
    """Serve a champion whose uplifts are negated and play the nights (no training) until it goes."""
    if registry.alias_version(settings, registry.CHAMPION) is None:
        return {"skipped": "no champion to corrupt"}
    with negated_champion(settings):
        nights = play(settings, first_night=start, nights=BAD_NIGHTS, seed=seed, steps_run=SERVING_STEPS)
    actions = [n["monitoring"] for n in nights]
    caught = actions.index("rollback") + 1 if "rollback" in actions else None
    return {"nights_to_rollback": caught, "actions": actions, "window": settings.monitoring.window}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first_seed .. first_seed + seeds - 1")
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--window", type=int, default=3, help="monitoring.window for the run")
    args = parser.parse_args(argv)
    started, seeds = time.perf_counter(), []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        root = Path(tempfile.mkdtemp(prefix=f"results-{seed}-"))
        try:
            settings = _short(_home(load_settings(demo=True), root))
            settings = settings.model_copy(
                update={"monitoring": settings.monitoring.model_copy(update={"window": args.window})}
            )
            table = simulate(settings, nights=args.nights, first_night=FIRST_NIGHT, seed=seed, **DATA)
            truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet")
            cases = coverage_cases(settings, truth)
            order = calibration_order(settings, truth)
            flags = []
            for line in table:
                path = report_dir(settings, date.fromisoformat(line["night"])) / "monitoring.json"
                flags += [line["night"]] if path.exists() and json.loads(path.read_text())["evidence"] else []
            detection = bad_champion(settings, FIRST_NIGHT + timedelta(days=args.nights), seed)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        seeds.append({"seed": seed, "cases": cases, "calibration": order, "false_alarms": flags, "bad": detection})
        print(json.dumps(seeds[-1]), flush=True)
    cases = [c for s in seeds for c in s["cases"]]
    caught = [s["bad"].get("nights_to_rollback") for s in seeds]
    result = {
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "nights_per_seed": args.nights,
        "data": DATA,
        "max_sends": MAX_SENDS,
        "attribution_window_days": WINDOW_DAYS,
        "monitoring_window": args.window,
        "cases": len(cases),
        "coverage": sum(c["covered"] for c in cases) / len(cases) if cases else None,
        "calibration_spearman": [s["calibration"] and s["calibration"]["spearman"] for s in seeds],
        "calibration_slope": [s["calibration"] and s["calibration"]["slope"] for s in seeds],
        "false_alarm_nights": sum(len(s["false_alarms"]) for s in seeds),
        "bad_champion_nights_to_rollback": caught,
        "seconds": round(time.perf_counter() - started, 1),
        "per_seed": seeds,
    }
    last = args.first_seed + args.seeds - 1
    headline = {"coverage": result["coverage"], "false_alarm_nights": result["false_alarm_nights"]}
    path = publish(
        f"results-coverage-seeds{args.first_seed}-{last}-", json.loads(json.dumps(result, default=str)), headline
    )
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}), flush=True)
    print(path)


if __name__ == "__main__":
    main()
