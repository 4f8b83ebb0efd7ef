"""Landing and feature schemas: a good frame passes; one corrupted cell gives the named quarantine reason."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pandera.errors import SchemaErrors

from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS, build_features
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.domains.card_transactions.synthetic import generate_day
from batchinfer_assets.schemas import (
    REASON_COLUMN,
    feature_schema,
    row_schema,
    split_valid_rows,
)
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.resources.prediction_db import published_text_lengths

CARD_LENGTHS = published_text_lengths(CARD)

DAY = dt.date(2025, 3, 8)
ROW = 3


@pytest.fixture
def good() -> pd.DataFrame:
    return generate_day(DAY, 10)


def test_a_good_frame_passes_both_landing_schemas(good):
    row_schema(CARD, DAY, CARD_LENGTHS).validate(good, lazy=True)
    row_schema(CARD, None, CARD_LENGTHS).validate(good, lazy=True)

    valid, quarantined = split_valid_rows(good, DAY, CARD, CARD_LENGTHS)

    pd.testing.assert_frame_equal(valid, good)
    assert quarantined.empty
    assert list(quarantined.columns) == [*good.columns, REASON_COLUMN]


def _set(column: str, value):
    def corrupt(frame: pd.DataFrame) -> None:
        frame[column] = frame[column].astype(object)
        frame.loc[ROW, column] = value

    return corrupt


def _duplicate_earlier_id(frame: pd.DataFrame) -> None:
    frame.loc[ROW, "transaction_id"] = frame.loc[1, "transaction_id"]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        pytest.param(_set("transaction_id", None), "transaction_id: not_null", id="null id"),
        pytest.param(_duplicate_earlier_id, "transaction_id: unique", id="duplicate id"),
        pytest.param(_set("customer_id", None), "customer_id: not_null", id="null customer"),
        pytest.param(_set("merchant_category", None), "merchant_category: not_null", id="null category"),
        pytest.param(_set("amount", -0.01), "amount: greater_than_or_equal_to(0)", id="negative amount"),
        pytest.param(_set("amount", np.nan), "amount: not_null", id="null amount"),
        pytest.param(_set("amount", np.inf), "amount: finite", id="infinite amount"),
        pytest.param(_set("channel", "web"), "channel: isin(['pos', 'online', 'atm'])", id="bad channel"),
        pytest.param(_set("channel", None), "channel: not_null", id="null channel"),
        pytest.param(_set("currency", "usd"), "currency: str_fullmatch('[A-Z]{3}')", id="lower-case currency"),
        pytest.param(_set("currency", "USDX"), "currency: str_fullmatch('[A-Z]{3}')", id="long currency"),
        pytest.param(_set("country", "USA"), "country: str_fullmatch('[A-Z]{2}')", id="three-letter country"),
        pytest.param(_set("country", None), "country: not_null", id="null country"),
        pytest.param(_set("event_time", pd.Timestamp("2025-03-09T00:00:00Z")), "event_time: within_day(2025-03-08)", id="next midnight"),
        pytest.param(_set("event_time", pd.Timestamp("2025-03-07T23:59:59.999999Z")), "event_time: within_day(2025-03-08)", id="day before"),
        pytest.param(_set("event_time", pd.NaT), "event_time: not_null", id="null time"),
        # `$` matches before a final newline: every pattern must match the whole value.
        pytest.param(_set("currency", "USD\n"), "currency: str_fullmatch('[A-Z]{3}')", id="currency with newline"),
        pytest.param(_set("country", "US\n"), "country: str_fullmatch('[A-Z]{2}')", id="country with newline"),
        pytest.param(_set("currency", " USD"), "currency: str_fullmatch('[A-Z]{3}')", id="currency with space"),
        pytest.param(_set("transaction_id", ""), "transaction_id: not_blank", id="empty id"),
        pytest.param(_set("transaction_id", " \t "), "transaction_id: no_control_characters; transaction_id: not_blank", id="blank id"),
        pytest.param(_set("customer_id", "   "), "customer_id: not_blank", id="blank customer"),
        pytest.param(_set("merchant_category", ""), "merchant_category: not_blank", id="empty category"),
        pytest.param(_set("transaction_id", "t\x00-1"), "transaction_id: no_control_characters", id="NUL in id"),
        pytest.param(_set("customer_id", "c1\n"), "customer_id: no_control_characters", id="newline in customer"),
        pytest.param(_set("merchant_category", "grocery\x7f"), "merchant_category: no_control_characters", id="DEL in category"),
        # What the prediction database's columns can hold (VARCHAR(128) / VARCHAR(64) in PostgreSQL).
        pytest.param(_set("transaction_id", "t" * 129), "transaction_id: max_length(128)", id="id too long"),
        pytest.param(_set("customer_id", "c" * 129), "customer_id: max_length(128)", id="customer too long"),
        pytest.param(_set("merchant_category", "m" * 65), "merchant_category: max_length(64)", id="category too long"),
    ],
)
def test_one_corrupted_cell_quarantines_that_row_with_the_named_reason(good, corrupt, reason):
    frame = good.copy()
    corrupt(frame)
    # _set goes through object dtype; restore the landed dtypes so only the cell's value is wrong.
    frame = frame.astype({"event_time": good["event_time"].dtype, "amount": np.float64})

    valid, quarantined = split_valid_rows(frame, DAY, CARD, CARD_LENGTHS)

    assert len(quarantined) == 1
    assert quarantined.loc[0, REASON_COLUMN] == reason
    assert quarantined.loc[0, "customer_id"] is pd.NA or quarantined.loc[0, "customer_id"] == frame.loc[ROW, "customer_id"]
    assert quarantined.loc[0, "event_time"] is pd.NaT or quarantined.loc[0, "event_time"] == frame.loc[ROW, "event_time"]
    expected_valid = frame.drop(index=ROW).reset_index(drop=True)
    assert valid["event_time"].tolist() == expected_valid["event_time"].tolist()
    assert isinstance(valid.index, pd.RangeIndex)


def test_the_longest_values_the_database_holds_pass(good):
    frame = good.copy()
    frame.loc[ROW, ["transaction_id", "customer_id", "merchant_category"]] = ["t" * 128, "c" * 128, "m" * 64]

    valid, quarantined = split_valid_rows(frame, DAY, CARD, CARD_LENGTHS)

    assert quarantined.empty and len(valid) == len(good)


def test_the_first_occurrence_of_a_duplicate_id_stays_valid(good):
    frame = good.copy()
    frame.loc[[5, 8], "transaction_id"] = frame.loc[2, "transaction_id"]

    valid, quarantined = split_valid_rows(frame, DAY, CARD, CARD_LENGTHS)

    assert (valid["transaction_id"] == good.loc[2, "transaction_id"]).sum() == 1
    assert quarantined["event_time"].tolist() == frame.loc[[5, 8], "event_time"].tolist()
    assert set(quarantined[REASON_COLUMN]) == {"transaction_id: unique"}


def test_several_failures_in_one_row_are_joined_in_a_stable_order(good):
    frame = good.copy()
    frame.loc[ROW, ["amount", "currency", "country"]] = [-5.0, "usd", "USA"]

    _, quarantined = split_valid_rows(frame, DAY, CARD, CARD_LENGTHS)

    assert quarantined[REASON_COLUMN].tolist() == [
        "amount: greater_than_or_equal_to(0); country: str_fullmatch('[A-Z]{2}'); currency: str_fullmatch('[A-Z]{3}')"
    ]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        pytest.param(lambda f: f.assign(event_time=f["event_time"].dt.tz_localize(None)), "event_time: utc_timestamp", id="naive time"),
        pytest.param(lambda f: f.assign(event_time=f["event_time"].dt.tz_convert("Europe/Paris")), "event_time: utc_timestamp", id="non-UTC time"),
        pytest.param(lambda f: f.drop(columns=["channel"]), "channel: column_in_dataframe", id="missing column"),
        pytest.param(lambda f: f.assign(amount=f["amount"].astype(str)), "amount: dtype('float64')", id="amount as text"),
    ],
)
def test_a_column_level_failure_fails_the_day_instead_of_quarantining_every_row(good, corrupt, reason):
    with pytest.raises(LandingDataError, match=r"landing data for 2025-03-08 is structurally invalid: .*") as error:
        split_valid_rows(corrupt(good), DAY, CARD, CARD_LENGTHS)

    assert reason in str(error.value)


def test_index_is_reset_extra_columns_kept_and_order_preserved(good):
    frame = good.assign(source="file-1").set_index(pd.Index(range(100, 110)))
    frame.loc[104, "amount"] = -1.0

    valid, quarantined = split_valid_rows(frame, DAY, CARD, CARD_LENGTHS)

    assert isinstance(valid.index, pd.RangeIndex) and isinstance(quarantined.index, pd.RangeIndex)
    assert "source" in valid.columns and "source" in quarantined.columns
    assert valid["transaction_id"].tolist() == good.drop(index=4)["transaction_id"].tolist()
    assert quarantined["transaction_id"].tolist() == [good.loc[4, "transaction_id"]]


def test_the_static_schema_leaves_day_bounds_to_the_partition(good):
    other_day = good.assign(event_time=good["event_time"] + pd.Timedelta(days=3))

    row_schema(CARD, None, CARD_LENGTHS).validate(other_day)
    with pytest.raises(SchemaErrors, match="within_day"):
        row_schema(CARD, DAY, CARD_LENGTHS).validate(other_day, lazy=True)


@settings(max_examples=30, deadline=None)
@given(bad_rows=st.sets(st.integers(0, 199), max_size=40))
def test_exactly_the_corrupted_rows_are_quarantined(bad_rows):
    frame = generate_day(DAY, 200)
    rows = sorted(bad_rows)
    frame.loc[rows, "amount"] = -1.0

    valid, quarantined = split_valid_rows(frame, DAY, CARD, CARD_LENGTHS)

    assert quarantined["transaction_id"].tolist() == frame.loc[rows, "transaction_id"].tolist()
    assert valid["transaction_id"].tolist() == frame.drop(index=rows)["transaction_id"].tolist()


def test_a_large_day_quarantines_exactly_its_bad_rows():
    frame = generate_day(DAY, 200_000)
    frame.loc[::100, "currency"] = "usd"
    valid, quarantined = split_valid_rows(frame, DAY, CARD, CARD_LENGTHS)

    assert len(quarantined) == 2_000 and len(valid) == 198_000
    assert set(quarantined[REASON_COLUMN]) == {"currency: str_fullmatch('[A-Z]{3}')"}


# (value, blank, has a control character, longer than 5 characters): judged by hand, bytes and characters apart.
TEXT_CASES = [
    ("ok", False, False, False),
    ("", True, False, False),
    ("  ", True, False, False),
    ("\u00a0\u2003", True, False, False),  # no-break and em spaces: 2 characters, 5 bytes
    ("a\nb", False, True, False),
    ("x\x00", False, True, False),
    ("\x7f", False, True, False),
    ("héllo", False, False, False),  # 5 characters, 6 bytes
    ("日本語", False, False, False),  # 3 characters, 9 bytes: no byte of a multi-byte character is a control byte
    ("é" * 5, False, False, False),
    ("e" * 6, False, False, True),
    ("naïve\x1f", False, True, True),
    (None, False, False, False),  # a null passes the text rules (nullable decides)
]


@pytest.mark.parametrize("dtype", ["str", "string[python]", object])
@pytest.mark.parametrize("start", [0, 3], ids=["whole", "slice"])
def test_text_rules_judge_each_value_by_its_characters(dtype, start):
    from batchinfer_assets.rules import max_length, no_control_characters, not_blank
    from batchinfer_assets.schemas import failure_reasons

    cases = TEXT_CASES[start:]
    column = pd.Series([value for value, *_ in TEXT_CASES], dtype=dtype).iloc[start:].reset_index(drop=True)
    schema = pa.DataFrameSchema({"v": pa.Column(nullable=True, checks=[not_blank(), no_control_characters(), max_length(5)])})

    reasons = failure_reasons(pd.DataFrame({"v": column}), schema)

    for (value, blank, control, long), reason in zip(cases, reasons, strict=True):
        expected = [name for name, failed in (("max_length(5)", long), ("no_control_characters", control), ("not_blank", blank)) if failed]
        assert (None if pd.isna(reason) else reason) == ("; ".join(f"v: {e}" for e in expected) or None), repr(value)
    # Called on the column itself (pandera hands a check a copy without the nulls): a slice's strings start at an offset.
    no_nulls = pd.Series([value for value, *_ in TEXT_CASES], dtype=dtype).iloc[start:-1]
    for check, position in ((not_blank(), 1), (no_control_characters(), 2), (max_length(5), 3)):
        passed = check(no_nulls).check_output.tolist()
        assert passed == [not case[position] for case in cases[:-1]], check.name


@pytest.fixture
def features() -> pd.DataFrame:
    return build_features(generate_day(DAY, 50))


def test_good_features_pass(features):
    feature_schema(FEATURE_COLUMNS, "transaction_id").validate(features, lazy=True)
    feature_schema(["log_amount"], "transaction_id").validate(features[["transaction_id", "log_amount"]])


@pytest.mark.parametrize(
    ("corrupt", "check"),
    [
        pytest.param(lambda f: f.loc.__setitem__((ROW, "log_amount"), np.nan), "not_nullable", id="nan"),
        pytest.param(lambda f: f.loc.__setitem__((ROW, "hour_sin"), np.inf), "finite", id="inf"),
        pytest.param(lambda f: f.loc.__setitem__((ROW, "transaction_id"), f.loc[0, "transaction_id"]), "field_uniqueness", id="duplicate id"),
        pytest.param(lambda f: f.loc.__setitem__((ROW, "transaction_id"), pd.NA), "not_nullable", id="null id"),
        pytest.param(lambda f: f.loc.__setitem__((ROW, "transaction_id"), " "), "not_blank", id="blank id"),
        pytest.param(lambda f: f.__setitem__("is_night", f["is_night"].astype(np.float64)), "dtype('float32')", id="float64"),
        pytest.param(lambda f: f.__setitem__("transaction_id", np.arange(len(f))), "string_dtype", id="integer ids"),
        pytest.param(lambda f: f.__delitem__("channel_atm"), "column_in_dataframe", id="missing feature"),
    ],
)
def test_corrupted_features_fail_with_the_named_check(features, corrupt, check):
    corrupt(features)

    with pytest.raises(SchemaErrors) as error:
        feature_schema(FEATURE_COLUMNS, "transaction_id").validate(features, lazy=True)

    assert check in set(error.value.failure_cases["check"].astype(str))


def test_feature_schema_is_a_pandera_schema_over_the_given_columns():
    schema = feature_schema(["a", "b"], "transaction_id")
    assert isinstance(schema, pa.DataFrameSchema)
    assert list(schema.columns) == ["transaction_id", "a", "b"]
    assert list(feature_schema(FEATURE_COLUMNS, "transaction_id").columns) == ["transaction_id", *FEATURE_COLUMNS]
