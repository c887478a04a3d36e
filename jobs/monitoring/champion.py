"""Monitoring: the champion's realized results as evidence for keeping it, or against it.

After each night's results (jobs.monitoring.results), the champion's own audiences of the last
`monitoring.window` matured nights it served (and whose sends passed validate-raw) are pooled:

- its realized value against every constant policy: the paired difference (champion's policy
  minus the constant) on the explore rows of those nights; evidence against it when, for some
  constant, the difference's upper bound is below zero at 95% for the constants together
  (`_beaten_by`); the best constant by its estimate is reported beside the realized value;
- each guardrail outcome's realized increase per send; evidence when its 95% lower bound is above
  the guardrail's max_increase_per_send.

The figures are tagged on the champion's model version every night (the gate reads them). With
evidence, the version is tagged `monitoring.flagged` with the reason, and with `monitoring.on_fail:
rollback` (the default) it is retired: the previous champion serves from the next night, or with
none the best constant policy. Rollback is the default because the evidence is randomized and
online, stronger than the offline estimate that promoted the model, and every night a policy worse
than a constant one is served costs its difference on every customer; a flagged model can always be
promoted again by hand (`uplift model promote`).
"""

from __future__ import annotations

import json
import math
from datetime import date
from statistics import NormalDist

import pandas as pd

from jobs.data.lake import read_table
from jobs.model import registry
from jobs.monitoring.results import ALL, FOLLOWS, Z, policy_values
from jobs.names import MONITORING_REPORT, RESULTS, RESULTS_POLICIES, monitoring_tag, of_outcome
from jobs.settings import Settings, report_dir

FLAGGED = registry.FLAGGED_TAG


def champion_nights(settings: Settings, version: str, results: pd.DataFrame) -> list[date]:
    """The latest monitoring.window audience dates the version served whose results (the results
    table) are in, validated."""
    if results.empty:
        return []
    mine = results[(results["model_version"].astype(str) == str(version)) & results["validated"].astype(bool)]
    days = sorted(set(mine["audience_date"]))
    return days[-settings.monitoring.window :]


def guardrail_increases(settings: Settings, version: str, days: list[date], results: pd.DataFrame) -> dict[str, dict]:
    """Each guardrail outcome's realized increase per send over the nights, pooled (estimates summed,
    half-widths in quadrature), against its limit."""
    out = {}
    if results.empty or not days:
        return out
    rows = results[
        (results["arm"] == ALL)
        & (results["model_version"].astype(str) == str(version))
        & results["audience_date"].isin(days)
    ]
    sent = rows["sent"].sum()
    for outcome, guard in settings.targeting.guardrails.items():
        if guard.max_increase_per_send is None or not sent:
            continue
        estimate = rows[of_outcome("incremental", outcome)]
        low = estimate.sum() - math.sqrt(((estimate - rows[f"incremental__{outcome}_low"]) ** 2).sum())
        high = estimate.sum() + math.sqrt(((rows[f"incremental__{outcome}_high"] - estimate) ** 2).sum())
        out[outcome] = {
            "per_send": estimate.sum() / sent,
            "low": low / sent,
            "high": high / sent,
            "limit": guard.max_increase_per_send,
            "above": bool(low / sent > guard.max_increase_per_send),
        }
    return out


def assess(settings: Settings, version: str) -> dict:
    """The champion version's realized evidence (see the module docstring)."""
    results = read_table(settings, RESULTS)
    days = champion_nights(settings, version, results)
    if not days:
        return {"version": str(version), "nights": [], "evidence": [], "note": "no matured audience of it yet"}
    sums = read_table(settings, RESULTS_POLICIES)
    if not sums.empty:
        sums = sums[(sums["model_version"].astype(str) == str(version)) & sums["audience_date"].isin(days)]
    values = policy_values(sums, settings) if not sums.empty else pd.DataFrame()
    evidence, out = [], {"version": str(version), "nights": [d.isoformat() for d in days]}
    if not values.empty:
        constants = values[values["policy"] != FOLLOWS].dropna(subset=["value"])
        best = constants.loc[constants["value"].idxmax()]
        own = values[values["policy"] == FOLLOWS].iloc[0]
        out |= {
            "realized_value": _figure(own, ""),
            "best_constant": best["policy"],
            "best_constant_value": _figure(best, ""),
            "versus_best_constant": _figure(best, "difference"),
            "explore_rows": int(values.loc[values["policy"] != FOLLOWS, "rows"].sum()),  # each row: one constant
        }
        beaten = _beaten_by(constants)
        if beaten is not None:
            evidence.append(
                f"realized value {own['value']:.4f} per customer over {len(days)} matured night(s) is below the "
                f"constant policy '{beaten['policy']}' ({beaten['value']:.4f}): paired difference "
                f"{beaten['difference']:.4f}, upper bound {beaten['upper']:.4f} at 95% for the "
                f"{len(constants)} constant policies together"
            )
    guardrails = guardrail_increases(settings, version, days, results)
    for outcome, g in guardrails.items():
        if g["above"]:
            evidence.append(
                f"guardrail {outcome}: realized increase per send {g['per_send']:.4f} "
                f"[{g['low']:.4f}, {g['high']:.4f}] is above its limit {g['limit']}"
            )
    return out | {"guardrails": guardrails, "evidence": evidence}


def _beaten_by(constants: pd.DataFrame) -> pd.Series | None:
    """The constant policy the champion is most surely below, if it is surely below one: its paired
    difference's upper bound, at 95% for all the constants together (Bonferroni: one-sided
    2.5% / their number each), under zero. The best constant by its estimate is often the noisiest
    (an arm the guardrail lets few customers be explored with), so each one is tested."""
    if constants.empty:
        return None
    z = NormalDist().inv_cdf(1 - 0.025 / len(constants))
    upper = constants["difference"] + (constants["difference_high"] - constants["difference"]) * z / Z
    ranked = constants.assign(upper=upper).sort_values("upper")
    first = ranked.iloc[0]
    return first if first["upper"] < 0 else None


def _figure(row: pd.Series, prefix: str) -> dict:
    name = prefix or "value"
    low, high = (f"{prefix}_low", f"{prefix}_high") if prefix else ("low", "high")
    return {"value": round(float(row[name]), 5), "low": round(float(row[low]), 5), "high": round(float(row[high]), 5)}


def monitor(settings: Settings, run_date: date) -> dict:
    """Assess tonight's champion, tag it, and on evidence flag it and (on_fail: rollback) retire it."""
    champion = registry.alias_version(settings, registry.CHAMPION)
    if champion is None:
        report = {"champion": None, "evidence": [], "action": "none", "note": "no champion: a constant policy serves"}
    else:
        report = {"champion": str(champion.version), **assess(settings, champion.version)}
        tags = {
            monitoring_tag("assessed_on"): run_date.isoformat(),
            monitoring_tag("nights"): str(len(report["nights"])),
        }
        for name in ("realized_value", "versus_best_constant"):
            if name in report:
                tags[monitoring_tag(name)] = json.dumps(report[name])
        if "best_constant" in report:
            tags[monitoring_tag("best_constant")] = report["best_constant"]
        report["action"] = "keep"
        if report["evidence"]:
            tags[FLAGGED] = f"{run_date}: " + "; ".join(report["evidence"])
            report["action"] = "flag"
            if settings.monitoring.on_fail == "rollback":
                report["action"] = "rollback"
                report["rollback"] = registry.retire(settings, champion.version, tags[FLAGGED])
        registry.tag_version(settings, champion.version, tags)
    path = report_dir(settings, run_date) / MONITORING_REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    return report
