"""Pipeline settings: YAML in conf/base, overlays from conf/local and $UPLIFT_CONF, validated.

A wrong key or a wrong type fails at load time with the file and the key named, so a typo
in a user's column mapping never turns into a silent empty join.

Overlays merge into the base mapping by mapping, key by key, except the values under the keys
in REPLACED_WHOLE: an overlay that sets one of them (the arms' maps, a column mapping, the
feature spec's attributes and history) replaces it entirely, so a user's experiment never
inherits the demo's arms or attributes. A per-arm map left inconsistent with the arms fails
at load time, naming the key.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.features import RESPONSE_COLUMNS, SEND_COLUMNS, FeatureSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # s3://, file:, mlflow-artifacts:/ ...
SOURCES = ("users", "sends", "responses")
# Spark types of the sends and responses contract; the users columns' come from the feature spec.
CONTRACT_TYPES = {
    "sends": dict(zip(SEND_COLUMNS, ("string", "string", "string", "timestamp", "string"), strict=True)),
    "responses": dict(zip(RESPONSE_COLUMNS, ("string", "string", "timestamp", "string"), strict=True)),
}
REPLACED_WHOLE = frozenset(
    {"expected_split", "campaign_splits", "cost_per_send", "columns", "attributes", "history", "outcomes"}
)
OUTCOME_NAME = r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$"  # no "__": it separates arm and outcome in column names


class UserError(Exception):
    """An error of the user's making (a setting, an input, a refused delivery): its message says
    what is wrong, where, and what to do, and `uplift` prints it without a traceback."""


class SettingsError(UserError, ValueError):
    """The settings do not validate: the message names each wrong key and the files read."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Strict):
    lake: Path
    reports: Path
    ground_truth: Path


class Source(_Strict):
    format: Literal["parquet", "csv"]
    # our name -> the name in the delivered files; a column not listed keeps its name
    columns: dict[str, str] = {}
    # daily: a delivery is expected on every run date; occasional: only when there is one
    delivery: Literal["daily", "occasional"] = "daily"
    # Compare a delivery's row count with the trailing average (validation.volume_*). Default:
    # for daily sources only; occasional ones (a campaign's decaying response tail, a weekly
    # snapshot) are only required to be non-empty unless this is set true.
    volume_band: bool | None = None

    def delivered(self, name: str) -> str:
        return self.columns.get(name, name)

    @property
    def checks_volume(self) -> bool:
        return self.delivery == "daily" if self.volume_band is None else self.volume_band


class Experiment(_Strict):
    control: str
    arms: list[str] = Field(min_length=1)
    expected_split: dict[str, float]
    # campaigns randomized with their own split (arms left out had no share); others use expected_split
    campaign_splits: dict[str, dict[str, float]] = {}
    attribution_window_days: int = Field(gt=0)
    qualifying_response_types: list[str] = Field(min_length=1)
    srm_p_value_min: float = Field(ge=0, lt=1)

    @property
    def all_arms(self) -> list[str]:
        return [self.control, *self.arms]

    def split_of(self, campaign_id: str) -> dict[str, float]:
        """The randomization split of a campaign: its own if declared, else expected_split."""
        return self.campaign_splits.get(campaign_id, self.expected_split)

    @model_validator(mode="after")
    def _split_covers_arms(self) -> Experiment:
        if self.control in self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms {self.arms} must be distinct and must not contain the control '{self.control}'")
        if set(self.expected_split) != set(self.all_arms):
            raise ValueError(
                f"expected_split keys {sorted(self.expected_split)} must be exactly "
                f"control + arms {sorted(self.all_arms)} (an overlay that sets arms sets expected_split too)"
            )
        for key, split in [("expected_split", self.expected_split)] + [
            (f"campaign_splits.{c}", split) for c, split in self.campaign_splits.items()
        ]:
            unknown = set(split) - set(self.all_arms)
            if unknown:
                raise ValueError(f"{key} names {sorted(unknown)}, not among control + arms {self.all_arms}")
            if abs(sum(split.values()) - 1.0) > 1e-6 or min(split.values()) < 0:
                raise ValueError(f"{key} shares must be non-negative and sum to 1, got {split}")
        return self


class Validation(_Strict):
    volume_tolerance: float = Field(gt=0)
    volume_days: int = Field(gt=0)
    volume_min_history: int = Field(gt=0)
    # The leakage guard: a feature whose single-feature AUC for the label, or for an arm vs
    # control, reaches this is refused (it is, or derives from, the outcome or the treatment).
    leakage_max_auc: float = Field(default=0.98, gt=0.5, le=1)


class Training(_Strict):
    seed: int
    holdout_fraction: float = Field(gt=0, lt=1)
    max_rows: int | None = Field(default=None, gt=0)
    # The training set's window: the latest matured sends, back to the day by which every arm
    # (control included) has at least this many; null = every matured send (jobs.data.etl).
    rows_per_arm: int | None = Field(default=None, gt=0)
    drivers_sample: int = Field(default=2000, gt=0)
    lightgbm: dict[str, float | int | str]
    # The candidate learners (modules of jobs.model.learners) and the LightGBM settings over lightgbm
    # their effect models try; the candidate whose calibrated policy is worth the most on the
    # selection rows (this share of the customers trained on) is the challenger (jobs.model.selection).
    learners: list[str] = Field(default_factory=lambda: ["t"], min_length=1)
    effect_grid: list[dict[str, float | int | str]] = Field(default_factory=lambda: [{}], min_length=1)
    selection_fraction: float = Field(default=0.2, gt=0, lt=1)
    # The rows the X- and DR-learners' effect models (and their cross-fitted outcome models) learn
    # from: a uniform sample of the customers of at most this many; null = all.
    effect_max_rows: int | None = Field(default=None, gt=0)


class Gate(_Strict):
    qini_floor: float
    bootstrap_rounds: int = Field(ge=20)
    # How much lower (net value per customer) the challenger's policy may be than the champion's.
    champion_tolerance: float = Field(ge=0)
    # "Beats the best constant policy": the paired difference's interval above zero, or its estimate.
    beats: Literal["interval", "point"] = "interval"


class Mlflow(_Strict):
    tracking_uri: str
    artifact_root: str
    experiment: str
    registered_model: str


class Guardrail(_Strict):
    """Limits an outcome's increase must stay within (jobs.model.policy)."""

    # Per customer: no customer gets an arm whose upper bound on this outcome's uplift exceeds this.
    max_uplift: float | None = Field(default=None, ge=0)
    # Campaign: the policy's expected total increase at most this share of its sends.
    max_increase_per_send: float | None = Field(default=None, ge=0)
    # The per-customer upper bound: the observed uplift's 95% upper limit among holdout rows in
    # the same quantile bin of predicted uplift (this many bins; jobs.model.train.guardrail_bounds).
    bound_bins: int = Field(default=5, ge=1, le=50)

    @model_validator(mode="after")
    def _some_limit(self) -> Guardrail:
        if self.max_uplift is None and self.max_increase_per_send is None:
            raise ValueError("a guardrail needs max_uplift, max_increase_per_send or both")
        return self


class Outcome(_Strict):
    """An outcome besides the primary response: its own label, value and, optionally, guardrail."""

    response_types: list[str] = Field(min_length=1)
    window_days: int = Field(gt=0)
    value: float  # per response; negative for harm (an unsubscribe costs future revenue)
    guardrail: Guardrail | None = None


class Targeting(_Strict):
    # The primary outcome (experiment.qualifying_response_types within attribution_window_days):
    # the value of one incremental response. Qini, drivers and expected_uplift are about it.
    value_per_response: float = Field(gt=0)
    # Further outcomes, by name (lower case, digits, single underscores): each one's labels, models
    # and uplifts sit beside the primary's (label__<name>, p_<arm>__<name>, uplift_<arm>__<name>).
    outcomes: dict[str, Outcome] = {}
    cost_per_send: dict[str, float]
    min_uplift: float
    max_sends: int | None = Field(default=None, gt=0)
    max_spend: float | None = Field(default=None, gt=0)
    holdout_share: float = Field(ge=0, lt=1)
    # Of the eligible customers (with a budget: of the budgeted sends), the random share assigned
    # across control and the arms the guardrails allow at experiment.expected_split, whatever the
    # model thinks: every arm stays observable for every kind of customer (jobs.model.policy.assign).
    exploration_share: float = Field(default=0.05, ge=0, lt=1)
    # Nights a customer on an audience's send list (any arm, control included) rests before being
    # listed again, so that no two of a customer's label windows overlap and each audience stays a
    # clean experiment. null: the longest label window (Settings.window_days); 0: no rest.
    contact_window_days: int | None = Field(default=None, ge=0)
    # required: the nightly DAG stops before the night's send list is exported until a campaign
    # manager approves it in Airflow; a rejection, or no answer within approval_timeout_hours, keeps
    # the previous export. none: the send list is exported as soon as the audience is scored.
    approval: Literal["none", "required"] = "none"
    approval_timeout_hours: float = Field(default=12, gt=0)

    @model_validator(mode="after")
    def _outcome_names(self) -> Targeting:
        for name in self.outcomes:
            if not re.match(OUTCOME_NAME, name):
                raise ValueError(f"outcome name '{name}': use lower case letters, digits and single underscores")
        return self

    @property
    def guardrails(self) -> dict[str, Guardrail]:
        return {name: o.guardrail for name, o in self.outcomes.items() if o.guardrail is not None}

    def values(self) -> dict[str | None, float]:
        """Value per response of every outcome: None is the primary one."""
        return {None: self.value_per_response, **{name: o.value for name, o in self.outcomes.items()}}


class Export(_Strict):
    postgres_dsn_env: str | None = None
    postgres_table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # The campaign id an audience's send list carries: a format string of the run date. Sends that
    # come back under it are the pipeline's own campaign (validated against that audience).
    campaign_id: str = "uplift_{run_date:%Y%m%d}"

    @model_validator(mode="after")
    def _campaign_id_names_the_run_date(self) -> Export:
        try:
            first, second = self.campaign_of(date(2026, 1, 1)), self.campaign_of(date(2026, 1, 2))
        except (KeyError, ValueError, IndexError) as err:
            raise ValueError(f"export.campaign_id '{self.campaign_id}': {err!r}; use {{run_date:%Y%m%d}}") from None
        if first == second:
            raise ValueError(f"export.campaign_id '{self.campaign_id}' must contain {{run_date...}}: one id per night")
        return self

    def campaign_of(self, run_date: date) -> str:
        """The campaign id of run_date's audience."""
        return self.campaign_id.format(run_date=run_date)


class Drift(_Strict):
    sample_rows: int = Field(gt=0)
    seed: int
    drifted_share_warn: float = Field(gt=0, le=1)
    drifted_share_fail: float = Field(gt=0, le=1)
    # One column whose distance (normed Wasserstein, Jensen-Shannon) reaches this fails a comparison.
    column_fail_score: float = Field(default=0.25, gt=0)
    on_fail: Literal["fail_run", "block_promotion"]


class Monitoring(_Strict):
    # Matured nights of the champion's own audiences that its realized value is judged on (pooled).
    window: int = Field(default=7, gt=0)
    # Audiences whose sends matured within this many nights are measured again every night, so
    # responses delivered late are counted (a recomputation replaces the audience's results).
    recompute_days: int = Field(default=7, ge=0)
    # rollback: the next night serves the previous champion (or, with none, the best constant
    # policy); flag: the champion is only tagged and reported.
    on_fail: Literal["rollback", "flag"] = "rollback"


class Spark(_Strict):
    master: str
    shuffle_partitions: int = Field(gt=0)
    driver_memory: str
    java_options: str = ""
    py_files: str | None = None
    remote: str | None = None
    event_log_dir: str | None = None


class Schedule(_Strict):
    cron: str
    timezone: str
    start_date: date
    task_timeout_minutes: float = Field(gt=0)
    retries: int = Field(ge=0)
    retry_delay_minutes: float = Field(gt=0)
    # The DAG's first task waits for the run date's daily deliveries this long after the run
    # starts, then fails the night naming the missing ones.
    delivery_wait_minutes: float = Field(default=240, ge=0)
    delivery_poke_seconds: float = Field(default=300, gt=0)
    # Who is e-mailed when a night fails (a missed delivery deadline included), through the Airflow
    # SMTP connection smtp_conn_id. Empty: no e-mail.
    notify_email: list[str] = []
    smtp_conn_id: str = "smtp_default"


class Settings(_Strict):
    paths: Paths
    sources: dict[Literal["users", "sends", "responses"], Source]
    experiment: Experiment
    validation: Validation
    features: FeatureSpec
    training: Training
    gate: Gate
    mlflow: Mlflow
    targeting: Targeting
    export: Export
    drift: Drift
    monitoring: Monitoring = Monitoring()
    spark: Spark
    schedule: Schedule

    @property
    def window_days(self) -> int:
        """The longest label window: how late a response may be delivered (a further outcome's label
        is null on the sends its window has not matured for, jobs.data.etl._timeline)."""
        windows = [o.window_days for o in self.targeting.outcomes.values()]
        return max([self.experiment.attribution_window_days, *windows])

    @property
    def contact_window_days(self) -> int:
        """Nights a listed customer rests (targeting.contact_window_days, by default the label window)."""
        days = self.targeting.contact_window_days
        return self.window_days if days is None else days

    def response_types(self) -> dict[str | None, list[str]]:
        """The response types of every outcome's label (None: the primary one)."""
        return {
            None: self.experiment.qualifying_response_types,
            **{name: o.response_types for name, o in self.targeting.outcomes.items()},
        }

    def raw_types(self, source: str) -> dict[str, str]:
        """A raw source's columns (our names) and the Spark type each is read as."""
        return self.features.users_columns() if source == "users" else CONTRACT_TYPES[source]

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        for source in SOURCES:
            if source not in self.sources:
                raise ValueError(f"sources.{source} is missing")
            unknown = set(self.sources[source].columns) - set(self.raw_types(source))
            if unknown:
                raise ValueError(
                    f"sources.{source}.columns maps {sorted(unknown)}, which nothing reads "
                    f"(the columns read are {sorted(self.raw_types(source))})"
                )
        arms, costs = set(self.experiment.arms), set(self.targeting.cost_per_send)
        if costs != arms:
            raise ValueError(
                f"targeting.cost_per_send must give a cost for exactly the arms {sorted(arms)}: "
                + ", ".join(
                    part
                    for part in (
                        f"missing {sorted(arms - costs)}" if arms - costs else "",
                        f"unknown {sorted(costs - arms)}" if costs - arms else "",
                    )
                    if part
                )
            )
        return self


def _merge(base: dict, overlay: dict) -> dict:
    """overlay on top of base: mappings merge key by key, except under REPLACED_WHOLE keys."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in REPLACED_WHOLE:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SettingsError(f"settings file {path} does not exist: check UPLIFT_CONF ({os.pathsep}-separated files)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SettingsError(f"settings file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return data


def _absolute(path: Path, root: Path) -> Path:
    return path if path.is_absolute() else (root / path).resolve()


# The demo's experiment, an overlay like a user's (`make demo` names it in UPLIFT_CONF; `uplift
# generate` and `uplift simulate`, the demo's own commands, always read it).
DEMO_CONF = PROJECT_ROOT / "conf" / "examples" / "demo.yml"


def config_files(conf_dir: Path | None = None, demo: bool = False) -> list[Path]:
    """The YAML files that make up the settings, in merge order (later wins): conf/base, the demo's
    experiment when asked for, conf/local/*.yml, then the files UPLIFT_CONF names."""
    conf_dir = conf_dir or PROJECT_ROOT / "conf"
    files = sorted((conf_dir / "base").glob("*.yml")) + ([DEMO_CONF] if demo else [])
    files += sorted((conf_dir / "local").glob("*.yml"))
    if extra := os.environ.get("UPLIFT_CONF"):
        files += [Path(p) for p in extra.split(os.pathsep) if p]
    return files


def report_dir(settings: Settings, run_date: date) -> Path:
    """Where the reports of run_date go: validation, gate, drift, step records, run report."""
    return settings.paths.reports / f"run_date={run_date.isoformat()}"


# Addresses an environment variable sets over the YAML (the Airflow DAG sets them from its connections).
ADDRESS_ENV = {
    "UPLIFT_SPARK_REMOTE": ("spark", "remote"),
    "UPLIFT_MLFLOW_TRACKING_URI": ("mlflow", "tracking_uri"),
}


def load_settings(conf_dir: Path | None = None, demo: bool = False) -> Settings:
    """Merge and validate the settings; relative paths become absolute under UPLIFT_HOME.

    The variables of ADDRESS_ENV, when set, replace the addresses the files give. demo: merge the
    demo's experiment (DEMO_CONF) over conf/base, as the demo's own commands do."""
    raw: dict = {}
    files = config_files(conf_dir, demo)
    for path in files:
        raw = _merge(raw, _read_yaml(path))
    if not raw.get("experiment", {}).get("arms"):
        raise SettingsError(
            f"no experiment declared in {', '.join(str(p) for p in files)}: conf/base holds the product's "
            "defaults only. Declare yours in an overlay (conf/local/<name>.yml, or a file named in UPLIFT_CONF): "
            "experiment (control, arms, expected_split, attribution_window_days, qualifying_response_types), "
            "features (attributes, history) and targeting (value_per_response, cost_per_send; outcomes if any), "
            f"as docs/own-data.md shows. For the demo: UPLIFT_CONF={DEMO_CONF}"
        )
    for variable, (section, key) in ADDRESS_ENV.items():
        if value := os.environ.get(variable):
            raw.setdefault(section, {})[key] = value
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as err:
        names = ", ".join(str(p) for p in files)
        raise SettingsError(f"invalid pipeline settings in {names}: {_problems(err)}") from None
    root = Path(os.environ.get("UPLIFT_HOME", PROJECT_ROOT))
    paths = Paths(**{k: _absolute(v, root) for k, v in settings.paths.model_dump().items()})
    mlflow = settings.mlflow.model_copy(
        update={
            "tracking_uri": _sqlite_absolute(settings.mlflow.tracking_uri, root),
            "artifact_root": _path_or_uri(settings.mlflow.artifact_root, root),
        }
    )
    spark = settings.spark.model_copy(
        update={
            "py_files": _path_or_uri(settings.spark.py_files, root),
            "event_log_dir": _path_or_uri(settings.spark.event_log_dir, root),
        }
    )
    return settings.model_copy(update={"paths": paths, "mlflow": mlflow, "spark": spark})


def _problems(err: ValidationError) -> str:
    """Each wrong key of a validation error on one line: `key.path: what is wrong (got value)`."""
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "settings"
        got = e.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
        problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(problems)


def _path_or_uri(value: str | None, root: Path) -> str | None:
    """A URI as given (s3://, hdfs://, file:...), a relative path made absolute under root."""
    if value is None or URI_SCHEME.match(value):
        return value
    return str(_absolute(Path(value), root))


def _sqlite_absolute(uri: str, root: Path) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(_absolute(Path(uri[len(prefix) :]), root))
    return uri
