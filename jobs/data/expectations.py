"""Great Expectations 1.x plumbing of the validation steps: the suites in `expectations/<suite>.json`
(plus the expectations generated from the feature spec), a suite run on a Spark frame with its Data
Docs, the offending rows of a failed expectation (PII hidden), the JSON summary and the error that
names the input, the failed check and a sample of rows.
"""

from __future__ import annotations

import importlib
import json
import threading
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.data.checks import CheckOutcome, ValidationFailed
from jobs.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import great_expectations as gx

SUITES_DIR = PROJECT_ROOT / "expectations"
SAMPLE_ROWS = 5

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


def data_context(docs_dir: Path):
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


def write_summary(path: Path, outcomes: list[CheckOutcome], extra: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "success": all(o.success for o in outcomes),
        "checks": [o.__dict__ for o in outcomes],
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2, default=str))


def raise_if_failed(outcomes: list[CheckOutcome], run_date: date, summary: Path) -> None:
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
