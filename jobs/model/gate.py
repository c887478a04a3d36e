"""The gate: promote a challenger only when its targeting decisions are worth more than the alternatives.

On the training holdout the models never saw, the net value per customer (jobs.model.evaluation:
doubly robust, IPW alongside, paired bootstrap intervals) of:
- the challenger's policy (jobs.model.policy, with the configured budget scaled to the holdout);
- every constant policy: everyone gets arm a (under the same budget), and no one;
- the champion's policy, when there is a champion that can score these rows.

Promote when the challenger beats the best constant policy and is not worse than the champion
by more than `gate.champion_tolerance` (net value per customer). "Beats" is `gate.beats`:
`interval` (default: the paired difference's 95% interval lies above zero) or `point` (its
estimate is above zero). The default asks for evidence because nothing is lost by waiting:
until a model passes, the night publishes the best constant policy, so a rejected challenger
costs at most the gain it could not demonstrate. Never promoted, whatever the values: a
challenger for a date before the champion's (a backfill never replaces newer knowledge), and,
with `drift.on_fail: block_promotion`, one whose scoring features drift past the fail level.

Guardrails (`targeting.outcomes.<o>.guardrail`): every policy's increase per send of each
guardrail outcome is estimated the same way (AIPW, paired bootstrap); a policy whose interval lies
above a limit is refused: the challenger is rejected, a constant policy is not an alternative.

Per-arm Qini (scikit-uplift normalisation) with its bootstrap interval is a diagnostic: it
decided at training time whether an arm's ranking is used or the arm is constant (jobs.model.train).
The decision carries its reasons, every value and the budget curve of the policy the night will
deploy; jobs.model.gate_record keeps it on the training run and in the run date's report folder.
"""

from __future__ import annotations

import json
import os
from datetime import date

import mlflow
import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from jobs.data.lake import MissingInputError, partition_dir
from jobs.model import evaluation, policy
from jobs.model.effects import training_effects
from jobs.model.portable import serving_problem
from jobs.model.registry import CHAMPION, FLAGGED_TAG, alias_version, portable_model
from jobs.model.tracking import HOLDOUT_ARTIFACT
from jobs.names import (
    ARM_MODE_PARAM,
    CHALLENGER,
    CHAMPION_POLICY,
    MODEL_VERSION_TAG,
    NO_ONE,
    RUN_DATE_TAG,
    SCORING_SET,
    arm_metric,
    constant_policy,
    everyone,
    is_uplift_column,
    key,
    model_policy,
    monitoring_tag,
    uplift_column,
    uplift_high_column,
    versus,
)
from jobs.settings import Settings


def assignment(chosen: pd.DataFrame, control: str) -> np.ndarray:
    """The arm each row is sent (control where the policy sends nothing or holds the row out)."""
    sent = chosen["selected"].to_numpy() & ~chosen["holdout"].to_numpy()
    return np.where(sent, chosen["recommended_arm"].to_numpy(), control)


def _constant_uplifts(frame: pd.DataFrame, arm: str, arms: list[str], targeting) -> pd.DataFrame:
    """Uplifts that make the policy send `arm` to everyone (then budgets and holdout apply); the
    further outcomes' at 0, so neither their values nor a guardrail moves anyone."""
    others = {uplift_column(a, o): 0.0 for o in targeting.outcomes for a in arms}
    others |= {uplift_high_column(a, o): 0.0 for o in targeting.guardrails for a in arms}
    return frame[["customer_id"]].assign(**{uplift_column(a): 1.0 if a == arm else -1.0 for a in arms}, **others)


def uplift_columns(frame: pd.DataFrame) -> list[str]:
    """customer_id and the targeting uplifts (and guardrail bounds) of frame: what the policy reads."""
    return ["customer_id", *(c for c in frame.columns if is_uplift_column(c))]


def audience_rows(settings: Settings, run_date: date) -> int:
    path = partition_dir(settings, SCORING_SET, run_date)
    if not path.exists():
        raise MissingInputError(f"no scoring set at {path}: run `uplift etl --run-date {run_date}` first")
    return pads.dataset(str(path), format="parquet").count_rows()


def holdout_targeting(settings: Settings, holdout_rows: int, audience: int):
    """The targeting policy with the audience's budgets scaled to a holdout of holdout_rows."""
    return policy.scaled(settings.targeting, holdout_rows / max(1, audience))


def candidate_choices(
    settings: Settings, holdout: pd.DataFrame, run_date: date, audience: int, customers: policy.Customers | None = None
) -> dict:
    """The challenger's policy (its targeting uplifts) and every "everyone gets a" policy on the
    holdout rows, budgets scaled: policy name -> jobs.model.policy.apply's frame."""
    arms, targeting = settings.experiment.arms, holdout_targeting(settings, len(holdout), audience)
    customers = customers or policy.Customers.of(holdout["customer_id"], run_date)
    chosen = {CHALLENGER: policy.apply(holdout[uplift_columns(holdout)], targeting, arms, run_date, customers)}
    for arm in arms:
        constant = _constant_uplifts(holdout, arm, arms, targeting)
        chosen[everyone(arm)] = policy.apply(constant, targeting, arms, run_date, customers)
    return chosen


def _champion_choice(settings: Settings, holdout: pd.DataFrame, targeting, run_date: date, customers):
    """The champion's policy on the holdout, or (None, reason) when it cannot be evaluated."""
    champion = alias_version(settings, CHAMPION)
    if champion is None:
        return None, None, "no champion yet"
    portable = portable_model(settings, champion.version)
    columns = ["customer_id", *settings.features.names]
    exp = settings.experiment
    problem = serving_problem(columns, portable, exp.control, exp.arms, settings.targeting.outcomes)
    if problem:  # trained on another feature spec or experiment: tonight it would not serve either
        return champion, None, f"champion v{champion.version} cannot serve this experiment: {problem}"
    predicted = portable.predict(holdout, portable.load(), os.cpu_count() or 1)
    uplifts = pd.concat([holdout[["customer_id"]].reset_index(drop=True), predicted.reset_index(drop=True)], axis=1)
    chosen = policy.apply(uplifts, targeting, settings.experiment.arms, run_date, customers)
    return champion, chosen, None


def decide(settings: Settings, run_date: date, run, drift_checks: list[dict] = ()) -> dict:
    """Gate decision for the challenger logged by `run` (a training run of run_date)."""
    exp, cfg = settings.experiment, settings.gate
    holdout = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=HOLDOUT_ARTIFACT)
    )
    rows = audience_rows(settings, run_date)
    targeting = holdout_targeting(settings, len(holdout), rows)
    customers = policy.Customers.of(holdout["customer_id"], run_date)  # once for every policy on the holdout
    chosen = candidate_choices(settings, holdout, run_date, rows, customers)
    champion, champion_chosen, champion_note = _champion_choice(settings, holdout, targeting, run_date, customers)
    if champion_chosen is not None:
        chosen[CHAMPION_POLICY] = champion_chosen
    assignments = {name: assignment(frame, exp.control) for name, frame in chosen.items()}
    assignments[NO_ONE] = np.full(len(holdout), exp.control, dtype=object)
    table, differences = _values(settings, holdout, assignments)
    best, refused = alternatives(table, exp.arms)
    passed, reasons = _verdict(settings, run_date, table, differences, best, refused)
    if champion is not None:
        passed = _champion_allows(settings, run_date, champion, table, differences, champion_chosen, reasons) and passed
    if champion_note:
        reasons.append(champion_note)
    passed = _drift_allows(settings, drift_checks, reasons) and passed
    reasons += _arm_diagnostics(run, [key(a, o) for o in [None, *settings.targeting.outcomes] for a in exp.arms])
    effects = training_effects(settings, run_date)
    constant_arm, constant_reasons = policy.best_constant(effects, settings.targeting)
    deployed = CHALLENGER if passed else CHAMPION_POLICY if champion_chosen is not None else None
    curve = _deployed_curve(deployed, constant_arm, chosen, holdout, settings, run_date, rows, customers)
    deployed_name = deployed or (everyone(constant_arm) if constant_arm != policy.NONE else NO_ONE)
    by_arm = evaluation.arm_values(
        assignments[deployed_name], holdout, exp, settings.targeting, audience_rows=rows, **_bootstrap(settings)
    )
    version = run.data.tags[MODEL_VERSION_TAG] if deployed == CHALLENGER else champion and champion.version
    return {
        "run_date": run_date.isoformat(),
        "run_id": run.info.run_id,
        "guardrails": _guardrail_limits(settings),
        "model_version": run.data.tags[MODEL_VERSION_TAG],
        "decision": "promote" if passed else "reject",
        "reasons": reasons,
        "rule": cfg.beats,
        "policy_values": table,
        "differences": differences,
        "best_constant": best,
        "champion": _champion_record(champion, champion_note),
        "constant_policy": {"arm": constant_arm, "reasons": constant_reasons, "effects": effects},
        "deployed_policy": model_policy(version) if deployed else constant_policy(constant_arm),
        "deployed_value": table[deployed_name],
        "budget_curve": curve.to_dict(orient="records"),
        "deployed_arms": by_arm,
        "value_definition": "net value per customer vs sending nothing: value_per_response x incremental "
        "responses - cost; AIPW with the T-learner's outcome models, paired bootstrap 95% intervals",
    }


def _bootstrap(settings: Settings) -> dict:
    return {"rounds": settings.gate.bootstrap_rounds, "seed": settings.training.seed}


def _values(settings: Settings, holdout: pd.DataFrame, assignments: dict) -> tuple[dict, dict]:
    """Every policy's value on the holdout, and the challenger's paired difference against each other one."""
    values = evaluation.value_table(
        assignments,
        holdout,
        settings.experiment,
        settings.targeting,
        pairs={versus(name): (CHALLENGER, name) for name in assignments if name != CHALLENGER},
        **_bootstrap(settings),
    )
    return values["policies"], values["differences"]


def _guardrail_limits(settings: Settings) -> dict:
    """The guardrails as the decision record shows them (their settings, without the bound's bins)."""
    return {
        name: {k: v for k, v in g.model_dump().items() if k != "bound_bins"}
        for name, g in settings.targeting.guardrails.items()
    }


def _verdict(settings: Settings, run_date: date, table, differences, best: str, refused) -> tuple[bool, list[str]]:
    """Whether the challenger beats the best constant policy under the gate's rule and no guardrail
    refuses it, with the reasons (a refused constant policy is named, not an alternative)."""
    rule = settings.gate.beats
    versus_best = differences[versus(best)]
    beats = versus_best["low"] > 0 if rule == "interval" else versus_best["value"] > 0
    reasons = [
        f"challenger {_fmt(table[CHALLENGER])} vs the best constant policy '{best}' {_fmt(table[best])}: "
        f"difference {_fmt(versus_best)} ({'beats it' if beats else 'does not beat it'}, rule: {rule})"
    ]
    passed = beats
    for name, breaks in refused.items():
        if name == CHALLENGER:
            passed = False
            reasons.append(f"challenger refused: {breaks}")
        elif name != CHAMPION_POLICY:
            reasons.append(f"'{name}' is not an alternative: {breaks}")
    return passed, reasons


def _champion_allows(settings, run_date: date, champion, table, differences, champion_chosen, reasons) -> bool:
    """False when the champion stands in the challenger's way: it was trained for a later date (a
    backfill never replaces it), or its policy is worth more than the challenger's beyond the
    tolerance and monitoring has not flagged it. Appends the reasons, and its realized value."""
    cfg, allowed = settings.gate, True
    champion_date = date.fromisoformat(champion.tags.get(RUN_DATE_TAG, "1970-01-01"))
    if champion_date > run_date:
        allowed = False
        reasons.append(
            f"champion v{champion.version} was trained for {champion_date}, after {run_date}: "
            "a backfill never replaces it"
        )
    elif champion_chosen is not None:
        difference = differences[versus(CHAMPION_POLICY)]
        not_worse = difference["value"] >= -cfg.champion_tolerance
        flagged = champion.tags.get(FLAGGED_TAG)
        allowed = not_worse or flagged is not None
        reasons.append(
            f"champion v{champion.version} {_fmt(table[CHAMPION_POLICY])}: difference {_fmt(difference)} "
            + ("is not worse" if not_worse else "is worse")
            + f" (tolerance {cfg.champion_tolerance} per customer)"
            + (f"; it does not block: monitoring flagged it ({flagged})" if flagged and not not_worse else "")
        )
    realized = _realized(champion)
    if realized:
        reasons.append(realized)
    return allowed


def _champion_record(champion, note: str | None) -> dict | None:
    if champion is None:
        return None
    return {
        "version": str(champion.version),
        "note": note,
        "flagged": champion.tags.get(FLAGGED_TAG),
        "realized_value": json.loads(champion.tags.get(monitoring_tag("realized_value"), "null")),
    }


def _realized(champion) -> str | None:
    """The champion's realized value from its own audiences (jobs.monitoring.champion's tags), as a reason line."""
    tags = champion.tags
    if monitoring_tag("realized_value") not in tags:
        return None
    value = json.loads(tags[monitoring_tag("realized_value")])
    gap = json.loads(tags[monitoring_tag("versus_best_constant")])
    return (
        f"champion v{champion.version} realized {value['value']:.4f} [{value['low']:.4f}, {value['high']:.4f}] per "
        f"customer over {tags.get(monitoring_tag('nights'))} matured night(s) of its own audiences (explore rows), "
        f"{gap['value']:.4f} [{gap['low']:.4f}, {gap['high']:.4f}] against the constant policy "
        f"'{tags.get(monitoring_tag('best_constant'))}'"
    )


def alternatives(table: dict[str, dict], arms: list[str]) -> tuple[str, dict[str, str]]:
    """The best constant policy the challenger must beat (no one, at worst), and the policies a
    guardrail refuses (name -> what they break): a refused constant policy is not an alternative."""
    refused = {name: _guardrail_breaks(v) for name, v in table.items() if _guardrail_breaks(v)}
    constants = [name for name in [everyone(a) for a in arms] if name not in refused] + [NO_ONE]
    return max(constants, key=lambda name: table[name]["value"]), refused


def _guardrail_breaks(values: dict) -> str:
    """What a policy's guardrail estimates break ("" when nothing): the limits an interval lies above."""
    return "; ".join(
        f"its {outcome} increase per send {e['increase_per_send']:.4f} [{e['low']:.4f}, {e['high']:.4f}] "
        f"lies above {', '.join(e['above'])}"
        for outcome, e in values.get("guardrails", {}).items()
        if e["above"]
    )


def _fmt(v: dict) -> str:
    return f"{v['value']:.4f} [{v['low']:.4f}, {v['high']:.4f}]"


def _drift_allows(settings: Settings, drift_checks: list[dict], reasons: list[str]) -> bool:
    """False (with the reason) when drift.on_fail is block_promotion and a feature drift check
    (jobs.monitoring.drift.feature_drift, run by the gate step) failed."""
    if settings.drift.on_fail != "block_promotion":
        return True
    failed = [c for c in drift_checks if c["outcome"] == "fail"]
    if not failed:
        return True
    reasons.append(
        "scoring features drift ("
        + "; ".join(f"{c['name']}: drifted share {c['drifted_share']:.2f}, {c['drifted_columns']}" for c in failed)
        + ") and drift.on_fail is block_promotion"
    )
    return False


def _arm_diagnostics(run, arms: list[str]) -> list[str]:
    lines = []
    for arm in arms:
        qini, low = run.data.metrics[arm_metric("qini", arm)], run.data.metrics[arm_metric("qini_ci_low", arm)]
        if run.data.params.get(arm_metric(ARM_MODE_PARAM, arm), "ranked") == "ranked":
            used = "its ranking is used"
        else:
            effect = run.data.metrics.get(arm_metric("constant_uplift", arm), 0.0)
            used = f"its ranking is not used: a constant average effect {effect:.4f}"
        lines.append(f"{arm}: Qini {qini:.4f} (95% CI low {low:.4f}): {used}")
    return lines


def _deployed_curve(deployed, constant_arm, chosen, holdout, settings, run_date, rows, customers) -> pd.DataFrame:
    """The budget curve (no budget applied) of the policy the night deploys."""
    exp, unbudgeted = settings.experiment, settings.targeting.model_copy(update={"max_sends": None, "max_spend": None})
    budgeted = settings.targeting.max_sends is not None or settings.targeting.max_spend is not None
    if deployed is not None:
        frame = chosen[deployed]  # without a budget, its choice is already the unbudgeted one
        free = (
            policy.apply(frame[uplift_columns(frame)], unbudgeted, exp.arms, run_date, customers) if budgeted else frame
        )
        priority = free["expected_net_value"].to_numpy()
    elif constant_arm != policy.NONE:
        constant = _constant_uplifts(holdout, constant_arm, exp.arms, settings.targeting)
        free = policy.apply(constant, unbudgeted, exp.arms, run_date, customers)
        priority = -free["holdout_draw"].to_numpy()  # no ranking: a random order
    else:
        return pd.DataFrame(
            [
                {
                    "sends": 0,
                    "net_value": 0.0,
                    "net_value_low": 0.0,
                    "net_value_high": 0.0,
                    "incremental_responses": 0.0,
                    "incremental_responses_low": 0.0,
                    "incremental_responses_high": 0.0,
                }
            ]
        )
    return evaluation.budget_curve(
        assignment(free, exp.control),
        priority,
        holdout,
        exp,
        settings.targeting,
        audience_rows=rows,
        rounds=settings.gate.bootstrap_rounds,
        seed=settings.training.seed,
    )
