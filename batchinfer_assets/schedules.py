"""Schedules: each new day is scored once it has closed and landed."""

import dagster as dg

from batchinfer_assets.jobs import daily_scoring_job
from batchinfer_assets.partitions import PARTITIONS_START

# 02:00 UTC leaves two hours for yesterday's landing files to arrive; the schedule requests yesterday.
SCORING_HOUR_UTC = 2

daily_scoring_schedule = dg.build_schedule_from_partitioned_job(
    daily_scoring_job,
    hour_of_day=SCORING_HOUR_UTC,
    minute_of_hour=0,
    name="daily_scoring_schedule",
    description=(
        f"Every day at {SCORING_HOUR_UTC:02d}:00 UTC, runs daily_scoring_job for yesterday's daily partition (UTC days "
        f"from {PARTITIONS_START}), once its landing files have had two hours to arrive."
    ),
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
