"""Publishing follows predictions: every newly scored day, old days and ranges included, exactly once."""

import dagster as dg
import pytest

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.sensors import PUBLISHED_PREDICTIONS, publish_predictions_sensor

SCORING = dg.AssetSelection.assets("predictions").upstream() - dg.AssetSelection.assets("scoring_model")
PUBLISHING = dg.AssetSelection.assets("published_predictions")


@pytest.fixture
def defs(pipeline_settings):
    return build_definitions(pipeline_settings)


def _materialize(defs, settings, instance, selection, **kwargs):
    assets = list(defs.assets)
    result = dg.materialize(assets, resources=build_resources(settings), instance=instance, selection=selection, **kwargs)
    assert result.success


def _evaluate(defs, instance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = publish_predictions_sensor(context)
    days = sorted(
        key.partition_key
        for request in result.run_requests or []
        for key in request.asset_graph_subset.iterate_asset_partitions()
    )
    for request in result.run_requests or []:
        assert {k.asset_key for k in request.asset_graph_subset.iterate_asset_partitions()} == {PUBLISHED_PREDICTIONS}
    return days, result.cursor


def _range(a, b):
    return {"tags": {"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b}}


def test_trigger_requests_each_newly_scored_day_once(defs, pipeline_settings):
    with dg.instance_for_test() as instance:
        days, cursor = _evaluate(defs, instance, None)
        assert days == []

        _materialize(defs, pipeline_settings, instance, SCORING, partition_key="2025-02-01")
        days, cursor = _evaluate(defs, instance, cursor)
        assert days == ["2025-02-01"]

        _materialize(defs, pipeline_settings, instance, SCORING, **_range("2025-01-10", "2025-01-13"))
        days, cursor = _evaluate(defs, instance, cursor)
        assert days == ["2025-01-10", "2025-01-11", "2025-01-12", "2025-01-13"]

        days, cursor = _evaluate(defs, instance, cursor)
        assert days == []


def test_days_published_by_the_scoring_run_itself_are_not_requested_again(defs, pipeline_settings):
    with dg.instance_for_test() as instance:
        _materialize(defs, pipeline_settings, instance, SCORING | PUBLISHING, partition_key="2025-03-01")
        days, cursor = _evaluate(defs, instance, None)
        assert days == []
        assert cursor is not None and int(cursor) > 0

        # A re-score of the same day (say after the model alias moved) must be published again.
        _materialize(defs, pipeline_settings, instance, dg.AssetSelection.assets("predictions"), partition_key="2025-03-01")
        days, _ = _evaluate(defs, instance, cursor)
        assert days == ["2025-03-01"]
