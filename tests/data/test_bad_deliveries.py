"""One test per kind of bad delivery: each stops validate_raw with a message naming the input,
the failed check and offending rows, and nothing downstream is written."""

import shutil

import pandas as pd
import pytest

from conftest import RUN_DATE
from helpers import copy_raw, settings_in
from jobs.data.checks import ValidationFailed
from jobs.data.lake import MissingInputError
from jobs.data.validate import validate_raw
from jobs.demo.generate import deliver

DAY = f"dt={RUN_DATE}"


def _read(settings, source):
    return pd.read_parquet(settings.paths.lake / "raw" / source / DAY)


def _redeliver(settings, source, frame):
    shutil.rmtree(settings.paths.lake / "raw" / source / DAY)
    deliver(settings, source, frame, RUN_DATE)


def _never_sent(settings):
    users = _read(settings, "users")
    sent = set(pd.read_parquet(settings.paths.lake / "raw" / "sends")["customer_id"])
    return users.loc[~users["customer_id"].isin(sent), "customer_id"].iloc[0]


def missing_column(s):
    _redeliver(s, "sends", _read(s, "sends").drop(columns=["arm"]))
    return MissingInputError, ["raw source 'sends'", f"lacks columns 'arm' in {DAY}"]


def wrong_type(s):
    users = _read(s, "users").astype({"age": str})
    users.loc[users.index[:2], "age"] = "forty"
    _redeliver(s, "users", users)
    # The offending rows name the file that holds them: its dt= folder and its name.
    return ValidationFailed, ["input 'raw/users", "'unparsable'", "'raw_age': 'forty'", f"'source_file': '{DAY}/"]


def null_ids(s):
    sends = _read(s, "sends")
    sends.loc[sends.index[:3], "send_id"] = None
    _redeliver(s, "sends", sends)
    return ValidationFailed, ["expect_column_values_to_not_be_null({'column': 'send_id'", "3 unexpected"]


def duplicate_ids(s):
    responses = _read(s, "responses")
    responses = pd.concat([responses, responses.head(2)])
    _redeliver(s, "responses", responses)
    return ValidationFailed, ["input 'raw/responses", "expect_column_values_to_be_unique", "response_id"]


def unknown_arm(s):
    sends = _read(s, "sends")
    sends.loc[sends.index[:5], "arm"] = "subject_9"
    _redeliver(s, "sends", sends)
    return ValidationFailed, ["expect_column_values_to_be_in_set({'column': 'arm'", "subject_9"]


def response_before_any_send(s):
    responses = _read(s, "responses")
    responses.loc[responses.index[0], "customer_id"] = _never_sent(s)
    _redeliver(s, "responses", responses)
    return ValidationFailed, ["'after_a_send'", responses.iloc[0]["response_id"]]


def response_for_unknown_customer(s):
    responses = _read(s, "responses")
    responses.loc[responses.index[0], "customer_id"] = "GHOST"
    _redeliver(s, "responses", responses)
    return ValidationFailed, ["'known_customer'", "GHOST"]


def empty_delivery(s):
    _redeliver(s, "responses", _read(s, "responses").head(0))
    return ValidationFailed, ["input 'raw/responses", "expect_table_row_count_to_be_between", "observed 0"]


def all_rows_in_one_arm(s):
    _redeliver(s, "sends", _read(s, "sends").assign(arm="control"))
    return ValidationFailed, ["input 'raw/sends", "sample ratio mismatch"]


def volume_collapse(s):
    _redeliver(s, "sends", _read(s, "sends").head(300))
    return ValidationFailed, ["expect_table_row_count_to_be_between", "observed 300"]


def unparsable_timestamps(s):
    sends = _read(s, "sends").astype({"sent_at": str})
    sends.loc[sends.index[:4], "sent_at"] = "yesterday evening"
    _redeliver(s, "sends", sends)
    return ValidationFailed, ["'unparsable'", "'raw_sent_at': 'yesterday evening'"]


def truncated_csv(s):
    for folder in sorted((s.paths.lake / "raw" / "sends").iterdir()):
        frame = pd.read_parquet(folder)
        shutil.rmtree(folder)
        deliver(s, "sends", frame, pd.Timestamp(folder.name[3:]).date())
    text = (s.paths.lake / "raw" / "sends" / DAY / "part-0.csv").read_text()
    (s.paths.lake / "raw" / "sends" / DAY / "part-0.csv").write_text(text[: len(text) - 40])  # cut mid-row
    return ValidationFailed, ["input 'raw/sends", "offending rows"]


# What a message must not say: text in today's timestamps is the sends' fault alone, not a
# failure to read the history every response is checked against.
NOT_BLAMED = {"unparsable_timestamps": ["input 'raw/responses"]}

CASES = [
    missing_column,
    wrong_type,
    null_ids,
    duplicate_ids,
    unknown_arm,
    response_before_any_send,
    response_for_unknown_customer,
    empty_delivery,
    all_rows_in_one_arm,
    volume_collapse,
    unparsable_timestamps,
    truncated_csv,
]


# The fast tier (make test-fast) runs one case of each kind of check: a delivery the reader refuses,
# an expectation of a suite, a check across sources. The others, each a whole validate_raw over
# the generated 30 days (5 to 10 s), run in make test.
FAST = {"missing_column", "null_ids", "response_for_unknown_customer"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.__name__, marks=() if c.__name__ in FAST else pytest.mark.slow) for c in CASES],
)
def test_bad_delivery_is_stopped_with_a_clear_message(case, spark, settings, generated, tmp_path):
    isolated = settings_in(settings, tmp_path)
    if case is truncated_csv:
        sources = dict(isolated.sources)
        sources["sends"] = sources["sends"].model_copy(update={"format": "csv"})
        isolated = isolated.model_copy(update={"sources": sources})
    copy_raw(settings, isolated)
    error, fragments = case(isolated)
    with pytest.raises(error) as err:
        validate_raw(spark, isolated, RUN_DATE)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    for fragment in NOT_BLAMED.get(case.__name__, []):
        assert fragment not in message, f"{fragment!r} in:\n{message}"
    assert "@" not in message.split("full report")[-1], "no e-mail address in an error message"
    assert not (isolated.paths.lake / "features").exists(), "nothing downstream is written"


@pytest.mark.slow
def test_a_good_csv_delivery_passes(spark, settings, generated, tmp_path):
    sources = dict(settings.sources)
    sources["sends"] = sources["sends"].model_copy(update={"format": "csv"})
    isolated = settings_in(settings, tmp_path).model_copy(update={"sources": sources})
    copy_raw(settings, isolated)
    for folder in sorted((isolated.paths.lake / "raw" / "sends").iterdir()):
        frame = pd.read_parquet(folder)
        shutil.rmtree(folder)
        deliver(isolated, "sends", frame, pd.Timestamp(folder.name[3:]).date())
    assert validate_raw(spark, isolated, RUN_DATE)["raw_checks"] > 20
