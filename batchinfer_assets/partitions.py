"""The one partitioning scheme of the project: UTC days from 2025-01-01."""

import dagster as dg

PARTITIONS_START = "2025-01-01"
# One asset group: the UI then draws the whole lineage expanded instead of one box per stage.
PIPELINE_GROUP = "daily_inference"

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
