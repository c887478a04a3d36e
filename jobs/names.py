"""The names that rooms share: columns of the scored, audience and results tables, report files,
the night's steps. A module that writes a name and one that reads it both ask here.

An (arm, outcome) pair is named by `key`: the arm alone for the primary outcome, `<arm>__<outcome>`
for a further one (an outcome's name holds no `__`, settings check it). Columns carry the key
behind a prefix: `p_<key>` (the outcome model's probability), `uplift_<key>` (the targeting
uplift), `uplift_high_<key>` (a guardrail's per-customer upper bound); per-outcome totals carry
the outcome behind `__`: `expected_uplift__<o>`, `excess__<o>`, `label__<o>`, `incremental__<o>`.
"""

from __future__ import annotations

SEPARATOR = "__"

# The assignment of a randomized campaign's send (an own audience's are jobs.model.policy.ASSIGNMENTS).
RANDOMIZED = "randomized"

# The night's steps in their order; the ones that open a Spark session.
STEPS = (
    "validate-raw",
    "etl",
    "validate-features",
    "train",
    "gate",
    "promote",
    "score",
    "export",
    "results",
    "drift",
    "report",
)
EXPORT_STEP = "export"  # publishes the send list for the e-mail tool; with approval, only once approved
SPARK_STEPS = ("validate-raw", "etl", "validate-features", "score", "results")

BUDGET_CURVE = "budget_curve"  # <reports>/run_date=<ds>/budget_curve.{csv,png}, written by the gate


def key(arm: str, outcome: str | None = None) -> str:
    """The name of an (arm, outcome) model and of its columns' suffix: the arm for the primary outcome."""
    return arm if outcome is None else f"{arm}{SEPARATOR}{outcome}"


def split_key(name: str) -> tuple[str, str | None]:
    """(arm, outcome) of a key; outcome None for the primary outcome."""
    arm, _, outcome = name.partition(SEPARATOR)
    return arm, outcome or None


def of_outcome(base: str, outcome: str | None) -> str:
    """base for the primary outcome, `<base>__<outcome>` for a further one."""
    return base if outcome is None else f"{base}{SEPARATOR}{outcome}"


def p_column(arm: str, outcome: str | None = None) -> str:
    return f"p_{key(arm, outcome)}"


def probability_arms(columns) -> list[str]:
    """The arms (control included) of the primary outcome's probability columns p_<arm> among columns."""
    return [c[len("p_") :] for c in columns if c.startswith("p_") and SEPARATOR not in c]


def uplift_column(arm: str, outcome: str | None = None) -> str:
    return f"uplift_{key(arm, outcome)}"


def raw_uplift_column(arm: str, outcome: str | None = None) -> str:
    """The learner's uplift before calibration and the constant arms (the ranking the diagnostics judge)."""
    return of_outcome(f"raw_uplift_{arm}", outcome)


def uplift_high_column(arm: str, outcome: str | None = None) -> str:
    return f"uplift_high_{key(arm, outcome)}"


def is_uplift_column(column: str) -> bool:
    return column.startswith("uplift_")


def label_column(outcome: str | None = None) -> str:
    return of_outcome("label", outcome)


def expected_uplift_column(outcome: str) -> str:
    return of_outcome("expected_uplift", outcome)


def excess_column(outcome: str) -> str:
    return of_outcome("excess", outcome)


# Lake tables (<lake>/<table>/run_date=YYYY-MM-DD/).
TRAINING_SET = "features/training"
SCORING_SET = "features/scoring"
AUDIENCE = "audience"
AUDIENCE_SUMMARY = "audience_summary"
EXPORTS = "exports"  # <lake>/exports/run_date=<d>/send_list.csv: the send lists handed to the e-mail tool
SEND_LIST = "send_list.csv"
RESULTS = "results"
RESULTS_POLICIES = "results_policies"
RESULTS_CALIBRATION = "results_calibration"

# Files of a night's report folder (<reports>/run_date=YYYY-MM-DD/); each step also writes <step>.json.
GATE_REPORT = "gate.json"
DRIFT_REPORT = "drift.json"
DRIFT_PAGE = "drift.html"
MONITORING_REPORT = "monitoring.json"
FAILURE_NOTE = "failure.txt"
FEATURES_VALIDATION = "features.json"  # under validation/

# MLflow: tags of a training run and of a model version, metrics per arm.
RUN_DATE_TAG = "run_date"
MODEL_VERSION_TAG = "model_version"
GATE_DECISION_TAG = "gate.decision"
GATE_REASONS_TAG = "gate.reasons"
GATE_POLICY_TAG = "gate.deployed_policy"
ARM_MODE_PARAM = "arm_mode"
LEARNER_PARAM = "learner"  # the training run's param: the learner of the selected candidate (jobs.model.learners)
SELECTION_ARTIFACT = "selection.json"  # the training run's record of every candidate's value and the calibration
CALIBRATION_PLOT = "calibration.png"  # the training run's picture of each arm's calibration


def arm_metric(name: str, arm: str) -> str:
    """An MLflow metric or parameter of one arm: qini.<arm>, qini_ci_low.<arm>, constant_uplift.<arm>."""
    return f"{name}.{arm}"


def monitoring_tag(name: str) -> str:
    """A tag the online monitoring sets on the champion's model version: monitoring.<name>."""
    return f"monitoring.{name}"


# Policies: the names the gate's and the results' tables give them, and the label an audience is
# published under (`model:<version>`, or `constant:<arm>` / `constant:none` while no model serves).
CHALLENGER = "challenger"
CHAMPION_POLICY = "champion"
AUDIENCE_POLICY = "audience"  # the policy an audience followed, in the results' tables
NO_ONE = "no one"


def everyone(arm: str) -> str:
    """The constant policy that sends arm to everyone (under the budget)."""
    return f"everyone gets {arm}"


def versus(name: str) -> str:
    """The name of the challenger's paired difference with policy name in the gate's table."""
    return f"{CHALLENGER} - {name}"


def versus_whom(difference: str) -> str:
    """The policy a `versus` difference is taken with."""
    return difference.removeprefix(f"{CHALLENGER} - ")


def policy_metric(name: str) -> str:
    """An MLflow metric name for a policy name ("everyone gets a" -> everyone_a, "no one" -> no_one)."""
    return name.replace(everyone(""), "everyone_").replace(" ", "_")


def model_policy(version: str | int) -> str:
    return f"model:{version}"


def constant_policy(arm: str) -> str:
    return f"constant:{arm}"


def is_constant_policy(label: str) -> bool:
    return label.startswith("constant:")


def policy_model_version(label: str) -> str | None:
    """The model version of a `model:<version>` label; None for a constant policy."""
    return label.split(":", 1)[1] if label.startswith("model:") else None
