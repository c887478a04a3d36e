"""The feature spec: which attributes and history features the model sees, declared once in conf.

`features:` in conf lists the users snapshot's attribute columns (each with its kind, numeric
or categorical, optionally derived from a raw column: days since a date, the domain of an
e-mail address) and the history features computed from sends and qualifying responses over
declared windows. The ETL, the validation suites, training, scoring, drift, what-if and the
benchmark references all read the spec; nothing else lists features.

The spec is checked when the settings load: a feature may not take the name of a pipeline
column, and may not be, or be derived from, the outcome, the arm, the send's own timestamp or
identity, an identifier or a PII column (a PII column feeds only a derivation that drops what
identifies a person, like the e-mail domain). validate-features checks the published tables
again, from their data (jobs.data.validate), independently of this list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The raw contract of sends and responses, and the label built from them: never a feature's source.
SEND_COLUMNS = ("send_id", "campaign_id", "customer_id", "sent_at", "arm")
RESPONSE_COLUMNS = ("response_id", "customer_id", "responded_at", "response_type")
# Columns the pipeline writes next to the features (feature tables, audience, validation frames).
PIPELINE_COLUMNS = frozenset(
    {*SEND_COLUMNS, *RESPONSE_COLUMNS, "label", "dt", "run_date", "as_of", "anchor_id", "anchor_day"}
    | {"snapshot_dt", "recommended_arm", "selected", "holdout", "expected_uplift", "expected_net_value"}
    | {"send_cost", "rank", "decile", "model_name", "model_version", "scored_at", "policy"}
    | {"unparsable", "source_file", "known_customer", "delivery_lag_days", "after_a_send"}
)
RESERVED_PREFIXES = ("p_", "uplift_", "raw_", "_", "label__", "expected_uplift__")
# Derivations of a raw column: the type the raw column is read as, the kind of feature it makes.
DERIVATIONS = {"days_since": ("date", "numeric"), "email_domain": ("string", "categorical")}
PII_SAFE_DERIVATIONS = {"email_domain"}  # what they keep cannot identify a person
RAW_TYPE_OF_KIND = {"numeric": "double", "categorical": "string"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Attribute(_Strict):
    """A feature taken from the users snapshot the anchor sees (the latest before its day)."""

    kind: Literal["numeric", "categorical"]
    column: str | None = None  # users column (our name, mapped in sources.users.columns); default: the feature's
    derive: Literal["days_since", "email_domain"] | None = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    max_levels: int = Field(default=1000, gt=1)  # categorical: more distinct values means an id, not a category
    bins: list[float] | None = None  # numeric: band edges for what-if segments (<name>_band)

    @model_validator(mode="after")
    def _consistent(self) -> Attribute:
        if self.derive and DERIVATIONS[self.derive][1] != self.kind:
            raise ValueError(f"derive: {self.derive} makes a {DERIVATIONS[self.derive][1]} feature, not {self.kind}")
        if self.kind == "categorical" and (self.min is not None or self.max is not None or self.bins):
            raise ValueError("min, max and bins apply to numeric features only")
        if self.bins and sorted(self.bins) != self.bins:
            raise ValueError("bins must be increasing")
        return self


class History(_Strict):
    """Features from the customer's sends and qualifying responses strictly before the anchor.

    Each list holds window lengths in days: n_sends: [30] makes n_sends_30d. The single-window
    features take one length, or null to leave them out.
    """

    n_sends: list[int] = []
    n_responses: list[int] = []
    response_rate: list[int] = []  # n_responses / n_sends over the window (null without a send)
    days_since_last_response: int | None = Field(default=None, gt=0)  # null without a response in the window
    previous_arm: int | None = Field(default=None, gt=0)  # arm of the latest send in the window ("none")

    @model_validator(mode="after")
    def _positive(self) -> History:
        for name in ("n_sends", "n_responses", "response_rate"):
            if any(w <= 0 for w in getattr(self, name)):
                raise ValueError(f"{name}: windows must be positive numbers of days")
        return self


@dataclass(frozen=True)
class FeatureColumn:
    """One column of the feature tables, as validation and training see it."""

    name: str
    kind: str  # numeric | categorical
    nullable: bool
    min: float | None = None
    max: float | None = None
    max_levels: int | None = None
    source: str = ""  # where it comes from, for reports and error messages


class FeatureSpec(_Strict):
    eligibility: str = "true"  # Spark SQL condition on the users snapshot: who may be scored
    attributes: dict[str, Attribute] = Field(min_length=1)
    history: History = History()
    pii: list[str] = []  # users columns that identify a person: never copied, only derived from
    identifiers: list[str] = []  # users columns that identify a row (besides customer_id): never features

    @model_validator(mode="after")
    def _no_collision_or_leak(self) -> FeatureSpec:
        problems = lineage_problems(self)
        if problems:
            raise ValueError("feature spec refused:\n  " + "\n  ".join(problems))
        return self

    def history_columns(self) -> list[FeatureColumn]:
        h, out = self.history, []
        out += [FeatureColumn(f"n_sends_{w}d", "numeric", False, 0, None, None, f"sends, {w} days") for w in h.n_sends]
        out += [
            FeatureColumn(f"n_responses_{w}d", "numeric", False, 0, None, None, f"qualifying responses, {w} days")
            for w in h.n_responses
        ]
        out += [
            FeatureColumn(f"response_rate_{w}d", "numeric", True, 0, None, None, f"responses per send, {w} days")
            for w in h.response_rate
        ]
        if h.days_since_last_response:
            w = h.days_since_last_response
            out.append(FeatureColumn("days_since_last_response", "numeric", True, 0, w, None, f"responses, {w} days"))
        if h.previous_arm:
            out.append(FeatureColumn("previous_arm", "categorical", False, None, None, None, "sends"))
        return out

    def attribute_columns(self) -> list[FeatureColumn]:
        return [
            FeatureColumn(
                name,
                a.kind,
                a.nullable,
                a.min,
                a.max,
                a.max_levels if a.kind == "categorical" else None,
                f"users.{self.source_column(name)}" + (f" ({a.derive})" if a.derive else ""),
            )
            for name, a in self.attributes.items()
        ]

    def columns(self) -> list[FeatureColumn]:
        """Every feature, attributes first, in the order of the feature tables."""
        return self.attribute_columns() + self.history_columns()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns()]

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self.columns() if c.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.columns() if c.kind == "categorical"]

    @property
    def lookback_days(self) -> int:
        """The longest history window: how far back the ETL reads sends and responses."""
        h = self.history
        windows = [*h.n_sends, *h.n_responses, *h.response_rate, h.days_since_last_response, h.previous_arm]
        return max([w for w in windows if w] or [0])

    def source_column(self, name: str) -> str:
        return self.attributes[name].column or name

    def users_columns(self) -> dict[str, str]:
        """The users snapshot's columns the spec reads (our names), with the Spark type each is read as."""
        types = {"customer_id": "string"}
        for name, a in self.attributes.items():
            column = self.source_column(name)
            wanted = DERIVATIONS[a.derive][0] if a.derive else RAW_TYPE_OF_KIND[a.kind]
            if types.setdefault(column, wanted) != wanted:
                raise ValueError(
                    f"users column '{column}' is read as {types[column]} by one feature, {wanted} by '{name}'"
                )
        return types

    def segments(self) -> dict[str, list[float]]:
        """Numeric attributes with declared bins: the what-if's `<name>_band` columns."""
        return {name: a.bins for name, a in self.attributes.items() if a.bins}


def lineage_problems(spec: FeatureSpec) -> list[str]:
    """Why a spec is refused: names that collide with pipeline columns, and leaky or PII sources."""
    problems = []
    names = [*spec.attributes, *(c.name for c in spec.history_columns())]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"feature '{name}' is declared twice (an attribute and a history feature)")
    for name in names:
        if name in PIPELINE_COLUMNS or name.startswith(RESERVED_PREFIXES):
            problems.append(
                f"feature '{name}' collides with a pipeline column (reserved: {sorted(PIPELINE_COLUMNS)} "
                f"and the prefixes {list(RESERVED_PREFIXES)}): rename it"
            )
    forbidden = {
        **{c: "the send itself (its arm, timestamp or identity)" for c in SEND_COLUMNS},
        **{c: "the outcome (the responses)" for c in RESPONSE_COLUMNS},
        "label": "the outcome",
        "customer_id": "an identifier",
        **{c: "an identifier" for c in spec.identifiers},
    }
    for name, a in spec.attributes.items():
        column = spec.source_column(name)
        if column in forbidden:
            problems.append(f"feature '{name}' is, or is derived from, '{column}': {forbidden[column]}")
        elif column in spec.pii and a.derive not in PII_SAFE_DERIVATIONS:
            problems.append(
                f"feature '{name}' copies the PII column '{column}'"
                + (f" (derive: {a.derive} keeps what identifies a person)" if a.derive else "")
                + f": PII may only feed {sorted(PII_SAFE_DERIVATIONS)}"
            )
    return problems


def raw_users_columns(spec: FeatureSpec) -> list[FeatureColumn]:
    """The users columns the spec reads, with the checks that apply to them as delivered.

    A derived feature's column is checked for nulls only (its range and levels are the
    derived feature's, checked on the feature tables).
    """
    out: dict[str, FeatureColumn] = {}
    for name, a in spec.attributes.items():
        column = spec.source_column(name)
        if a.derive:
            checks = FeatureColumn(column, "derived", a.nullable, source=f"users.{column}")
        else:
            levels = a.max_levels if a.kind == "categorical" else None
            checks = FeatureColumn(column, a.kind, a.nullable, a.min, a.max, levels, f"users.{column}")
        out.setdefault(column, checks)
    return list(out.values())


NUMERIC_TYPES = ["DoubleType", "FloatType", "LongType", "IntegerType", "ShortType", "DecimalType"]


def expectations(columns: list[FeatureColumn], *, types: bool = True) -> list[dict]:
    """Great Expectations expectations (suite JSON shape) for columns: nulls, ranges, levels, types."""
    out = []
    for c in columns:
        if not c.nullable:
            out.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c.name}})
        bounds = {k: v for k, v in (("min_value", c.min), ("max_value", c.max)) if v is not None}
        if bounds:
            out.append({"type": "expect_column_values_to_be_between", "kwargs": {"column": c.name, **bounds}})
        if c.max_levels:
            out.append(
                {
                    "type": "expect_column_unique_value_count_to_be_between",
                    "kwargs": {"column": c.name, "max_value": c.max_levels},
                    "notes": "more distinct values than max_levels: an identifier or free text, not a category",
                }
            )
        if types and c.kind in ("numeric", "categorical"):
            type_list = NUMERIC_TYPES if c.kind == "numeric" else ["StringType"]
            out.append(
                {
                    "type": "expect_column_values_to_be_in_type_list",
                    "kwargs": {"column": c.name, "type_list": type_list},
                }
            )
    return out
