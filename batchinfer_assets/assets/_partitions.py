"""Helpers shared by the daily assets for runs that cover one day or a range of days."""

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

from batchinfer_assets.partitions import PIPELINE_GROUP, daily_partitions
from batchinfer_assets.retries import TRANSIENT_RETRY, final_on_bad_data

# What every daily asset of the pipeline shares: UTC days, one run per backfill range (the model is loaded
# once per run), transient failures retried with backoff, bad data never retried, one lineage group.
DAILY_ASSET_ARGS = {
    "partitions_def": daily_partitions,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "retry_policy": TRANSIENT_RETRY,
    "group_name": PIPELINE_GROUP,
}


def daily_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`dg.asset` with the pipeline's daily partitioning, backfill and retry policies."""
    return lambda fn: dg.asset(**DAILY_ASSET_ARGS, **kwargs)(final_on_bad_data(fn))


def daily_multi_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`dg.multi_asset` with the pipeline's daily partitioning, backfill and retry policies."""
    return lambda fn: dg.multi_asset(**DAILY_ASSET_ARGS, **kwargs)(final_on_bad_data(fn))


def run_days(context: dg.AssetExecutionContext) -> list[str]:
    """The partition keys this step covers, in day order (one day, or a single-run backfill range)."""
    return sorted(context.partition_keys)


def as_date(partition_key: str) -> dt.date:
    """A `YYYY-MM-DD` partition key as a date."""
    return dt.date.fromisoformat(partition_key)


def record_each_day(
    context: dg.AssetExecutionContext,
    metadata_by_day: Mapping[str, Mapping[str, object]],
    asset_key: str | None = None,
) -> None:
    """Attach each day's own figures to that day's materialization.

    A single-run range yields one output for many days; without this every day of the range would show the
    range's totals. Values given here override the output's run-level metadata for that day only.
    """
    for day, metadata in metadata_by_day.items():
        context.add_asset_metadata(dict(metadata), asset_key=asset_key, partition_key=day)
