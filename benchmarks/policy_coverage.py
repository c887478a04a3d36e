"""Are the gate's policy values honest? Coverage of the deployed policy's interval over many seeds.

For each seed: generate a demo dataset with ground truth (jobs.demo.generate), run the real ETL,
training and gate, and compare the gate's AIPW estimate (net value per customer, with its
paired-bootstrap 95% interval) with the true value on the same holdout rows: the mean over rows
of ``value x (p_true[arm chosen] - p_true[control]) - cost``, plus each further outcome's value
times its true uplift (the demo's unsubscribes), from the generator's true probabilities. Two
policies per seed: the one the night deploys (the challenger if promoted,
else the constant policy; "no one" is 0 for sure and is left out of its coverage), and the
challenger's policy whatever the decision. The interval should contain the truth for at least
90% of seeds.

    python -m benchmarks.policy_coverage --seeds 20     # writes benchmarks/results/policy-coverage-<date>-<commit>.json
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
import numpy as np
import pandas as pd

from benchmarks import publish
from jobs.data.etl import run_etl
from jobs.demo.generate import generate
from jobs.model import gate, policy
from jobs.model.tracking import HOLDOUT_ARTIFACT
from jobs.model.train import train
from jobs.names import constant_policy, everyone, p_column
from jobs.runtime.spark import get_spark
from jobs.settings import Settings, load_settings

RUN_DATE = date(2026, 10, 30)
DATA = {"customers": 8_000, "days": 16, "sends_per_day": 3_000}


def _home(settings: Settings, root: Path) -> Settings:
    paths = settings.paths.model_copy(
        update={"lake": root / "lake", "reports": root / "reports", "ground_truth": root / "truth"}
    )
    tracking = settings.mlflow.model_copy(
        update={"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "artifacts")}
    )
    gate_cfg = settings.gate.model_copy(update={"bootstrap_rounds": 200})
    return settings.model_copy(update={"paths": paths, "mlflow": tracking, "gate": gate_cfg})


def true_value(settings: Settings, holdout: pd.DataFrame, assignment: np.ndarray) -> float:
    """The policy's true net value per customer on the holdout rows, from the generator's truth."""
    exp, targeting = settings.experiment, settings.targeting
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet").set_index("customer_id")
    rows = truth.loc[holdout["customer_id"]]
    value = np.zeros(len(holdout))
    for arm in exp.arms:
        sent = assignment == arm
        uplift = rows[p_column(arm)].to_numpy() - rows["p_control"].to_numpy()
        value[sent] = targeting.value_per_response * uplift[sent] - targeting.cost_per_send[arm]
        for outcome, spec in targeting.outcomes.items():  # e.g. unsubscribes, valued -5 each
            harm = rows[p_column(arm, outcome)].to_numpy() - rows[p_column(exp.control, outcome)].to_numpy()
            value[sent] += spec.value * harm[sent]
    return float(value.mean())


def one_seed(base: Settings, spark, seed: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"coverage-{seed}-"))
    try:
        settings = _home(base, root)
        generate(settings, last_day=RUN_DATE, seed=seed, **DATA)
        run_etl(spark, settings, RUN_DATE)
        trained = train(settings, RUN_DATE)
        run = mlflow.get_run(trained["run_id"])
        decision = gate.decide(settings, RUN_DATE, run)
        holdout = pd.read_parquet(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=HOLDOUT_ARTIFACT)
        )
        chosen = gate.candidate_choices(settings, holdout, RUN_DATE, gate.audience_rows(settings, RUN_DATE))
        deployed = decision["deployed_policy"]
        names = {"challenger": gate.CHALLENGER}
        if deployed.startswith("model:"):
            names["deployed"] = gate.CHALLENGER
        elif deployed != constant_policy(policy.NONE):
            names["deployed"] = everyone(deployed.split(":", 1)[1])
        out = {
            "seed": seed,
            "holdout_rows": len(holdout),
            "decision": decision["decision"],
            "deployed_policy": deployed,
        }
        for label, name in names.items():
            estimate = decision["policy_values"][name]
            truth = true_value(settings, holdout, gate.assignment(chosen[name], settings.experiment.control))
            out[label] = {
                "policy": name,
                "estimate": estimate["value"],
                "low": estimate["low"],
                "high": estimate["high"],
                "ipw": estimate["ipw"],
                "truth": truth,
                "covered": estimate["low"] <= truth <= estimate["high"],
            }
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    base = load_settings(demo=True)
    spark = get_spark(base, "uplift-policy-coverage")
    started = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        rows.append(one_seed(base, spark, seed))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "date": date.today().isoformat(),
        "seeds": args.seeds,
        "data": DATA,
        "seconds": round(time.perf_counter() - started, 1),
        "promoted": sum(r["decision"] == "promote" for r in rows),
    }
    for label in ("deployed", "challenger"):
        valued = [r[label] for r in rows if label in r]
        result[label] = {
            "seeds": len(valued),
            "coverage": sum(v["covered"] for v in valued) / len(valued) if valued else None,
            "mean_abs_error": float(np.mean([abs(v["estimate"] - v["truth"]) for v in valued])) if valued else None,
            "mean_interval_width": float(np.mean([v["high"] - v["low"] for v in valued])) if valued else None,
        }
    result["runs"] = rows
    headline = {f"{k} coverage": result[k]["coverage"] for k in ("deployed", "challenger")}
    out = publish("policy-coverage-", result, headline)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), flush=True)
    print(f"written {out}")


if __name__ == "__main__":
    main()
