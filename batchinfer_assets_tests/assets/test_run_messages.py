"""What a run says: nothing alarming on success, and one clear sentence, naming what to run, when a day stops."""

import dagster as dg
import pytest

from batchinfer_assets.assets.pipeline import stopped_summary
from batchinfer_assets.definitions import build_definitions, build_resources

PIPELINE = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")


def _messages(instance, run_id: str) -> list[tuple[int, str]]:
    return [(entry.level, entry.user_message) for entry in instance.all_logs(run_id) if not entry.is_dagster_event]


def test_a_successful_day_logs_no_missing_outputs_and_records_each_verdict_on_its_day(pipeline_settings):
    defs = build_definitions(pipeline_settings)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            list(defs.assets), resources=build_resources(pipeline_settings), instance=instance, selection=PIPELINE,
            partition_key="2025-03-03",
        )
        assert result.success
        messages = _messages(instance, result.run_id)
        assert not [m for _, m in messages if "did not yield" in m], messages
        for asset, check in (("transaction_features", "invalid_share_within_limit"), ("input_snapshot", "matches_model_signature")):
            [record] = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey(asset), check), limit=5)
            assert (record.status.value, record.partition) == ("SUCCEEDED", "2025-03-03")


def test_a_day_without_its_upstream_stops_with_one_error_naming_what_to_run(pipeline_settings):
    defs = build_definitions(pipeline_settings)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            list(defs.assets), resources=build_resources(pipeline_settings), instance=instance,
            selection=dg.AssetSelection.assets("predictions"), partition_key="2025-03-05", raise_on_error=False,
        )
        assert not result.success
        failure = result.failure_data_for_node("daily_pipeline").error.message
        assert "1 of 1" not in failure and "the others completed" not in failure
        assert "2025-03-05: predictions: input_snapshot for 2025-03-05 is not in storage (never materialized)" in failure
        assert "dg launch --assets '+predictions' --partition 2025-03-05" in failure
        warnings = [m for level, m in _messages(instance, result.run_id) if level == 30]
        assert warnings == [], "a warning before the failure"


@pytest.mark.parametrize(
    ("stopped", "days", "expected"),
    [
        ({"2025-01-02": "predictions: gone"}, 1, "2025-01-02: predictions: gone"),
        ({"2025-01-02": "a", "2025-01-03": "b"}, 2, "all 2 days stopped: 2025-01-02: a | 2025-01-03: b"),
        ({"2025-01-03": "b"}, 5, "1 of 5 day(s) stopped (the other 4 completed): 2025-01-03: b"),
    ],
)
def test_the_failure_counts_the_days_that_stopped_and_completed(stopped, days, expected):
    assert stopped_summary(stopped, days) == expected


def test_a_range_run_shows_its_day_and_stage_in_a_tag_and_logs_each_day_with_the_time_left(pipeline_settings):
    defs = build_definitions(pipeline_settings)
    tags = {"dagster/asset_partition_range_start": "2025-03-03", "dagster/asset_partition_range_end": "2025-03-05"}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            list(defs.assets), resources=build_resources(pipeline_settings), instance=instance,
            selection=dg.AssetSelection.assets("raw_transactions", "transaction_features"), tags=tags,
        )
        assert result.success
        messages = [m for _, m in _messages(instance, result.run_id)]
        done = [m for m in messages if ": done, day " in m]
        assert [m.split(":")[0] for m in done] == ["2025-03-03", "2025-03-04", "2025-03-05"]
        assert "day 1 of 3" in done[0] and "left" in done[0] and "left" not in done[2]
        assert instance.get_run_by_id(result.run_id).tags["batchinfer/progress"] == "3 of 3 day(s) done"


@pytest.mark.parametrize(("seconds", "said"), [(4.2, "4 s"), (89, "89 s"), (90, "2 min"), (3600, "1 h 0 min"), (4830, "1 h 20 min")])
def test_durations_read_as_a_wait(seconds, said):
    from batchinfer_assets.assets.pipeline import _duration

    assert _duration(seconds) == said
