"""Row rules a domain's `row_schema` can use (pandera checks whose names become quarantine reasons)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.compute as pc


def full_match(pattern: str) -> pa.Check:
    """The whole value matches `pattern` (pandera's str_matches anchors only the start, and `$` allows a final newline)."""
    return pa.Check(lambda s: s.str.fullmatch(pattern), name=f"str_fullmatch('{pattern}')")


def not_blank() -> pa.Check:
    """Not empty and not only whitespace."""
    return pa.Check(_not_blank, name="not_blank")


def no_control_characters() -> pa.Check:
    """No NUL, newline or other control character (they break CSV exports and PostgreSQL text, and hide in logs)."""
    return pa.Check(_no_control_characters, name="no_control_characters")


def max_length(length: int) -> pa.Check:
    """At most `length` characters."""
    return pa.Check(lambda s: _within_length(s, length), name=f"max_length({length})")


def finite() -> pa.Check:
    """Neither NaN nor infinite."""
    return pa.Check(lambda s: s.abs() < np.inf, name="finite")


def text_key() -> list[pa.Check]:
    """The rules of a text key column (a customer, a category): not blank, no control characters."""
    return [not_blank(), no_control_characters()]


def utc_dtype(s: pd.Series) -> bool:
    """Whether a column holds timezone-aware UTC timestamps."""
    return isinstance(s.dtype, pd.DatetimeTZDtype) and str(s.dtype.tz) == "UTC"


# The text rules run on every row of every day: they work on the column's Arrow strings with Arrow's kernels, where
# pandas' `.str` methods build a masked integer or string column per call (a copy of the day's column each time).


def _arrow_strings(s: pd.Series) -> pyarrow.ChunkedArray | None:
    """The column as Arrow strings (no copy for pandas' Arrow-backed strings), or None when it holds other values."""
    try:
        values = pyarrow.array(s, from_pandas=True)
    except (pyarrow.ArrowException, TypeError):
        return None
    if isinstance(values, pyarrow.Array):
        values = pyarrow.chunked_array([values])
    return values if pyarrow.types.is_string(values.type) or pyarrow.types.is_large_string(values.type) else None


def _as_series(result: pyarrow.ChunkedArray, s: pd.Series) -> pd.Series:
    # A null passes here: whether a column may be null is its `nullable` rule's verdict.
    return pd.Series(pc.fill_null(result, True).to_numpy(zero_copy_only=False), index=s.index)


def _not_blank(s: pd.Series) -> pd.Series:
    values = _arrow_strings(s)
    if values is None:
        return s.astype("string").str.strip().str.len() > 0
    return _as_series(pc.invert(pc.or_(pc.utf8_is_space(values), pc.equal(pc.binary_length(values), 0))), s)


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _no_control_characters(s: pd.Series) -> pd.Series:
    values = _arrow_strings(s)
    if values is None:
        return ~s.astype("string").str.contains(_CONTROL.pattern, regex=True)
    # UTF-8 never uses the bytes 0x00-0x1f and 0x7f inside a multi-byte character: one pass over the column's bytes
    # finds them, and only a column that has any is looked at row by row.
    flags = [_control_rows(chunk) for chunk in values.chunks]
    return pd.Series(np.concatenate(flags) if flags else np.ones(0, dtype=bool), index=s.index)


def _control_rows(chunk: pyarrow.Array) -> np.ndarray:
    """Per row of a string chunk: True when it has no control character."""
    offsets_type = np.int64 if pyarrow.types.is_large_string(chunk.type) else np.int32
    _, offsets_buffer, data_buffer = chunk.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offsets_type)[chunk.offset : chunk.offset + len(chunk) + 1]
    if data_buffer is None or len(chunk) == 0:
        return np.ones(len(chunk), dtype=bool)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    found = np.flatnonzero((data < 0x20) | (data == 0x7F))
    clean = np.ones(len(chunk), dtype=bool)
    if len(found):
        clean[np.searchsorted(offsets, found + offsets[0], side="right") - 1] = False
    return clean


def _within_length(s: pd.Series, length: int) -> pd.Series:
    values = _arrow_strings(s)
    if values is None:
        return s.astype("string").str.len() <= length
    if len(values) == 0 or (pc.max(pc.binary_length(values)).as_py() or 0) <= length:
        # No value has more bytes than the limit, so none has more characters.
        return pd.Series(np.ones(len(values), dtype=bool), index=s.index)
    return _as_series(pc.less_equal(pc.utf8_length(values), length), s)
