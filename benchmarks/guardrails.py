"""The demo's guardrail against the generator's truth: the audience with and without it.

After `make demo`: `python -m benchmarks.guardrails [--run-date 2026-10-30]`. Scores the run
date's scoring set with the champion, applies the policy once without the guardrails (the
outcomes' values kept) and reads the published (guarded) audience; for each, against the
truth in `paths.ground_truth`: the share of the harmed segment (gmail.com, 45 and over) given
subject_3, and the sends' true unsubscribe increase.
"""

from __future__ import annotations

import argparse
import json
from datetime import date

import mlflow
import pandas as pd

from jobs.data.lake import partition_dir
from jobs.model import policy
from jobs.model.tracking import use_tracking
from jobs.names import p_column
from jobs.settings import load_settings


def true_increase(audience: pd.DataFrame, truth: pd.DataFrame, outcome: str) -> pd.Series:
    """Per send (selected, not held out): the true uplift of outcome of the arm it is given."""
    sent = audience[audience["selected"] & ~audience["holdout"]]
    rows = truth.loc[sent.index]
    control = rows[p_column("control", outcome)]
    given = [rows.at[c, p_column(arm, outcome)] for c, arm in sent["recommended_arm"].items()]
    return pd.Series(given, index=sent.index) - control


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-date", type=date.fromisoformat, default=date(2026, 10, 30))
    run_date = parser.parse_args().run_date
    settings = load_settings(demo=True)
    use_tracking(settings)
    features = pd.read_parquet(partition_dir(settings, "features/scoring", run_date))
    model = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model}@champion")
    predicted = pd.concat([features[["customer_id"]], model.predict(features)], axis=1)
    targeting = settings.targeting
    unguarded = targeting.model_copy(
        update={"outcomes": {n: o.model_copy(update={"guardrail": None}) for n, o in targeting.outcomes.items()}}
    )
    audiences = {
        "without the guardrail": policy.apply(predicted, unguarded, settings.experiment.arms, run_date),
        "with the guardrail (published)": pd.read_parquet(partition_dir(settings, "audience", run_date)),
    }
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet").set_index("customer_id")
    people = features.set_index("customer_id")
    harmed = people.index[(people["email_domain"] == "gmail.com") & (people["age"] >= 45)]
    out = {"run_date": run_date.isoformat(), "harmed_customers": len(harmed)}
    for outcome, guardrail in targeting.guardrails.items():
        for name, audience in audiences.items():
            audience = audience.set_index("customer_id")
            increase = true_increase(audience, truth, outcome)
            given = (audience.loc[harmed, "recommended_arm"] == "subject_3").mean()
            out[f"{outcome}, {name}"] = {
                "harmed_given_subject_3": round(float(given), 4),
                "sends": len(increase),
                "true_increase_per_send": round(float(increase.mean()), 5),
                "limit_per_send": guardrail.max_increase_per_send,
                "sends_above_max_uplift": round(float((increase > (guardrail.max_uplift or 1)).mean()), 4),
                "true_incremental": round(float(increase.sum()), 1),
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
