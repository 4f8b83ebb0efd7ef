"""The pipeline's validation of any domain: its row rules plus the rules every domain shares, and the quarantine split."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from batchinfer_assets.domain import Domain
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.rules import finite, max_length, no_control_characters, not_blank, utc_dtype

REASON_COLUMN = "reason"

# pandera's built-in names for its structural checks, renamed for the quarantine reason.
_READABLE_CHECK_NAMES = {"not_nullable": "not_null", "field_uniqueness": "unique"}


def _is_utc() -> pa.Check:
    return pa.Check(utc_dtype, name="utc_timestamp")


def _within_day(day: dt.date) -> pa.Check:
    start = pd.Timestamp(day, tz="UTC")
    end = start + pd.Timedelta(days=1)

    def check(s: pd.Series) -> pd.Series | bool:
        # A non-UTC column already fails utc_timestamp for every row; comparing it would only raise.
        if not utc_dtype(s):
            return True
        return (s >= start) & (s < end)

    return pa.Check(check, name=f"within_day({day:%Y-%m-%d})")


def row_schema(domain: Domain, day: dt.date | None, text_lengths: Mapping[str, int] | None = None) -> pa.DataFrameSchema:
    """The domain's row rules plus the shared ones: a non-blank unique id, the event time inside `day` (None: UTC
    only), and text no longer than where it is published (`text_lengths`: column -> the database's length)."""
    own = domain.row_schema
    columns = dict(own.columns)
    extra: dict[str, list[pa.Check]] = {domain.id_column: [not_blank(), no_control_characters()]}
    if domain.event_time_column is not None:
        extra.setdefault(domain.event_time_column, []).extend([_is_utc()] if day is None else [_is_utc(), _within_day(day)])
    for column, length in (text_lengths or {}).items():
        extra.setdefault(column, []).append(max_length(length))
    for column, checks in extra.items():
        existing = columns.get(column)
        options: dict = {"nullable": existing.nullable if existing is not None else True}
        if existing is not None:
            options["unique"] = existing.unique
        if column in (domain.id_column, domain.event_time_column):
            options["nullable"] = False
        if column == domain.id_column:
            # Later duplicates are quarantined; the first occurrence of an id stays valid.
            options.update(unique=True, report_duplicates="exclude_first")
        columns[column] = pa.Column(
            existing.dtype if existing is not None else None,
            checks=[*(existing.checks if existing is not None else []), *checks],
            **options,
        )
    return pa.DataFrameSchema(columns, checks=own.checks, unique=own.unique, strict=False, name=own.name or domain.name)


class ColumnLevelSchemaError(ValueError):
    """A whole column breaks the schema (missing, wrong dtype, not UTC): a structural fault, not bad rows."""


def split_valid_rows(
    frame: pd.DataFrame,
    day: dt.date,
    domain: Domain,
    text_lengths: Mapping[str, int] | None = None,
    repeated: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a landed day (or a part of it) into (valid rows, quarantined rows with a `reason`), both in input order.

    `repeated`: rows whose id an earlier row of the day has outside this part (quarantined as the id's uniqueness
    failure, as within the part).
    """
    frame = frame.reset_index(drop=True)
    return split_by_reasons(frame, quarantine_reasons(frame, day, domain, text_lengths, repeated))


def split_by_reasons(frame: pd.DataFrame, reasons: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows without a reason, rows with one and their `reason`) of a RangeIndex frame, both in its order."""
    bad = reasons.notna().to_numpy()
    valid = frame.loc[~bad].reset_index(drop=True)
    quarantined = frame.loc[bad].reset_index(drop=True)
    quarantined[REASON_COLUMN] = pd.array(reasons[bad].to_numpy(), dtype="string")
    return valid, quarantined


def quarantine_reasons(
    frame: pd.DataFrame,
    day: dt.date,
    domain: Domain,
    text_lengths: Mapping[str, int] | None = None,
    repeated: np.ndarray | None = None,
) -> pd.Series:
    """Per row of a RangeIndex frame of landed rows: why it is quarantined (`"column: check"` reasons joined by "; "),
    or NA for a valid row (`repeated` as in `split_valid_rows`)."""
    try:
        reasons = failure_reasons(frame, row_schema(domain, day, text_lengths))
    except ColumnLevelSchemaError as exc:
        # Quarantining every row would hide a broken export behind a "too many bad rows" block.
        raise LandingDataError(f"landing data for {day.isoformat()} is structurally invalid: {exc}") from exc
    if repeated is not None and repeated.any():
        unique = f"{domain.id_column}: {_READABLE_CHECK_NAMES['field_uniqueness']}"
        for row in np.flatnonzero(repeated):
            present = reasons.iat[row]
            parts = set() if pd.isna(present) else set(str(present).split("; "))
            reasons.iat[row] = "; ".join(sorted(parts | {unique}))
    return reasons


_backends: threading.Thread | None = None


def load_validation_in_background() -> None:
    """Start loading pandera's validation backends on a worker thread (a run that validates calls this as it starts):
    the first validation of a process otherwise waits for them (0.2-0.8 s here, most of it pandera importing its
    data-synthesis strategies when hypothesis is installed) in the middle of the day's stages."""
    global _backends
    if _backends is None:
        _backends = threading.Thread(target=_load_backends, name="pandera-backends", daemon=True)
        _backends.start()


def _load_backends() -> None:
    with contextlib.suppress(Exception):
        pa.DataFrameSchema({"x": pa.Column(float, checks=pa.Check.ge(0))}).validate(pd.DataFrame({"x": [1.0]}))


def validate_uncopied(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    """`schema.validate(frame, lazy=True)`, without pandera's copy of the frame (a day's worth of memory) when the
    schema coerces nothing, so the frame is left as it was either way."""
    if _backends is not None:
        _backends.join()
    coerces = schema.coerce or any(column.coerce for column in schema.columns.values())
    return schema.validate(frame, lazy=True, inplace=not coerces)


def failure_reasons(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.Series:
    """Per row of a RangeIndex frame: `"column: check"` reasons joined by "; ", or NA; column-level failures raise."""
    try:
        validate_uncopied(schema, frame)
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


def feature_schema(columns: Iterable[str], id_column: str) -> pa.DataFrameSchema:
    """Schema of a feature table: unique non-blank string id, each feature float32 and finite."""
    spec = {id_column: pa.Column(nullable=False, unique=True, checks=[_is_string(), not_blank()])}
    spec.update({name: pa.Column(np.float32, nullable=False, checks=finite()) for name in columns})
    return pa.DataFrameSchema(spec, strict=False, name="features")


def _is_string() -> pa.Check:
    return pa.Check(lambda s: pd.api.types.is_string_dtype(s.dtype), name="string_dtype")
