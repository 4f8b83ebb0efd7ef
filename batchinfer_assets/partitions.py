"""The one partitioning scheme of the project: UTC days from `BATCHINFER_START_DATE` (2025-01-01 by default).

Every process that loads the code location (webserver, daemon, each run's worker) must see the same partition set,
so the first day is read from the same variable in each, when this module loads, and refused there if malformed.
"""

import datetime as dt
import os

import dagster as dg

START_DATE_VARIABLE = "BATCHINFER_START_DATE"
DEFAULT_START_DATE = "2025-01-01"
# One asset group: the UI then draws the whole lineage expanded instead of one box per stage.
PIPELINE_GROUP = "daily_inference"


def start_date(raw: str | None) -> str:
    """The first partition day, `YYYY-MM-DD`, from the variable's value (the default when unset)."""
    if raw is None or not raw.strip():
        return DEFAULT_START_DATE
    try:
        return dt.date.fromisoformat(raw.strip()).isoformat()
    except ValueError:
        raise ValueError(f"{START_DATE_VARIABLE} must be a day as YYYY-MM-DD, got {raw!r}") from None


PARTITIONS_START = start_date(os.environ.get(START_DATE_VARIABLE))

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
