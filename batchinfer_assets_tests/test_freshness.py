"""Yesterday's predictions and publication are due by 06:00 UTC: checks under a frozen clock."""

import datetime as dt

import dagster as dg
import pytest
from freezegun import freeze_time

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.freshness import DEADLINE_CRON, FRESH_DAILY_ASSETS, FRESHNESS_CHECKS

PIPELINE = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")
UTC = dt.timezone.utc


@pytest.fixture
def defs(pipeline_settings):
    return build_definitions(pipeline_settings)


def _score_day(defs, settings, instance, day):
    assets = list(defs.assets)
    result = dg.materialize(assets, resources=build_resources(settings), instance=instance, selection=PIPELINE, partition_key=day)
    assert result.success


def _freshness(defs, settings, instance) -> dict[str, bool]:
    checks = dg.AssetSelection.checks(*FRESHNESS_CHECKS)
    result = dg.materialize(
        [*defs.assets, *FRESHNESS_CHECKS],
        resources=build_resources(settings),
        instance=instance,
        selection=checks,
        raise_on_error=False,
    )
    return {e.asset_key.to_user_string(): e.passed for e in result.get_asset_check_evaluations()}


def test_checks_cover_yesterdays_predictions_and_publication():
    keys = {key.asset_key.to_user_string() for check in FRESHNESS_CHECKS for key in check.check_keys}
    assert keys == {"predictions", "published_predictions"}


def test_fresh_before_the_deadline_late_after_it_until_yesterday_lands(defs, pipeline_settings):
    both = ("predictions", "published_predictions")
    with dg.instance_for_test() as instance:
        with freeze_time(dt.datetime(2025, 3, 4, 2, 10, tzinfo=UTC)):
            _score_day(defs, pipeline_settings, instance, "2025-03-03")

        # 2025-03-04 closed at midnight but is not due until 06:00: still fresh.
        with freeze_time(dt.datetime(2025, 3, 5, 5, 30, tzinfo=UTC)):
            assert _freshness(defs, pipeline_settings, instance) == dict.fromkeys(both, True)
        # Past the deadline without 2025-03-04: late.
        with freeze_time(dt.datetime(2025, 3, 5, 7, 0, tzinfo=UTC)):
            assert _freshness(defs, pipeline_settings, instance) == dict.fromkeys(both, False)
        # The late day lands: fresh again.
        with freeze_time(dt.datetime(2025, 3, 5, 7, 30, tzinfo=UTC)):
            _score_day(defs, pipeline_settings, instance, "2025-03-04")
            assert _freshness(defs, pipeline_settings, instance) == dict.fromkeys(both, True)


def test_daily_assets_carry_the_freshness_policy(defs):
    graph = defs.resolve_asset_graph()
    for key in FRESH_DAILY_ASSETS:
        policy = graph.get(key).freshness_policy
        assert policy is not None and policy.deadline_cron == DEADLINE_CRON, key
