"""Yesterday's predictions and publication are due by 06:00 UTC: judged by the sensor alone, under a frozen clock."""

import datetime as dt

import dagster as dg
import pytest
from freezegun import freeze_time

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.freshness import DELIVERY_DEADLINE, ON_TIME_CHECK_SPECS
from batchinfer_assets.sensors import freshness_checks_sensor

PIPELINE = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")
UTC = dt.timezone.utc
ON_TIME = {spec.key for spec in ON_TIME_CHECK_SPECS}


@pytest.fixture
def defs(pipeline_settings):
    return build_definitions(pipeline_settings)


def _score_day(defs, settings, instance, day):
    # As a launch from the UI or the CLI selects them: the assets and every check that targets them.
    keys = PIPELINE.resolve(defs.resolve_asset_graph())
    selection = dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys)
    result = dg.materialize(list(defs.assets), resources=build_resources(settings), instance=instance, selection=selection, partition_key=day)
    assert result.success
    assert not [e for e in result.get_asset_check_evaluations() if e.asset_check_key in ON_TIME], "a launch judged freshness"


def _tick(instance, cursor):
    """One sensor tick as the daemon runs it: the verdicts it records, and its new cursor (None: skipped)."""
    result = freshness_checks_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    if isinstance(result, dg.SkipReason):
        return None, cursor
    for evaluation in result.asset_events:
        instance.report_runless_asset_event(evaluation)
    # The tick's line in the UI says what it recorded (not "Sensor function returned an empty result").
    assert result.skip_reason.skip_message.startswith("recorded for "), result.skip_reason
    return {e.check_name: e.passed for e in result.asset_events}, result.cursor


def test_no_launch_of_an_asset_includes_an_on_time_check(defs):
    """Dagster adds the checks of every selected asset to a launch: none of the on-time checks targets a launchable asset."""
    graph = defs.resolve_asset_graph()
    launchable = {key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable}
    assert dg.AssetSelection.checks_for_assets(*launchable).resolve_checks(graph).isdisjoint(ON_TIME)
    assert {key.asset_key for key in ON_TIME} == {DELIVERY_DEADLINE}
    assert not graph.get(DELIVERY_DEADLINE).is_executable
    assert {key.name for key in ON_TIME} == {"predictions_on_time", "published_predictions_on_time"}
    # Nor does a selection of what follows an asset ('predictions*') reach the external delivery_deadline.
    for key in launchable:
        assert dg.AssetSelection.assets(key).downstream().resolve(graph) <= launchable, key


def test_each_deadline_is_judged_once_by_the_sensor(defs, pipeline_settings):
    both = {"predictions_on_time", "published_predictions_on_time"}
    with dg.instance_for_test() as instance:
        with freeze_time(dt.datetime(2025, 3, 4, 2, 10, tzinfo=UTC)):
            _score_day(defs, pipeline_settings, instance, "2025-03-03")

        # 06:00 on 2025-03-04: 2025-03-03 was due, and landed at 02:10.
        with freeze_time(dt.datetime(2025, 3, 4, 6, 5, tzinfo=UTC)):
            verdicts, cursor = _tick(instance, None)
            assert verdicts == dict.fromkeys(both, True)
        with freeze_time(dt.datetime(2025, 3, 4, 23, 0, tzinfo=UTC)):
            assert _tick(instance, cursor)[0] is None, "one verdict per deadline"
        # 06:00 on 2025-03-05 without 2025-03-04: late.
        with freeze_time(dt.datetime(2025, 3, 5, 6, 5, tzinfo=UTC)):
            verdicts, cursor = _tick(instance, cursor)
            assert verdicts == dict.fromkeys(both, False)
        # The late day lands after its deadline: no new verdict until the next deadline, which it does not change.
        with freeze_time(dt.datetime(2025, 3, 5, 7, 30, tzinfo=UTC)):
            _score_day(defs, pipeline_settings, instance, "2025-03-04")
            assert _tick(instance, cursor)[0] is None
        with freeze_time(dt.datetime(2025, 3, 6, 6, 5, tzinfo=UTC)):
            assert _tick(instance, cursor)[0] == dict.fromkeys(both, False), "2025-03-05 is missing"

        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(DELIVERY_DEADLINE, "predictions_on_time"), limit=10
        )
        assert [record.status.value for record in history] == ["FAILED", "FAILED", "SUCCEEDED"]
        assert "2025-03-05" in history[0].event.asset_check_evaluation.description


def test_no_daily_asset_carries_a_freshness_policy_that_would_contradict_the_on_time_checks(defs):
    # Dagster's FreshnessPolicy judges an asset as a whole: an old day relaunched after midnight made it "Passing"
    # while yesterday's on-time check failed. The on-time checks on delivery_deadline are the only verdict.
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).freshness_policy is None, key
