"""Validation of the raw deliveries and the feature tables with Great Expectations 1.x.

Suites live in `expectations/<suite>.json` (the contract's checks); the per-column checks of
the users attributes and the features (type, nulls, ranges, cardinality) are generated from
the feature spec and appended (jobs.features.expectations); parameters that depend on conf
(the arm values, the column set) are passed at run time. A source whose `delivery` is
`occasional` may have no delivery on the run date; a `daily` one may not. Every run writes a JSON summary and Great
Expectations Data Docs under `<reports>/run_date=<ds>/validation/`. A failure raises
`ValidationFailed` naming the input, each failed expectation and a few offending rows, and
the caller stops before anything downstream is written.

Randomization is checked here too: a sample-ratio-mismatch test per campaign (chi square of
its arm counts against its split), on each day's sends and on the training set's randomized
rows, and their covariate balance (each numeric feature, arm vs control: refused when its
standardized mean difference is above 0.1 and the difference is significant).

The leakage guard on the training set works from the data, not from the feature list: a
feature that separates the label (on every row), or one arm from control (on the randomized
rows), almost perfectly (single-feature AUC at or above `validation.leakage_max_auc` on a
sample) is, or is derived from, the outcome or the treatment, and fails validation by name.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import features
from jobs.etl import RANDOMIZED, SCORING_KEYS, training_keys
from jobs.lake import assignment_records, own_campaigns, partition_dates, raw_partitions, read_partition, read_raw
from jobs.settings import PROJECT_ROOT, SOURCES, Experiment, Settings, report_dir
from jobs.tlearner import label_column

if TYPE_CHECKING:
    import great_expectations as gx

log = logging.getLogger(__name__)
SUITES_DIR = PROJECT_ROOT / "expectations"
MAX_SMD = 0.1
# The training rows whose arm was drawn at one split for everyone: a randomized campaign's sends.
# An own audience's targeted sends differ from control by design; its holdout is random only among
# the customers the model selected; its explore rows draw among the arms the guardrails allow each
# customer, so where a guardrail forbids an arm their shares and features depart from the split by
# design too. Own campaigns' routes are tested against their audience in validate_raw instead.
RANDOMIZED_ASSIGNMENTS = (RANDOMIZED,)
SAMPLE_ROWS = 5
LEAKAGE_SAMPLE_ROWS = 200_000
MIN_LEVEL_ROWS = 20  # rarer categorical levels are pooled before scoring a level by its label rate

# Great Expectations takes seconds to import (3.3 s on the bench's Xeon, 5.6 s on its EPYC: its
# expectation modules load scipy.stats, altair, ...). Each validation step imports it in a thread
# while its own Spark work (caching the inputs, the checks outside the suites) runs on the
# server, and waits for it only when the suites start.
_gx_import: threading.Thread | None = None


def preload_gx() -> None:
    """Start importing Great Expectations in the background (once per process)."""
    global _gx_import
    if _gx_import is None:
        # Two threads importing at once can deadlock (Python then raises) when each waits for a
        # module the other is loading. Great Expectations imports pyspark; the Spark Connect client
        # this thread goes on to load is loaded first, so the two share no module in flight.
        importlib.import_module("pyspark.sql.connect.session")
        _gx_import = threading.Thread(
            target=lambda: importlib.import_module("great_expectations"), name="import-gx", daemon=True
        )
        _gx_import.start()


def _gx() -> ModuleType:
    """The great_expectations module, once the background import (if any) is done.

    An import that failed in the thread is repeated here, so its error is raised where it is used.
    """
    if _gx_import is not None:
        _gx_import.join()
    return importlib.import_module("great_expectations")


class ValidationFailed(RuntimeError):
    """An input failed its checks; nothing downstream may run."""


@dataclass
class CheckOutcome:
    input: str
    suite: str
    success: bool
    evaluated: int
    failures: list[str] = field(default_factory=list)


def load_suite(name: str, generated: list[dict] | None = None) -> gx.ExpectationSuite:
    """The suite in expectations/<name>.json, plus expectations generated from the feature spec."""
    spec = json.loads((SUITES_DIR / f"{name}.json").read_text())
    return _gx().ExpectationSuite(
        name=spec["name"], expectations=[*spec["expectations"], *(generated or [])], meta=spec.get("meta")
    )


def _failed_part(suite: gx.ExpectationSuite, result) -> gx.ExpectationSuite:
    """A suite of the expectations of suite that failed in result, named `<suite>.failed`."""
    failed = {item.expectation_config.id for item in result.results if not item.success}
    return _gx().ExpectationSuite(
        name=f"{suite.name}.failed",
        expectations=[
            {k: v for k, v in e.configuration.to_json_dict().items() if k not in ("id", "rendered_content")}
            for e in suite.expectations
            if e.id in failed
        ],
        meta=suite.meta,
    )


def hidden_columns(settings: Settings) -> set[str]:
    """PII never goes into an error message or a report: the declared columns, as read and as delivered."""
    return {c for name in settings.features.pii for c in (name, f"raw_{name}")}


def _context(docs_dir: Path):
    gx = _gx()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="validation",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        },
    )
    return context


def _offending_rows(frame: DataFrame, expectation: dict, result: dict, hidden: set[str]) -> list[dict]:
    column = expectation["kwargs"].get("column")
    values = result.get("partial_unexpected_list") or []
    if not column or not values or column in hidden:
        return []
    present = [v for v in values if v is not None]
    condition = F.col(column).isin(present) if present else F.lit(False)
    if len(present) < len(values):
        condition = condition | F.col(column).isNull()
    visible = [c for c in frame.columns if c not in hidden]
    rows = frame.where(condition).select(*visible).limit(SAMPLE_ROWS).collect()
    return [{k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in r.asDict().items()} for r in rows]


def run_suite(
    context,
    frame: DataFrame,
    input_name: str,
    suite_name: str,
    parameters: dict,
    generated: list[dict] | None = None,
    hidden: set[str] = frozenset(),
) -> CheckOutcome:
    """Run one suite on a Spark DataFrame; describe every failed expectation (never PII values).

    The first pass asks only pass or fail (`BOOLEAN_ONLY`): Great Expectations then computes each
    expectation's counts as aggregates, bundled into one Spark job per domain. Only the
    expectations that failed run again, as the suite `<suite>.failed` with `SUMMARY`, for the
    counts and the sample of unexpected values the error names: a good night pays for the
    verdict, a bad one for the explanation of what failed (both runs are in the Data Docs).
    """
    source = context.data_sources.add_or_update_spark(input_name.replace("/", "_"))

    def validate(suite: gx.ExpectationSuite, result_format: str):
        batch = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe("run")
        definition = context.validation_definitions.add(
            _gx().ValidationDefinition(name=suite.name, data=batch, suite=context.suites.add(suite))
        )
        return definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            result_format={"result_format": result_format},
        )

    suite = load_suite(suite_name, generated)
    verdict = validate(suite, "BOOLEAN_ONLY")
    result = verdict if verdict.success else validate(_failed_part(suite, verdict), "SUMMARY")
    outcome = CheckOutcome(input_name, suite_name, bool(verdict.success), len(verdict.results))
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config.to_json_dict()
        kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id",)}
        observed = item.result or {}
        if kwargs.get("column") in hidden:  # say what failed, not the values
            observed = {k: v for k, v in observed.items() if "unexpected_list" not in k and "index" not in k}
        detail = (
            f"{observed['unexpected_count']} unexpected of {observed.get('element_count')} rows, "
            f"e.g. {observed.get('partial_unexpected_list', [])[:SAMPLE_ROWS]}"
            if "unexpected_count" in observed
            else f"observed {observed.get('observed_value')}"
        )
        if item.exception_info and item.exception_info.get("raised_exception"):
            detail = f"could not be evaluated: {item.exception_info.get('exception_message')}"
        line = f"{config['type']}({kwargs}): {detail}"
        rows = _offending_rows(frame, config, observed, hidden)
        if rows:
            line += "\n      offending rows: " + "\n                      ".join(str(r) for r in rows)
        outcome.failures.append(line)
    return outcome


def _write_summary(path: Path, outcomes: list[CheckOutcome], extra: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "success": all(o.success for o in outcomes),
        "checks": [o.__dict__ for o in outcomes],
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2, default=str))


def _raise_if_failed(outcomes: list[CheckOutcome], run_date: date, summary: Path) -> None:
    failed = [o for o in outcomes if not o.success]
    if not failed:
        return
    lines = [f"validation failed for run_date={run_date} (full report: {summary}):"]
    for outcome in failed:
        lines.append(
            f"  input '{outcome.input}', suite '{outcome.suite}': "
            f"{len(outcome.failures)} of {outcome.evaluated} checks failed"
        )
        lines.extend(f"    - {failure}" for failure in outcome.failures)
    lines.append("Nothing downstream was written; fix the delivery (or the conf mapping) and rerun.")
    raise ValidationFailed("\n".join(lines))


def _with_raw_checks(frame: DataFrame, timestamp: str, known: DataFrame) -> DataFrame:
    """frame with its delivery lag and whether a users snapshot knows its customer (known: distinct ids)."""
    return (
        frame.withColumn("delivery_lag_days", F.datediff("dt", F.to_date(timestamp)))
        .join(known.withColumn("known_customer", F.lit(True)), "customer_id", "left")
        .fillna(False, subset=["known_customer"])
    )


def volume_band(
    spark: SparkSession, settings: Settings, source: str, run_date: date, own: tuple[str, ...] = ()
) -> tuple[int, int | None]:
    """(min, max) rows of run_date's delivery: non-empty, and within `validation.volume_tolerance`
    of the average of the earlier deliveries in `validation.volume_days` (once there are
    `validation.volume_min_history` of them), for sources that check volume (`volume_band`).

    own: the pipeline's own campaign ids, whose sends the earlier deliveries' counts leave out
    (their volume follows their audience, which `_own_campaigns_check` holds them to)."""
    cfg = settings.validation
    if not settings.sources[source].checks_volume:
        return 1, None
    window = {run_date - timedelta(days=n) for n in range(1, cfg.volume_days + 1)}
    dated = {date.fromisoformat(f.name[3:]) for f in raw_partitions(settings, source, run_date)} & window
    if len(dated) < cfg.volume_min_history:
        return 1, None
    delivered = read_raw(spark, settings, source, run_date, days=dated)
    if own:
        delivered = delivered.where(~F.col("campaign_id").isin(list(own)))
    earlier = delivered.groupBy("dt").count().collect()
    if len(earlier) < cfg.volume_min_history:
        return 1, None
    average = sum(row["count"] for row in earlier) / len(earlier)
    return max(1, int(average * (1 - cfg.volume_tolerance))), int(average * (1 + cfg.volume_tolerance)) + 1


def _delivery_day(settings: Settings, source: str, run_date: date) -> date:
    """The delivery of a source that run_date validates: its own, or an occasional source's latest.

    A `daily` source must have a delivery dated run_date (read_raw names it when missing); an
    `occasional` one without it is checked on its latest delivery (the one the ETL reads as
    the newest), so a one-off snapshot is validated whatever night first reads it.
    """
    folders = raw_partitions(settings, source, run_date)
    if settings.sources[source].delivery == "daily" or not folders:
        return run_date
    return date.fromisoformat(folders[-1].name[3:])


def validate_raw(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Validate the run date's delivery of every source; raise ValidationFailed on any failure.

    For a source with `delivery: occasional` and nothing delivered on the run date, its latest
    delivery is checked instead (named with its own dt); a `daily` one without a delivery fails
    (MissingInputError).
    """
    preload_gx()
    out = report_dir(settings, run_date) / "validation"
    exp = settings.experiment
    days = {source: _delivery_day(settings, source, run_date) for source in SOURCES}
    today = {
        source: read_raw(spark, settings, source, day, only_run_date=True, check_types=True)
        for source, day in days.items()
    }
    # Only the customers the day's sends and responses name are looked up, first in the day's users
    # snapshot; the history of snapshots is scanned (its customer_id column, against a broadcast of
    # them) only for those that one does not hold: not a distinct over every snapshot.
    named = today["sends"].select("customer_id").union(today["responses"].select("customer_id")).distinct()
    in_users = today["users"].select("customer_id")
    known = named.join(in_users, "customer_id", "left_semi")
    elsewhere = named.join(in_users, "customer_id", "left_anti").persist()
    if not elsewhere.isEmpty():
        earlier = read_raw(spark, settings, "users", run_date).select("customer_id")
        known = known.union(earlier.join(F.broadcast(elsewhere), "customer_id", "left_semi").distinct())
    known = known.persist()
    # A response must follow a send: the customer's first send, over the earlier deliveries and
    # today's as the check typed it (a timestamp delivered as text today is reported as such, and
    # must not break the read of the history under the earlier files' types).
    sends = today["sends"].select("customer_id", "sent_at")
    earlier_days = {date.fromisoformat(f.name[3:]) for f in raw_partitions(settings, "sends", run_date)} - {
        days["sends"]
    }
    if earlier_days:
        sends = read_raw(spark, settings, "sends", run_date, days=earlier_days).select(*sends.columns).union(sends)
    first_send = (
        sends.join(F.broadcast(today["responses"].select("customer_id").distinct()), "customer_id", "left_semi")
        .groupBy("customer_id")
        .agg(F.min("sent_at").alias("_first_send"))
    )
    responses = _with_raw_checks(today["responses"], "responded_at", known).join(first_send, "customer_id", "left")
    # Every expectation is a Spark job over its frame: join the checks in once, not per expectation.
    frames = {
        "users": today["users"].persist(),
        "sends": _with_raw_checks(today["sends"], "sent_at", known).persist(),
        "responses": responses.withColumn(
            "after_a_send", F.coalesce(F.col("_first_send") < F.col("responded_at"), F.lit(False))
        )
        .drop("_first_send")
        .persist(),
    }
    generated = {"users": features.expectations(features.raw_users_columns(settings.features), types=False)}
    hidden = hidden_columns(settings)
    outcomes = []
    try:
        # The work that needs no Great Expectations first, while it imports (preload_gx): the
        # deliveries into the cache, the volume bands, the arm counts, the response types. These
        # are small jobs, one or a few tasks each: submitted together, they share the cores.
        own = own_campaigns(settings, run_date)
        with ThreadPoolExecutor(4, thread_name_prefix="raw-checks") as pool:
            counted = {source: pool.submit(frame.count) for source, frame in frames.items()}
            banded = {
                source: pool.submit(
                    volume_band, spark, settings, source, days[source], tuple(own) if source == "sends" else ()
                )
                for source in SOURCES
            }
            arms_counted = pool.submit(_arm_counts_by_campaign, frames["sends"])
            types_seen = pool.submit(response_types_delivered, spark, settings, run_date)
            rows = {source: future.result() for source, future in counted.items()}
            bands = {source: future.result() for source, future in banded.items()}
            arm_counts, response_types = arms_counted.result(), types_seen.result()
        own = {campaign: own[campaign] for campaign in arm_counts if campaign in own}  # tonight's own campaigns
        randomized = {campaign: counts for campaign, counts in arm_counts.items() if campaign not in own}
        # Last night's audience may be sent today, or not at all, and may have listed no one.
        due = own_campaigns(settings, run_date - timedelta(days=1), since=run_date - timedelta(days=1))
        if own or due:
            own_rows = sum(sum(arm_counts[campaign].values()) for campaign in own)
            bands["sends"] = _with_own_sends(bands["sends"], bool(randomized), own_rows)
        if _own_responses_due(settings, run_date):  # their volume follows the own campaigns' sends
            bands["responses"] = (1, None)
        context = _context(out / "data_docs")
        for source in SOURCES:
            min_rows, max_rows = bands[source]
            parameters = {
                "arms": exp.all_arms,
                "max_delivery_lag_days": settings.window_days,
                "min_rows": min_rows,
                "max_rows": max_rows,
            }
            outcomes.append(
                run_suite(
                    context,
                    frames[source],
                    f"raw/{source} dt={days[source]}",
                    f"raw_{source}",
                    parameters,
                    generated.get(source),
                    hidden,
                )
            )
        randomization, srm = _randomization(f"raw/sends dt={days['sends']}", randomized, exp)
        outcomes.append(randomization)
        if own:
            own_check, own_summary = _own_campaigns_check(spark, settings, frames["sends"], own, days["sends"])
            outcomes.append(own_check)
            srm["own_campaigns"] = own_summary
        outcomes.append(response_types)
        context.build_data_docs(site_names=["validation"])  # once per step, every suite's results
        checked = {source: day.isoformat() for source, day in days.items()}
        summary = out / "raw.json"
        _write_summary(summary, outcomes, {"deliveries_checked": checked, "sample_ratio_mismatch": srm})
        _raise_if_failed(outcomes, run_date, summary)
        delivered = {source: rows[source] if days[source] == run_date else 0 for source in SOURCES}
    finally:
        spark.catalog.clearCache()
    return {
        "raw_checks": sum(o.evaluated for o in outcomes),
        "delivered_rows": delivered,
        "deliveries_checked": checked,
        "report": str(summary),
    }


def _with_own_sends(band: tuple[int, int | None], randomized_today: bool, own_rows: int) -> tuple[int, int | None]:
    """The sends delivery's band when own campaigns are due or delivered: the randomized campaigns'
    band (none tonight: no rows expected of them), plus the own campaigns' rows, which are held to
    their audience apart. An audience that listed no one, or was not sent, leaves the delivery empty."""
    low, high = band if randomized_today else (0, 0)
    return low + own_rows, None if high is None else high + own_rows


def _own_responses_due(settings: Settings, run_date: date) -> bool:
    """Whether an own campaign sent within the longest label window may have responses tonight: the
    responses' volume then follows its size, not the earlier deliveries' average."""
    since = run_date - timedelta(days=settings.window_days + 1)
    recent = [day for day in partition_dates(settings, "audience") if since <= day < run_date]
    return bool(recent) and bool(own_campaigns(settings, recent[-1]))


def _own_campaigns_check(
    spark: SparkSession, settings: Settings, sends: DataFrame, audiences: dict[str, Path], day: date
) -> tuple[CheckOutcome, dict]:
    """The sends of the pipeline's own campaigns against the audiences that listed them.

    Every send must be a row of its campaign's audience (export.campaign_id names it) with that
    row's assigned arm; the routes (target, holdout, explore) must come back in the shares the
    audience listed them (a sample-ratio test at srm_p_value_min / campaigns: an e-mail tool that
    dropped the control rows, or most of one route, would bias every estimate of the nights after);
    and at least (1 - validation.volume_tolerance) of the listed rows must come back.
    """
    exp, tolerance = settings.experiment, settings.validation.volume_tolerance
    ids = sorted(audiences)
    records = assignment_records(spark, audiences).where(F.col("campaign_id").isin(ids))
    problem = F.when(F.col("assigned_arm").isNull(), F.lit("customer not in the audience")).when(
        F.col("arm") != F.col("assigned_arm"), F.lit("arm changed from the audience's assigned_arm")
    )
    own = (
        sends.where(F.col("campaign_id").isin(ids))
        .join(records, ["campaign_id", "customer_id"], "left")
        .withColumn("problem", problem)
    )
    delivered = own.groupBy("campaign_id", "assignment", "problem").count().collect()
    listed: dict[str, dict[str, int]] = {}
    for row in records.groupBy("campaign_id", "assignment").count().collect():
        listed.setdefault(row["campaign_id"], {})[row["assignment"]] = row["count"]
    outcome = CheckOutcome(f"raw/sends dt={day}", "own_campaigns", True, 4)
    problems: dict[str, int] = {}
    matched: dict[str, dict[str, int]] = {c: {} for c in ids}
    for row in delivered:
        if row["problem"]:
            problems[row["problem"]] = problems.get(row["problem"], 0) + row["count"]
        else:
            matched[row["campaign_id"]][row["assignment"]] = row["count"]
    for kind, count in sorted(problems.items()):
        sample = own.where(F.col("problem") == kind).select(
            "send_id", "campaign_id", "customer_id", "arm", "assigned_arm"
        )
        rows = [r.asDict() for r in sample.limit(SAMPLE_ROWS).collect()]
        outcome.failures.append(
            f"{count} sends of own campaigns {ids}: {kind}, e.g. {rows}. An own campaign's sends must be the rows "
            "of the audience that listed them, with their assigned arm: fix the export's mapping in the e-mail "
            "tool, or deliver a campaign the pipeline did not list under another campaign_id"
        )
    level = exp.srm_p_value_min / len(ids)
    summary = {"p_value_min": level, "campaigns": {}}
    for campaign in ids:
        expected = listed.get(campaign, {})
        total, came_back = sum(expected.values()), sum(matched[campaign].values())
        if not total:  # an audience that listed no one: nothing may come back (an unknown customer else)
            summary["campaigns"][campaign] = {"listed": expected, "delivered": came_back}
            continue
        srm = sample_ratio_mismatch(matched[campaign], {route: n / total for route, n in expected.items()})
        summary["campaigns"][campaign] = {**srm, "listed": expected, "delivered": came_back}
        if srm["p_value"] < level:
            outcome.failures.append(
                f"own campaign '{campaign}': its routes came back as {matched[campaign]} of the {expected} its "
                f"audience listed (chi2={srm['chi2']:.1f}, p={srm['p_value']:.2g} < {level:.2g}): the e-mail tool "
                "sent a different share of the target, holdout or explore rows than listed"
            )
        if came_back < (1 - tolerance) * total:
            outcome.failures.append(
                f"own campaign '{campaign}': {came_back:,} of the {total:,} listed sends came back, fewer than "
                f"{1 - tolerance:.0%} (validation.volume_tolerance {tolerance}): a partial delivery"
            )
    outcome.success = not outcome.failures
    return outcome, summary


def response_types_delivered(spark: SparkSession, settings: Settings, run_date: date) -> CheckOutcome:
    """Every label's response types occur in the responses delivered up to run_date.

    A type no delivery contains is a typo or a feed that never arrived: its label would be 0
    for every send, and its model would learn nothing, silently.
    """
    seen = {
        row["response_type"]
        for row in read_raw(spark, settings, "responses", run_date).select("response_type").distinct().collect()
    }
    wanted = settings.response_types()
    outcome = CheckOutcome(f"raw/responses up to {run_date}", "response_types", True, len(wanted))
    for name, types in wanted.items():
        missing = sorted(set(types) - seen)
        if missing:
            outcome.success = False
            which = "experiment.qualifying_response_types" if name is None else f"targeting.outcomes.{name}"
            outcome.failures.append(
                f"{which} counts response types {missing} that no delivery up to {run_date} contains "
                f"(delivered response types: {sorted(t for t in seen if t is not None)})"
                + (
                    ""
                    if name is None
                    else ": name the types as delivered, or set targeting.outcomes in your overlay "
                    "({} for the primary outcome only)"
                )
            )
    return outcome


def outcome_label_expectations(settings: Settings) -> list[dict]:
    """Each further outcome's label: 0 or 1 on every row, and not 0 everywhere (nothing to learn from)."""
    out = []
    for name in settings.targeting.outcomes:
        column = label_column(name)
        out += [
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": column, "value_set": [0, 1]}},
            {
                "type": "expect_column_mean_to_be_between",
                "kwargs": {"column": column, "min_value": 1e-6, "max_value": 0.9},
                "notes": f"no matured send was followed by a response of outcome '{name}' within its window "
                "(or no send has matured for it yet): no label to learn",
            },
        ]
    return out


def _arm_counts_by_campaign(sends: DataFrame) -> dict[str, dict[str, int]]:
    return _counts(_moments_by_campaign(sends, []))


def _randomization(
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


def covariate_balance(training: DataFrame, control: str, numeric: list[str]) -> dict[str, dict[str, float]]:
    """Standardized mean difference of each numeric feature, every arm against control, on the
    randomized rows (RANDOMIZED_ASSIGNMENTS)."""
    balance = _balance(_randomized(_moments_by_campaign(training, numeric, "assignment")), control, numeric)
    return {arm: {feature: pair["smd"] for feature, pair in by_feature.items()} for arm, by_feature in balance.items()}


def _moments_by_campaign(frame: DataFrame, numeric: list[str], *keys: str) -> list[dict]:
    """Per (campaign_id, arm, *keys): rows, and each numeric feature's non-null count, mean and
    sample variance; one Spark job, which gives the arm counts and the balance both."""
    aggs = [F.count(F.lit(1)).alias("count")]
    for feature in numeric:
        aggs += [
            F.count(feature).alias(f"{feature}__n"),
            F.avg(feature).alias(f"{feature}__mean"),
            F.var_samp(feature).alias(f"{feature}__var"),
        ]
    return [row.asDict() for row in frame.groupBy("campaign_id", "arm", *keys).agg(*aggs).collect()]


def _randomized(moments: list[dict]) -> list[dict]:
    """The groups of _moments_by_campaign(..., "assignment") whose rows are randomized."""
    return [row for row in moments if row["assignment"] in RANDOMIZED_ASSIGNMENTS]


def _counts(moments: list[dict]) -> dict[str, dict[str, int]]:
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


def _balance(moments: list[dict], control: str, numeric: list[str]) -> dict[str, dict[str, dict[str, float]]]:
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
    balance: dict[str, dict[str, dict[str, float]]] = {}
    for arm, groups in by_arm.items():
        if arm == control:
            continue
        balance[arm] = {}
        for feature in numeric:
            (n, mean, var), (base_n, base_mean, base_var) = _pooled(groups, feature), base[feature]
            pooled_var = (var + base_var) / 2
            error = (var / n + base_var / base_n) ** 0.5 if min(n, base_n) > 1 else 0.0
            balance[arm][feature] = {
                "smd": abs(mean - base_mean) / pooled_var**0.5 if pooled_var > 0 else 0.0,
                "p_value": float(2 * stats.norm.sf(abs(mean - base_mean) / error)) if error > 0 else 1.0,
            }
    return balance


def _training_randomization(
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
    randomized = _randomized(moments)
    outcome, srm = _randomization(input_name, _counts(randomized), exp, checks=3)
    balance = _balance(randomized, exp.control, numeric)
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


def _separation(score: pd.Series, target: np.ndarray) -> float:
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


def leakage_in_data(training: DataFrame, settings: Settings, seed: int) -> tuple[list[str], dict]:
    """Features that separate the label, or an arm from control on the randomized rows, almost
    perfectly, on a sample.

    Works from the table's own columns (everything but the send's keys), not from the feature
    list the ETL selected with: whatever the spec or the ETL let through is scored.
    """
    return leakage_scores(leakage_sample(training, settings, seed), settings)


def leakage_sample(training: DataFrame, settings: Settings, seed: int, total: int | None = None) -> pd.DataFrame:
    """The leakage guard's sample of the training set (about LEAKAGE_SAMPLE_ROWS rows of its
    `total`, counted unless given): label, arm, assignment and every column but the send's keys."""
    candidates = [c for c in training.columns if c not in training_keys(settings)]
    total = training.count() if total is None else total
    fraction = min(1.0, LEAKAGE_SAMPLE_ROWS / total) if total else 1.0
    return training.select("label", "arm", "assignment", *candidates).sample(fraction=fraction, seed=seed).toPandas()


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
        scores[column] = {"label": _separation(_as_score(sample[column], label, kind), label)}
        for arm in exp.arms:
            rows = randomized & sample["arm"].isin([arm, exp.control]).to_numpy()
            treated = (sample["arm"].to_numpy()[rows] == arm).astype(int)
            if rows.sum() >= 2 * MIN_LEVEL_ROWS:
                values = sample[column][rows].reset_index(drop=True)
                scores[column][arm] = _separation(_as_score(values, treated, kind), treated)
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


def validate_features(spark: SparkSession, settings: Settings, run_date: date) -> dict:
    """Validate the run date's training and scoring sets and the randomization behind them."""
    preload_gx()
    out = report_dir(settings, run_date) / "validation"
    training = read_partition(spark, settings, "features/training", run_date).persist()
    scoring = read_partition(spark, settings, "features/scoring", run_date).persist()
    try:
        return _validate_feature_tables(out, training, scoring, settings, run_date)
    finally:
        spark.catalog.clearCache()


def _validate_feature_tables(
    out: Path, training: DataFrame, scoring: DataFrame, settings: Settings, run_date: date
) -> dict:
    exp, spec = settings.experiment, settings.features
    # The checks that need no Great Expectations first, while it imports (preload_gx): they also
    # bring both tables into the cache the suites read, side by side (the scoring set's count
    # beside the training set's moments and sample).
    with ThreadPoolExecutor(1, thread_name_prefix="scoring-count") as pool:
        scoring_counted = pool.submit(scoring.count)
        moments = _moments_by_campaign(training, spec.numeric, "assignment")
        sample = leakage_sample(training, settings, settings.training.seed, sum(row["count"] for row in moments))
        scoring_rows = scoring_counted.result()
    randomization, checks = _training_randomization(
        f"features/training run_date={run_date}", moments, exp, spec.numeric
    )
    context = _context(out / "data_docs")  # Great Expectations imported: no import runs in two threads
    # The leakage guard's AUCs are pandas work on the driver, the suites mostly wait for Spark:
    # one runs beside the other.
    with ThreadPoolExecutor(1, thread_name_prefix="leakage") as pool:
        leakage = pool.submit(leakage_scores, sample, settings)
        generated = features.expectations(spec.columns())
        outcomes = [
            run_suite(
                context,
                training,
                f"features/training run_date={run_date}",
                "features_training",
                {"arms": exp.all_arms, "columns": [*training_keys(settings), *spec.names]},
                generated + outcome_label_expectations(settings),
            ),
            run_suite(
                context,
                scoring,
                f"features/scoring run_date={run_date}",
                "features_scoring",
                {"columns": [*SCORING_KEYS, *spec.names]},
                generated,
            ),
            randomization,
        ]
        leaks, separation = leakage.result()
    if leaks:
        randomization.success = False
        randomization.failures.extend(leaks)
    context.build_data_docs(site_names=["validation"])  # once per step, every suite's results
    summary = out / "features.json"
    _write_summary(summary, outcomes, {**checks, "leakage_auc": separation})
    _raise_if_failed(outcomes, run_date, summary)
    arm_counts: dict[str, int] = {}
    for row in moments:  # every training row, randomized or not
        arm_counts[row["arm"]] = arm_counts.get(row["arm"], 0) + row["count"]
    srm = checks["sample_ratio_mismatch"]
    return {
        "srm_p_value_min": min((t["p_value"] for t in srm["campaigns"].values()), default=1.0),
        "arm_counts": arm_counts,
        "training_rows": sum(arm_counts.values()),
        "scoring_rows": scoring_rows,
        "report": str(summary),
    }
