"""Pandera schemas for landed transactions and model-ready features, and the quarantine split."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from batchinfer_assets.lib.features import FEATURE_COLUMNS
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.domains.card_transactions import domain as card_transactions
from batchinfer_assets.resources.prediction_db import published_text_lengths

CHANNELS = ("pos", "online", "atm")
REASON_COLUMN = "reason"

# pandera's built-in names for its structural checks, renamed for the quarantine reason.
_READABLE_CHECK_NAMES = {"not_nullable": "not_null", "field_uniqueness": "unique"}


def _finite() -> pa.Check:
    return pa.Check(lambda s: s.abs() < np.inf, name="finite")


def _full_match(pattern: str) -> pa.Check:
    """The whole value matches `pattern` (pandera's str_matches anchors only the start, and `$` allows a final newline)."""
    return pa.Check(lambda s: s.str.fullmatch(pattern), name=f"str_fullmatch('{pattern}')")


def _not_blank() -> pa.Check:
    return pa.Check(lambda s: s.str.strip().str.len() > 0, name="not_blank")


def _no_control_characters() -> pa.Check:
    # NUL and other control characters break CSV exports and PostgreSQL text, and hide in logs.
    return pa.Check(lambda s: ~s.str.contains(r"[\x00-\x1f\x7f]", regex=True), name="no_control_characters")


# The card columns' lengths in the prediction database.
_PUBLISHED_LENGTHS = published_text_lengths(card_transactions)


def _fits_published(column: str) -> pa.Check:
    """At most as long as the prediction database's column: such a row is quarantined here, not refused at publish."""
    length = _PUBLISHED_LENGTHS[column]
    return pa.Check(lambda s: s.str.len() <= length, name=f"max_length({length})")


def _key_text(column: str) -> list[pa.Check]:
    """The rules of a text key: not blank, no control characters, and storable where it is published."""
    checks = [_not_blank(), _no_control_characters()]
    return checks + ([_fits_published(column)] if column in _PUBLISHED_LENGTHS else [])


def _is_utc() -> pa.Check:
    return pa.Check(_utc_dtype, name="utc_timestamp")


def _utc_dtype(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.DatetimeTZDtype) and str(s.dtype.tz) == "UTC"


def _within_day(day: dt.date) -> pa.Check:
    start = pd.Timestamp(day, tz="UTC")
    end = start + pd.Timedelta(days=1)

    def check(s: pd.Series) -> pd.Series | bool:
        # A non-UTC column already fails utc_timestamp for every row; comparing it would only raise.
        if not _utc_dtype(s):
            return True
        return (s >= start) & (s < end)

    return pa.Check(check, name=f"within_day({day:%Y-%m-%d})")


def _landing_schema(day: dt.date | None) -> pa.DataFrameSchema:
    event_time_checks = [_is_utc()] if day is None else [_is_utc(), _within_day(day)]
    return pa.DataFrameSchema(
        {
            # Later duplicates are quarantined; the first occurrence of an id stays valid.
            "transaction_id": pa.Column(
                nullable=False, unique=True, report_duplicates="exclude_first", checks=_key_text("transaction_id")
            ),
            "event_time": pa.Column(nullable=False, checks=event_time_checks),
            "customer_id": pa.Column(nullable=False, checks=_key_text("customer_id")),
            "merchant_category": pa.Column(nullable=False, checks=_key_text("merchant_category")),
            "amount": pa.Column(float, nullable=False, checks=[pa.Check.greater_than_or_equal_to(0), _finite()]),
            "currency": pa.Column(nullable=False, checks=_full_match("[A-Z]{3}")),
            "channel": pa.Column(nullable=False, checks=pa.Check.isin(list(CHANNELS))),
            "country": pa.Column(nullable=False, checks=_full_match("[A-Z]{2}")),
        },
        strict=False,
        name="raw_transactions",
    )


# Every landing rule except the day bounds, which are only known per partition.
RawTransactionSchema = _landing_schema(None)


def raw_transaction_schema(day: dt.date) -> pa.DataFrameSchema:
    """The landing contract for one partition day: RawTransactionSchema plus event_time inside the day."""
    return _landing_schema(day)


class ColumnLevelSchemaError(ValueError):
    """A whole column breaks the schema (missing, wrong dtype, not UTC): a structural fault, not bad rows."""


def split_valid_rows(frame: pd.DataFrame, day: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a landed day into (valid rows, quarantined rows with a `reason`), both in input order."""
    frame = frame.reset_index(drop=True)
    try:
        reasons = failure_reasons(frame, raw_transaction_schema(day))
    except ColumnLevelSchemaError as exc:
        # Quarantining every row would hide a broken export behind a "too many bad rows" block.
        raise LandingDataError(f"landing data for {day.isoformat()} is structurally invalid: {exc}") from exc
    bad = reasons.notna().to_numpy()
    valid = frame.loc[~bad].reset_index(drop=True)
    quarantined = frame.loc[bad].reset_index(drop=True)
    quarantined[REASON_COLUMN] = pd.array(reasons[bad].to_numpy(), dtype="string")
    return valid, quarantined


def failure_reasons(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.Series:
    """Per row of a RangeIndex frame: `"column: check"` reasons joined by "; ", or NA; column-level failures raise."""
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return pd.Series(pd.NA, index=frame.index, dtype="string")

    column = cases["column"].astype("string")
    # pandera names the schema, not the column, when a whole column is missing.
    missing = (cases["check"] == "column_in_dataframe").to_numpy()
    column[missing] = cases["failure_case"][missing].astype("string")
    check = cases["check"].astype("string").replace(_READABLE_CHECK_NAMES)
    reason_codes, reason_names = pd.factorize(column + ": " + check, sort=True)
    index = pd.to_numeric(cases["index"], errors="coerce").to_numpy(dtype=np.float64)
    whole = np.isnan(index)
    if whole.any():
        names = sorted({reason_names[code] for code in reason_codes[whole]})
        raise ColumnLevelSchemaError(f"column-level failure(s): {'; '.join(names)}")
    failed = np.zeros((len(frame), len(reason_names)), dtype=bool)
    failed[index.astype(np.int64), reason_codes] = True

    # Rows share few distinct combinations of reasons: join the strings once per combination.
    bad = failed.any(axis=1)
    packed = np.packbits(failed[bad], axis=1)
    combos, inverse = np.unique(packed, axis=0, return_inverse=True)
    names = np.asarray(reason_names, dtype=object)
    texts = np.array(
        ["; ".join(names[np.unpackbits(c, count=len(names)).astype(bool)]) for c in combos], dtype=object
    )
    out = np.full(len(frame), None, dtype=object)
    out[bad] = texts[inverse.reshape(-1)] if len(texts) else texts
    return pd.Series(pd.array(out, dtype="string"), index=frame.index)


def feature_schema(columns: Iterable[str] = FEATURE_COLUMNS) -> pa.DataFrameSchema:
    """Schema of a feature table: unique non-blank `transaction_id`, each feature float32 and finite."""
    spec = {"transaction_id": pa.Column(nullable=False, unique=True, checks=[_is_string(), _not_blank()])}
    spec.update({name: pa.Column(np.float32, nullable=False, checks=_finite()) for name in columns})
    return pa.DataFrameSchema(spec, strict=False, name="features")


def _is_string() -> pa.Check:
    return pa.Check(
        lambda s: pd.api.types.is_string_dtype(s.dtype),
        name="string_dtype",
    )


FeatureSchema = feature_schema(FEATURE_COLUMNS)
