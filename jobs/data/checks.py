"""The validation's statistics, apart from Spark and Great Expectations: what a check outcome is,
the sample-ratio-mismatch test of a randomized split, the covariate balance of randomized rows
(standardized mean difference with a significance test, from per-group moments), and the
leakage guard's single-feature separation (AUC) on a pandas sample.

jobs.data.validate gathers the figures with Spark and calls these; they take plain counts,
moments and frames, so they are tested on numbers alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from jobs.names import RANDOMIZED
from jobs.settings import Experiment, Settings, UserError

MAX_SMD = 0.1
# The training rows whose arm was drawn at one split for everyone: a randomized campaign's sends.
# An own audience's targeted sends differ from control by design; its holdout is random only among
# the customers the model selected; its explore rows draw among the arms the guardrails allow each
# customer, so where a guardrail forbids an arm their shares and features depart from the split by
# design too. Own campaigns' routes are tested against their audience in validate_raw instead.
RANDOMIZED_ASSIGNMENTS = (RANDOMIZED,)
MIN_LEVEL_ROWS = 20  # rarer categorical levels are pooled before scoring a level by its label rate


class ValidationFailed(UserError, RuntimeError):
    """An input failed its checks; nothing downstream may run."""


@dataclass
class CheckOutcome:
    input: str
    suite: str
    success: bool
    evaluated: int
    failures: list[str] = field(default_factory=list)


def randomization_check(
    input_name: str, counts: dict[str, dict[str, int]], exp: Experiment, checks: int = 1
) -> tuple[CheckOutcome, dict]:
    """The sample-ratio-mismatch checks of arm counts per campaign: one outcome, and each test.

    Each campaign is tested against its own split at `srm_p_value_min / campaigns` (Bonferroni),
    so the chance of a false alarm on a night stays `srm_p_value_min` however many campaigns
    there are. `checks` counts the randomization checks the outcome will report.
    """
    level = exp.srm_p_value_min / max(1, len(counts))
    tests = {
        campaign: sample_ratio_mismatch(arm_counts, exp.split_of(campaign)) for campaign, arm_counts in counts.items()
    }
    outcome = CheckOutcome(input_name, "randomization", True, checks)
    for campaign, srm in sorted(tests.items(), key=lambda item: str(item[0])):
        if srm["p_value"] < level:
            outcome.success = False
            outcome.failures.append(
                f"sample ratio mismatch in campaign '{campaign}': arm counts {srm['observed']} vs expected split "
                f"{exp.split_of(campaign)} (chi2={srm['chi2']:.1f}, p={srm['p_value']:.2g} < {level:.2g})"
            )
    return outcome, {"p_value_min": level, "campaigns": tests}


def sample_ratio_mismatch(arm_counts: dict[str, int], expected_split: dict[str, float]) -> dict:
    """Chi-square test of observed arm counts against the expected randomization split.

    An arm the split gives no share must have no sends (p = 0 when it has some); a split with a
    single arm has nothing to test (p = 1).
    """
    arms = sorted(set(expected_split) | set(arm_counts), key=str)  # a truncated row may have no arm
    observed = {arm: int(arm_counts.get(arm, 0)) for arm in arms}
    shared = [arm for arm in arms if expected_split.get(arm, 0) > 0]
    if any(observed[arm] for arm in arms if arm not in shared):
        return {"observed": observed, "chi2": float("inf"), "p_value": 0.0}
    total = sum(observed[arm] for arm in shared)
    if len(shared) < 2 or total == 0:
        return {"observed": observed, "chi2": 0.0, "p_value": 1.0}
    scale = sum(expected_split[arm] for arm in shared)
    expected = [expected_split[arm] / scale * total for arm in shared]
    from scipy import stats

    statistic, p_value = stats.chisquare([observed[arm] for arm in shared], expected)
    return {"observed": observed, "chi2": float(statistic), "p_value": float(p_value)}


def randomized_groups(moments: list[dict]) -> list[dict]:
    """The groups of _moments_by_campaign(..., "assignment") whose rows are randomized."""
    return [row for row in moments if row["assignment"] in RANDOMIZED_ASSIGNMENTS]


def counts_by_campaign(moments: list[dict]) -> dict[str, dict[str, int]]:
    """Rows per campaign and arm, from _moments_by_campaign (summed over its further keys)."""
    counts: dict[str, dict[str, int]] = {}
    for row in moments:
        by_arm = counts.setdefault(row["campaign_id"], {})
        by_arm[row["arm"]] = by_arm.get(row["arm"], 0) + row["count"]
    return counts


def _pooled(groups: list[dict], feature: str) -> tuple[int, float, float]:
    """Non-null count, mean and sample variance of feature over groups, from each group's count,
    mean and variance (Chan's combination: the arm's own figures, without a second pass); 0.0
    where undefined."""
    groups = [g for g in groups if g[f"{feature}__n"]]
    n = sum(g[f"{feature}__n"] for g in groups)
    if n == 0:
        return 0, 0.0, 0.0
    mean = sum(g[f"{feature}__n"] * g[f"{feature}__mean"] for g in groups) / n
    m2 = sum(
        (g[f"{feature}__n"] - 1) * (g[f"{feature}__var"] or 0.0)
        + g[f"{feature}__n"] * (g[f"{feature}__mean"] - mean) ** 2
        for g in groups
    )
    return n, mean, (m2 / (n - 1) if n > 1 else 0.0)


def balance_tests(moments: list[dict], control: str, numeric: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Each arm against control, per numeric feature, from _moments_by_campaign's groups pooled over
    campaigns: the standardized mean difference (`smd`: the difference of means over the root of
    the mean of the two sample variances) and the two-sided p-value of the difference of means
    (`p_value`: Welch's z = (mean_a - mean_c) / sqrt(var_a / n_a + var_c / n_c) over the non-null
    rows, against the normal). Fewer than two non-null rows on a side, or no spread on both,
    measure nothing: p = 1."""
    from scipy import stats

    by_arm: dict[str, list[dict]] = {}
    for row in moments:
        by_arm.setdefault(row["arm"], []).append(row)
    if control not in by_arm:
        return {}
    base = {feature: _pooled(by_arm[control], feature) for feature in numeric}
    by_arm_feature: dict[str, dict[str, dict[str, float]]] = {}
    for arm, groups in by_arm.items():
        if arm == control:
            continue
        by_arm_feature[arm] = {}
        for feature in numeric:
            (n, mean, var), (base_n, base_mean, base_var) = _pooled(groups, feature), base[feature]
            pooled_var = (var + base_var) / 2
            error = (var / n + base_var / base_n) ** 0.5 if min(n, base_n) > 1 else 0.0
            by_arm_feature[arm][feature] = {
                "smd": abs(mean - base_mean) / pooled_var**0.5 if pooled_var > 0 else 0.0,
                "p_value": float(2 * stats.norm.sf(abs(mean - base_mean) / error)) if error > 0 else 1.0,
            }
    return by_arm_feature


def training_randomization(
    input_name: str, moments: list[dict], exp: Experiment, numeric: list[str]
) -> tuple[CheckOutcome, dict]:
    """The training set's sample-ratio-mismatch tests and covariate balance on its randomized rows,
    from moments (_moments_by_campaign by assignment): one outcome, which counts the leakage guard's
    check too (its caller adds that verdict), and each check's summary.

    An (arm, feature) pair is refused when its SMD is above MAX_SMD and its difference of means is
    significant: p below `experiment.srm_p_value_min` over the pairs tested (Bonferroni), the one
    false-alarm level of the randomization checks. The SMD alone refuses healthy nights on a sparse
    feature: at 100 non-null rows a side its standard error is about sqrt(2 / 100) = 0.14, so chance
    often takes it past 0.1. On many rows an SMD above 0.1 is significant anyway: the rule is the SMD's.
    """
    randomized = randomized_groups(moments)
    outcome, srm = randomization_check(input_name, counts_by_campaign(randomized), exp, checks=3)
    balance = balance_tests(randomized, exp.control, numeric)
    pairs = sum(len(by_feature) for by_feature in balance.values())
    level = exp.srm_p_value_min / max(1, pairs)
    refused = [
        f"{arm}.{feature} (SMD {pair['smd']:.3f}, p={pair['p_value']:.2g})"
        for arm, by_feature in sorted(balance.items(), key=lambda item: str(item[0]))
        for feature, pair in by_feature.items()
        if pair["smd"] > MAX_SMD and pair["p_value"] < level
    ]
    if refused:
        outcome.success = False
        outcome.failures.append(
            f"covariate imbalance on the randomized rows (standardized mean difference > {MAX_SMD} vs control, "
            f"and the difference of means significant at p < {level:.2g}: experiment.srm_p_value_min over "
            f"{pairs} arm-feature pairs): " + ", ".join(refused)
        )
    return outcome, {"sample_ratio_mismatch": srm, "covariate_balance": {"p_value_min": level, "arms": balance}}


def separation(score: pd.Series, target: np.ndarray) -> float:
    """Single-feature AUC of score for a binary target, folded to >= 0.5 (either direction).

    The Mann-Whitney form, ties at their average rank: sklearn's roc_auc_score to the last
    digits, in a quarter of its time (measured on 100k rows), which the sample pays per column
    and arm.
    """
    positive = target == 1
    n_positive = int(positive.sum())
    n_negative = len(target) - n_positive
    if n_positive == 0 or n_negative == 0:
        return 0.5
    ranks = score.rank(method="average").to_numpy()
    auc = (ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    return float(max(auc, 1 - auc))


def _as_score(values: pd.Series, target: np.ndarray, kind: str) -> pd.Series:
    """A feature as a number that ranks rows: itself (missing lowest), or its level's target rate."""
    if kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        return numbers.fillna(numbers.min() - 1 if numbers.notna().any() else 0.0)
    levels = values.astype("string").fillna("<null>")
    sizes = levels.map(levels.value_counts())
    levels = levels.where(sizes >= MIN_LEVEL_ROWS, "<rare>")
    return levels.map(pd.Series(target, index=levels.index).groupby(levels).mean())


def leakage_scores(sample: pd.DataFrame, settings: Settings) -> tuple[list[str], dict]:
    """leakage_in_data on its sample (pandas only: it may run beside the suites' Spark jobs): the
    label against every row, an arm against control on the randomized rows only."""
    exp, limit = settings.experiment, settings.validation.leakage_max_auc
    kinds = {c.name: c.kind for c in settings.features.columns()}
    candidates = [c for c in sample.columns if c not in ("label", "arm", "assignment")]
    label = sample["label"].to_numpy().astype(int)
    randomized = sample["assignment"].isin(RANDOMIZED_ASSIGNMENTS).to_numpy()
    scores: dict[str, dict[str, float]] = {}
    problems = []
    for column in candidates:
        kind = kinds.get(column) or ("numeric" if pd.api.types.is_numeric_dtype(sample[column]) else "categorical")
        scores[column] = {"label": separation(_as_score(sample[column], label, kind), label)}
        for arm in exp.arms:
            rows = randomized & sample["arm"].isin([arm, exp.control]).to_numpy()
            treated = (sample["arm"].to_numpy()[rows] == arm).astype(int)
            if rows.sum() >= 2 * MIN_LEVEL_ROWS:
                values = sample[column][rows].reset_index(drop=True)
                scores[column][arm] = separation(_as_score(values, treated, kind), treated)
        worst = max(scores[column], key=scores[column].get)
        if scores[column][worst] >= limit:
            what = "the outcome (label)" if worst == "label" else f"the treatment (arm '{worst}' vs control)"
            problems.append(
                f"feature '{column}' separates {what} almost perfectly (single-feature AUC "
                f"{scores[column][worst]:.3f} >= validation.leakage_max_auc {limit} on {len(sample):,} sampled "
                "training rows): it is, or is derived from, it. Remove it from features.attributes, or fix the "
                "delivery that carries it (an attribute snapshot must not know the send or its outcome)."
            )
    return problems, scores


def own_shares(
    listed: dict[str, dict[str, int]], matched: dict[str, dict[str, int]], level: float, tolerance: float
) -> tuple[list[str], dict]:
    """Per own campaign, the routes that came back (matched) against those its audience listed: a
    sample-ratio test at `level` and the volume floor (1 - tolerance). Returns (failures, summary)."""
    failures: list[str] = []
    summary: dict = {"p_value_min": level, "campaigns": {}}
    for campaign in sorted(matched):
        expected = listed.get(campaign, {})
        total, came_back = sum(expected.values()), sum(matched[campaign].values())
        if not total:  # an audience that listed no one: nothing may come back (an unknown customer else)
            summary["campaigns"][campaign] = {"listed": expected, "delivered": came_back}
            continue
        srm = sample_ratio_mismatch(matched[campaign], {route: n / total for route, n in expected.items()})
        summary["campaigns"][campaign] = {**srm, "listed": expected, "delivered": came_back}
        if srm["p_value"] < level:
            failures.append(
                f"own campaign '{campaign}': its routes came back as {matched[campaign]} of the {expected} its "
                f"audience listed (chi2={srm['chi2']:.1f}, p={srm['p_value']:.2g} < {level:.2g}): the e-mail tool "
                "sent a different share of the target, holdout or explore rows than listed"
            )
        if came_back < (1 - tolerance) * total:
            failures.append(
                f"own campaign '{campaign}': {came_back:,} of the {total:,} listed sends came back, fewer than "
                f"{1 - tolerance:.0%} (validation.volume_tolerance {tolerance}): a partial delivery"
            )
    return failures, summary
