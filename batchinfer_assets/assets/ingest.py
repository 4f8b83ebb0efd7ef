"""Raw transactions as they landed."""

import dagster as dg
import pandas as pd

from batchinfer_assets.assets._partitions import as_date, daily_asset, record_each_day, run_days
from batchinfer_assets.resources.landing import LandingZoneResource


@daily_asset(
    kinds={"pandas", "parquet"},
    code_version="1",
)
def raw_transactions(context: dg.AssetExecutionContext, landing_zone: LandingZoneResource) -> dg.Output:
    """The day's transactions as they landed, conformed to the contract's columns and types."""
    frames: dict[str, pd.DataFrame] = {}
    for day in run_days(context):
        frames[day] = landing_zone.load_day(as_date(day))
        context.log.info(f"{day}: {len(frames[day])} transactions from {landing_zone.location(as_date(day))}")
    record_each_day(
        context,
        {
            day: {"source": landing_zone.location(as_date(day)), "transactions": len(frame), "row_count": len(frame)}
            for day, frame in frames.items()
        },
    )
    return dg.Output(frames, metadata={"transactions": sum(len(f) for f in frames.values())})
