"""The loop's honesty over seeds: does the gate's interval for the deployed policy cover its truth?

For each seed, `uplift simulate` (jobs.demo.simulate) lands the demo's randomized history and plays the
loop: every night runs the whole nightly, its audience is sent as exported and the responses come
from the generator's truth. Per night the gate's AIPW estimate of the deployed policy (net value per
eligible customer, paired-bootstrap 95% interval, weighed by the recorded propensities) is compared
with the policy's true value (the generator's net value of its own choice for every customer it
decides for, before exploration and holdout). A night that deploys `constant:none` is worth 0 for
sure and is left out of the coverage. The interval should contain the truth on at least 90% of
nights. A short attribution window lets the nights learn from their own sends within a few nights.
`--rule point` plays the gate's `point` rule, under which a model is deployed on most nights, so
that the intervals of models' policies, not only of constant ones, are put to the test.

    python -m benchmarks.loop --seeds 10 --nights 8   # writes benchmarks/results/loop-seeds0-9-<date>-<commit>.json
    python -m benchmarks.loop --seeds 10 --nights 8 --rule point
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks import publish
from jobs.demo.simulate import simulate
from jobs.settings import Settings, load_settings

FIRST_NIGHT = date(2026, 10, 30)
DATA = {"customers": 6_000, "days": 10, "sends_per_day": 2_500}
WINDOW_DAYS = 3


def _home(settings: Settings, root: Path) -> Settings:
    """settings with the lake, reports, truth and MLflow under root, a short window, Spark in process."""
    paths = settings.paths.model_copy(
        update={"lake": root / "lake", "reports": root / "reports", "ground_truth": root / "truth"}
    )
    tracking = settings.mlflow.model_copy(
        update={"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "artifacts")}
    )
    exp = settings.experiment.model_copy(update={"attribution_window_days": WINDOW_DAYS})
    outcomes = {n: o.model_copy(update={"window_days": WINDOW_DAYS}) for n, o in settings.targeting.outcomes.items()}
    return settings.model_copy(
        update={
            "paths": paths,
            "mlflow": tracking,
            "experiment": exp,
            "targeting": settings.targeting.model_copy(update={"outcomes": outcomes}),
            "spark": settings.spark.model_copy(update={"remote": None, "master": "local[2]"}),
            "schedule": settings.schedule.model_copy(update={"retries": 0}),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first_seed .. first_seed + seeds - 1")
    parser.add_argument("--nights", type=int, default=8)
    parser.add_argument("--rule", choices=["interval", "point"], default="interval", help="gate.beats")
    args = parser.parse_args(argv)
    started, nights = time.perf_counter(), []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        root = Path(tempfile.mkdtemp(prefix=f"loop-{seed}-"))
        try:
            settings = _home(load_settings(demo=True), root)
            settings = settings.model_copy(update={"gate": settings.gate.model_copy(update={"beats": args.rule})})
            table = simulate(settings, nights=args.nights, first_night=FIRST_NIGHT, seed=seed, **DATA)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        nights += [{"seed": seed, **line} for line in table]
        print(json.dumps(nights[-len(table) :]), flush=True)
    counted = [n for n in nights if n["policy"] != "constant:none"]
    covered = [n["estimated_low"] <= n["true_value"] <= n["estimated_high"] for n in counted]
    models = [c for n, c in zip(counted, covered, strict=True) if n["policy"].startswith("model:")]
    result = {
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "nights_per_seed": args.nights,
        "data": DATA,
        "attribution_window_days": WINDOW_DAYS,
        "rule": args.rule,
        "nights_counted": len(counted),
        "coverage": sum(covered) / len(covered) if covered else None,
        "model_nights": len(models),
        "model_coverage": sum(models) / len(models) if models else None,
        "seconds": round(time.perf_counter() - started, 1),
        "nights": nights,
    }
    last = args.first_seed + args.seeds - 1
    headline = {k: result[k] for k in ("nights_counted", "coverage", "model_nights", "model_coverage")}
    path = publish(
        f"loop-{'' if args.rule == 'interval' else 'point-'}seeds{args.first_seed}-{last}-", result, headline
    )
    print(json.dumps({k: v for k, v in result.items() if k != "nights"}), f"-> {path}")


if __name__ == "__main__":
    main()
