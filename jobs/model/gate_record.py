"""A gate decision kept where people look for it: gate.json, the budget curve (CSV and plot) in the
night's report folder, and on the training run the decision's tags, every policy's value,
guardrail estimates and paired differences as metrics, and the files as artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from jobs.names import (
    BUDGET_CURVE,
    GATE_DECISION_TAG,
    GATE_POLICY_TAG,
    GATE_REASONS_TAG,
    policy_metric,
    versus_whom,
)


def _curve_plot(curve: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(curve["sends"], curve["net_value"], marker="o", label="expected net value")
    ax.fill_between(curve["sends"], curve["net_value_low"], curve["net_value_high"], alpha=0.25, label="95% interval")
    ax.axhline(0, color="grey", linestyle=":")
    ax.set(title="Budget curve of the deployed policy (holdout, AIPW)", xlabel="sends", ylabel="net value")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def record(decision: dict, report_path: Path) -> None:
    """Keep the decision on the training run (tags, metrics, gate.json, budget curve) and in the report folder."""
    folder = report_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(decision, indent=2))
    curve = pd.DataFrame(decision["budget_curve"])
    curve.to_csv(folder / f"{BUDGET_CURVE}.csv", index=False)
    _curve_plot(curve, folder / f"{BUDGET_CURVE}.png")
    client, run_id = mlflow.MlflowClient(), decision["run_id"]
    client.set_tag(run_id, GATE_DECISION_TAG, decision["decision"])
    client.set_tag(run_id, GATE_REASONS_TAG, "; ".join(decision["reasons"])[:5000])
    client.set_tag(run_id, GATE_POLICY_TAG, decision["deployed_policy"])
    metrics = {}
    for name, v in decision["policy_values"].items():
        for field in ("value", "low", "high", "ipw"):
            metrics[f"policy_value.{policy_metric(name)}" + ("" if field == "value" else f".{field}")] = v[field]
        for outcome, e in v.get("guardrails", {}).items():
            for field in ("increase_per_send", "low", "high"):
                suffix = "" if field == "increase_per_send" else f".{field}"
                metrics[f"guardrail.{outcome}.{policy_metric(name)}{suffix}"] = e[field]
    for name, v in decision["differences"].items():
        metrics[f"policy_diff.{policy_metric(versus_whom(name))}"] = v["value"]
        metrics[f"policy_diff.{policy_metric(versus_whom(name))}.low"] = v["low"]
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    for path in (report_path, folder / f"{BUDGET_CURVE}.csv", folder / f"{BUDGET_CURVE}.png"):
        client.log_artifact(run_id, str(path))
