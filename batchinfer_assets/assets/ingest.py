"""Raw transactions as they landed."""

import dagster as dg
import pandas as pd

from batchinfer_assets.assets._partitions import as_date, per_day_metadata, run_days
from batchinfer_assets.partitions import daily_partitions
from batchinfer_assets.resources.landing import LandingZoneResource


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="1",
)
def raw_transactions(context: dg.AssetExecutionContext, landing_zone: LandingZoneResource) -> dg.Output:
    """The day's transactions as they landed, conformed to the contract's columns and types."""
    frames: dict[str, pd.DataFrame] = {}
    for day in run_days(context):
        frames[day] = landing_zone.load_day(as_date(day))
        context.log.info(f"{day}: {len(frames[day])} transactions from {landing_zone.location(as_date(day))}")
    counts = {day: len(frame) for day, frame in frames.items()}
    return dg.Output(
        frames,
        metadata={
            "source": landing_zone.location(as_date(run_days(context)[0])),
            "transactions": sum(counts.values()),
            **per_day_metadata(counts),
        },
    )
