"""Row rules a domain's `row_schema` can use (pandera checks whose names become quarantine reasons)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa


def full_match(pattern: str) -> pa.Check:
    """The whole value matches `pattern` (pandera's str_matches anchors only the start, and `$` allows a final newline)."""
    return pa.Check(lambda s: s.str.fullmatch(pattern), name=f"str_fullmatch('{pattern}')")


def not_blank() -> pa.Check:
    """Not empty and not only whitespace."""
    return pa.Check(lambda s: s.str.strip().str.len() > 0, name="not_blank")


def no_control_characters() -> pa.Check:
    """No NUL, newline or other control character (they break CSV exports and PostgreSQL text, and hide in logs)."""
    return pa.Check(lambda s: ~s.str.contains(r"[\x00-\x1f\x7f]", regex=True), name="no_control_characters")


def max_length(length: int) -> pa.Check:
    """At most `length` characters."""
    return pa.Check(lambda s: s.str.len() <= length, name=f"max_length({length})")


def finite() -> pa.Check:
    """Neither NaN nor infinite."""
    return pa.Check(lambda s: s.abs() < np.inf, name="finite")


def text_key() -> list[pa.Check]:
    """The rules of a text key column (a customer, a category): not blank, no control characters."""
    return [not_blank(), no_control_characters()]


def utc_dtype(s: pd.Series) -> bool:
    """Whether a column holds timezone-aware UTC timestamps."""
    return isinstance(s.dtype, pd.DatetimeTZDtype) and str(s.dtype.tz) == "UTC"
