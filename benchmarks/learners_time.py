"""What selecting among learners costs: fit_model with the conf's training.learners against the T-learner alone.

On the same training rows of a simulator (benchmarks.simulators), fit_model (jobs.model.selection:
outcome models, every candidate's effect models, calibration and the selection's values) is timed
with `training.learners: [t]` and with the conf's default, alternating, ROUNDS times each, in this
one process; the ratio of the medians is the cost of selection. Only the fitting: the train step's
evaluation on the holdout, SHAP drivers and MLflow logging are the same for both.

    python -m benchmarks.learners_time --rows 400000   # writes benchmarks/results/learners-time-<date>-<commit>.json
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import publish
from benchmarks.simulators import SIMULATORS
from jobs.model.train import fit_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--simulator", choices=list(SIMULATORS), default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    simulated = SIMULATORS[args.simulator](0, args.rows)
    default = simulated.settings
    alone = default.model_copy(update={"training": default.training.model_copy(update={"learners": ["t"]})})
    seconds: dict[str, list[float]] = {"t": [], "default": []}
    chosen = []
    for _ in range(args.rounds):
        for name, settings in (("t", alone), ("default", default)):
            started = time.perf_counter()
            model = fit_model(simulated.rows, settings)
            seconds[name].append(round(time.perf_counter() - started, 2))
            if name == "default":
                chosen.append(model.selection["selected"])
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "simulator": args.simulator,
        "rows": args.rows,
        "learners": default.training.learners,
        "effect_grid": default.training.effect_grid,
        "seconds": seconds,
        "median_seconds": median,
        "ratio": round(median["default"] / median["t"], 3),
        "selected": chosen,
    }
    path = publish("learners-time-", result, {"selection / t alone": result["ratio"]})
    print(result, f"\n-> {path}")


if __name__ == "__main__":
    main()
