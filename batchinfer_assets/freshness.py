"""When a day counts as late: yesterday's scored and published partitions are due by 06:00 UTC.

The verdicts are checks on `delivery_deadline`, an external asset downstream of the two due assets, so that no
launch of the pipeline's assets (an asset page, the lineage, a backfill, the CLI) includes them: Dagster adds
every check that targets a selected asset to a launch, and inside a user's run a freshness check judged
whatever that run was writing, or was skipped. Only `freshness_checks_sensor` records them, once per deadline.

The daily assets carry no Dagster `FreshnessPolicy`: it judges an asset as a whole (any partition materialized since
the window opened), so relaunching an old day from the UI read "Freshness policy: Passing" beside a failed on-time
check for yesterday. The on-time checks are the one verdict.
"""

import datetime as dt
from collections.abc import Iterator, Sequence

import dagster as dg

from batchinfer_assets.partitions import PIPELINE_GROUP, daily_partitions
from batchinfer_assets.tables import PREDICTIONS, PUBLISHED_PREDICTIONS

DEADLINE_HOUR_UTC = 6

PARTITION_CHECKED_ASSETS = tuple(dg.AssetKey(name) for name in (PREDICTIONS, PUBLISHED_PREDICTIONS))

DELIVERY_DEADLINE = dg.AssetKey("delivery_deadline")

# An assets definition without a computation (external), like the pipeline's in `Definitions.assets`, so code that
# hands those to Dagster's APIs (staleness, materialize) needs no special case. No deps: downstream of the pipeline,
# it would join every 'predictions*' selection, which Dagster refuses for an asset it cannot execute.
delivery_deadline = dg.AssetsDefinition(
    specs=[
        dg.AssetSpec(
            DELIVERY_DEADLINE,
            group_name=PIPELINE_GROUP,
            description=(
                f"Yesterday's predictions and published predictions are due by {DEADLINE_HOUR_UTC:02d}:00 UTC. Nothing "
                "is materialized here: its checks record, once per deadline, whether each due day made it "
                "(freshness_checks_sensor)."
            ),
        )
    ]
)


def on_time_check_name(asset: dg.AssetKey) -> str:
    """The name of the check that says whether `asset`'s due day landed by its deadline."""
    return f"{asset.to_user_string()}_on_time"


ON_TIME_CHECK_SPECS = tuple(
    dg.AssetCheckSpec(
        on_time_check_name(asset),
        asset=DELIVERY_DEADLINE,
        additional_deps=[asset],
        description=f"Yesterday's {asset.to_user_string()} partition was materialized by {DEADLINE_HOUR_UTC:02d}:00 UTC.",
    )
    for asset in PARTITION_CHECKED_ASSETS
)


def latest_deadline(now: dt.datetime) -> dt.datetime:
    """The most recent deadline at or before `now` (UTC)."""
    now = now.astimezone(dt.timezone.utc)
    today = now.replace(hour=DEADLINE_HOUR_UTC, minute=0, second=0, microsecond=0)
    return today if now >= today else today - dt.timedelta(days=1)


def due_day(deadline: dt.datetime) -> str:
    """The partition due at `deadline`: the day that closed at the midnight before it."""
    return (deadline.date() - dt.timedelta(days=1)).isoformat()


def judge_on_time(instance: dg.DagsterInstance, asset: dg.AssetKey, deadline: dt.datetime) -> dg.AssetCheckEvaluation:
    """Whether `asset`'s day due at `deadline` had a materialization by then, as a check evaluation of its own."""
    day = due_day(deadline)
    due = f"{deadline:%Y-%m-%d %H:%M} UTC"
    on_time = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[day], before_timestamp=deadline.timestamp()), limit=1
    ).records
    metadata: dict[str, dg.MetadataValue] = {
        "day": dg.MetadataValue.text(day),
        "deadline": dg.MetadataValue.timestamp(deadline),
    }
    if on_time:
        landed = dt.datetime.fromtimestamp(on_time[0].timestamp, dt.timezone.utc)
        metadata["landed_at"] = dg.MetadataValue.timestamp(landed)
        description = f"{asset.to_user_string()} for {day} landed at {landed:%Y-%m-%d %H:%M} UTC, before its deadline {due}"
    else:
        description = (
            f"{asset.to_user_string()} for {day} was not materialized by its deadline {due}: see the day's run "
            f"(Runs, tag dagster/partition={day}) or materialize {day}"
        )
    return dg.AssetCheckEvaluation(
        asset_key=DELIVERY_DEADLINE,
        check_name=on_time_check_name(asset),
        passed=bool(on_time),
        metadata=metadata,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
    )


def on_time_evaluations(instance: dg.DagsterInstance, deadline: dt.datetime) -> list[dg.AssetCheckEvaluation]:
    """Every due asset's verdict for `deadline`; none before the first partition is due."""
    if due_day(deadline) < daily_partitions.start.date().isoformat():
        return []
    return [judge_on_time(instance, asset, deadline) for asset in PARTITION_CHECKED_ASSETS]


@dg.multi_asset_check(specs=list(ON_TIME_CHECK_SPECS), can_subset=True, name="delivery_deadline_checks")
def delivery_deadline_checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
    """The latest deadline's verdicts, when someone executes the checks from their page (the sensor records them otherwise)."""
    deadline = latest_deadline(dt.datetime.now(dt.timezone.utc))
    selected = {key.name for key in context.selected_asset_check_keys}
    for evaluation in on_time_evaluations(context.instance, deadline):
        if evaluation.check_name in selected:
            yield dg.AssetCheckResult(
                asset_key=DELIVERY_DEADLINE,
                check_name=evaluation.check_name,
                passed=evaluation.passed,
                metadata=evaluation.metadata,
                severity=evaluation.severity,
                description=evaluation.description,
            )


FRESHNESS_CHECKS: Sequence[dg.AssetChecksDefinition] = (delivery_deadline_checks,)
