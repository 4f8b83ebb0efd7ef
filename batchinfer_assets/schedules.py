"""Schedules: each new day is scored once it has closed and landed."""

import dagster as dg

from batchinfer_assets.jobs import daily_scoring_job

# 02:00 UTC leaves two hours for yesterday's landing files to arrive; the schedule requests yesterday.
SCORING_HOUR_UTC = 2

daily_scoring_schedule = dg.build_schedule_from_partitioned_job(
    daily_scoring_job,
    hour_of_day=SCORING_HOUR_UTC,
    minute_of_hour=0,
    name="daily_scoring_schedule",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
