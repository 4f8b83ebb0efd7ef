"""When a day counts as late: yesterday's scored and published partitions are due by 06:00 UTC."""

import datetime as dt
from collections.abc import Sequence

import dagster as dg

from batchinfer_assets.tables import DRIFT_METRICS, PREDICTIONS, PUBLISHED_PREDICTIONS

DEADLINE_CRON = "0 6 * * *"
# The schedule scores yesterday at 02:00 UTC; the window opens at midnight, when yesterday has closed.
DEADLINE_WINDOW = dt.timedelta(hours=6)

FRESH_DAILY_ASSETS = tuple(dg.AssetKey(name) for name in (PREDICTIONS, DRIFT_METRICS, PUBLISHED_PREDICTIONS))
PARTITION_CHECKED_ASSETS = tuple(dg.AssetKey(name) for name in (PREDICTIONS, PUBLISHED_PREDICTIONS))

daily_freshness_policy = dg.FreshnessPolicy.cron(
    deadline_cron=DEADLINE_CRON, lower_bound_delta=DEADLINE_WINDOW, timezone="UTC"
)

# Asset-level policies look at the asset as a whole (backfilling an old day makes it look fresh);
# these checks look at the partition that should exist by the deadline: yesterday's.
FRESHNESS_CHECKS: Sequence[dg.AssetChecksDefinition] = dg.build_time_partition_freshness_checks(
    assets=list(PARTITION_CHECKED_ASSETS), deadline_cron=DEADLINE_CRON, timezone="UTC"
)


def with_freshness_policies(assets: Sequence[dg.AssetsDefinition | dg.SourceAsset]) -> list:
    """The assets with the daily freshness policy set on the ones that must be fresh every morning."""
    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key in FRESH_DAILY_ASSETS:
            return spec.replace_attributes(freshness_policy=daily_freshness_policy)
        return spec

    return [a.map_asset_specs(apply) if isinstance(a, dg.AssetsDefinition) else a for a in assets]
