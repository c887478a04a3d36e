"""The gate's decision (gate.json) as a campaign manager reads it: what is sent tonight, what the
model's targeting is worth and, when tonight's model is not sent, why. The run page words it."""

from __future__ import annotations

from jobs.names import CHALLENGER, CHAMPION_POLICY, everyone, is_constant_policy, policy_model_version, versus
from jobs.settings import Settings


def gate_summary(settings: Settings, gate: dict) -> dict | None:
    """The gate's decision as a campaign manager reads it (None when gate.json lacks the figures).

    What is sent tonight (`sent`: the model version, or the arm everyone gets, or none), what the
    challenger's targeting is worth per customer and how much more than the best policy without a
    model (`alternative`: the arm everyone gets, None for sending no one), and, when the challenger
    is not sent, why (`why`: a guardrail it breaks, not clearly beating the alternative under the
    gate's rule, worse than the champion; `other` when the reason is elsewhere: drift, a backfill).
    """
    values, differences = gate.get("policy_values") or {}, gate.get("differences") or {}
    best = gate.get("best_constant")
    if CHALLENGER not in values or versus(best) not in differences:
        return None
    deployed = gate.get("deployed_policy") or ""
    constant = deployed.split(":", 1)[1] if is_constant_policy(deployed) else None
    summary = {
        "decision": gate.get("decision"),
        "sent": {"version": policy_model_version(deployed), "arm": constant},
        "challenger": values[CHALLENGER],
        "alternative": next((a for a in settings.experiment.arms if everyone(a) == best), None),
        "versus_alternative": differences[versus(best)],
        "rule": gate.get("rule"),
        "why": [],
    }
    if summary["decision"] == "promote":
        return summary
    limits = gate.get("guardrails") or {}
    for outcome, g in (values[CHALLENGER].get("guardrails") or {}).items():
        if g.get("above"):
            limit = g["above"][0]
            summary["why"].append(
                {"kind": "guardrail", "outcome": outcome, **g, "limit": limit, "at": limits.get(outcome, {}).get(limit)}
            )
    d = summary["versus_alternative"]
    if not (d["low"] > 0 if summary["rule"] == "interval" else d["value"] > 0):
        summary["why"].append({"kind": "not better"})
    champion = differences.get(versus(CHAMPION_POLICY))
    if champion and champion["value"] < -settings.gate.champion_tolerance:
        summary["why"].append({"kind": "champion", **champion, "version": (gate.get("champion") or {}).get("version")})
    if not summary["why"]:
        summary["why"].append({"kind": "other"})
    return summary
