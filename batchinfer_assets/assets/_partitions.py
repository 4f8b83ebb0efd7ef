"""Helpers shared by the daily assets for runs that cover one day or a range of days."""

import datetime as dt

import dagster as dg


def run_days(context: dg.AssetExecutionContext) -> list[str]:
    """The partition keys this step covers, in day order (one day, or a single-run backfill range)."""
    return sorted(context.partition_keys)


def as_date(partition_key: str) -> dt.date:
    """A `YYYY-MM-DD` partition key as a date."""
    return dt.date.fromisoformat(partition_key)


def per_day_metadata(values: dict[str, object]) -> dict[str, object]:
    """A compact per-day breakdown for range runs; empty for single days, whose top-level values say it all."""
    return {"by_day": dg.MetadataValue.json(values)} if len(values) > 1 else {}
