"""How close is a night's gate decision? One dataset, the training seed varied.

The suite's tests that need a champion rely on its demo-size night promoting. A training seed
draws the holdout split, the early-stopping split and LightGBM's bagging, so the decisions over
many seeds show how much of a night's decision is the data and how much the draw. One demo
dataset (the suite's size and seed by default) through the real ETL; then, per training seed,
the real training and gate in process, and the generator's truth on the same holdout rows:

- the challenger's difference to the best constant policy (estimate and 95% interval), and the
  decision the interval rule gives;
- for each constant policy a guardrail refuses in at least one draw, the draws that refuse it;
- the true net value per customer of the challenger's policy and of the best constant's
  (benchmarks.policy_coverage.true_value, outcomes' values included).

    python -m benchmarks.gate_draws --seeds 16

writes benchmarks/results/gate-draws-<customers>x<sends a day>-<date>-<commit>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import mlflow
import pandas as pd

from benchmarks import publish
from benchmarks.policy_coverage import RUN_DATE, _home, true_value
from jobs.data.etl import run_etl
from jobs.demo.generate import generate
from jobs.model import gate
from jobs.model.tracking import HOLDOUT_ARTIFACT
from jobs.model.train import train
from jobs.runtime.spark import get_spark
from jobs.settings import Settings, load_settings

SUITE = {"customers": 16_000, "days": 30, "sends_per_day": 6_000, "seed": 11}  # tests/conftest.py's DEMO


def one_draw(settings: Settings, seed: int) -> dict:
    local = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": seed})})
    run = mlflow.get_run(train(local, RUN_DATE)["run_id"])
    decision = gate.decide(local, RUN_DATE, run)
    holdout = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=HOLDOUT_ARTIFACT)
    )
    chosen = gate.candidate_choices(local, holdout, RUN_DATE, gate.audience_rows(local, RUN_DATE))
    control, best = local.experiment.control, decision["best_constant"]
    truth = {
        name: true_value(local, holdout, gate.assignment(chosen[name], control)) if name in chosen else 0.0
        for name in (gate.CHALLENGER, best)
    }
    versus = decision["differences"][f"challenger - {best}"]
    return {
        "training_seed": seed,
        "beats_best_constant": versus["low"] > 0,
        "best_constant": best,
        "difference": {k: round(versus[k], 4) for k in ("value", "low", "high")},
        "refused": sorted(
            n for n, v in decision["policy_values"].items() if any(g["above"] for g in v.get("guardrails", {}).values())
        ),
        "true_value": {k: round(v, 4) for k, v in truth.items()},
        "true_difference": round(truth[gate.CHALLENGER] - truth[best], 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16, help="training seeds 0..N-1")
    for name, default in SUITE.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    data = {name: getattr(args, name) for name in SUITE}
    base = load_settings(demo=True)
    root = Path(tempfile.mkdtemp(prefix="gate-draws-"))
    started = time.perf_counter()
    try:
        settings = _home(base, root).model_copy(update={"gate": base.gate})  # the configured bootstrap rounds
        generate(settings, last_day=RUN_DATE, **data)
        run_etl(get_spark(settings, "uplift-gate-draws"), settings, RUN_DATE)
        rows = []
        for seed in range(args.seeds):
            rows.append(one_draw(settings, seed))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    refusals = sorted({name for r in rows for name in r["refused"]})
    result = {
        "date": date.today().isoformat(),
        "data": data,
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "beats_best_constant": sum(r["beats_best_constant"] for r in rows),
        "refused": {name: sum(name in r["refused"] for r in rows) for name in refusals},
        "true_difference": {
            "min": min(r["true_difference"] for r in rows),
            "max": max(r["true_difference"] for r in rows),
        },
        "draws": rows,
    }
    headline = {"beats_best_constant": result["beats_best_constant"], "seeds": result["seeds"]}
    out = publish(f"gate-draws-{data['customers']}x{data['sends_per_day']}-", result, headline)
    print(json.dumps({k: v for k, v in result.items() if k != "draws"}), flush=True)
    print(f"written {out}")


if __name__ == "__main__":
    main()
