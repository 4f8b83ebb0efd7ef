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


def test_a_run_whose_worker_was_killed_is_marked_failed_and_a_live_one_is_not(tmp_path):
    """A real `dg launch` run killed with SIGKILL mid-step stays STARTED until the sensor marks it failed."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from batchinfer_assets.sensors import orphaned_runs_sensor
    from batchinfer_assets.tags import WORKER_TAG

    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BATCHINFER_HOME": str(tmp_path / "home"),
        "BATCHINFER_DEMO_ROWS_PER_DAY": "3000000",  # long enough to be killed inside the step
    }
    dg_cli = str(Path(sys.executable).with_name("dg"))
    worker = subprocess.Popen(
        [dg_cli, "launch", "--assets", "raw_transactions", "--partition", "2025-01-02"],
        cwd=Path(__file__).parents[1], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 240
            run = None
            while time.monotonic() < deadline:
                runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                if runs and WORKER_TAG in runs[0].tags:
                    run = runs[0]
                    break
                assert worker.poll() is None, "the run ended before it could be killed"
                time.sleep(0.2)
            assert run is not None, "the run never reached its step"

            live = orphaned_runs_sensor(dg.build_sensor_context(instance=instance))
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED, live

            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED, "killed: nobody told Dagster"
            orphaned_runs_sensor(dg.build_sensor_context(instance=instance))
            after = instance.get_run_by_id(run.run_id)
            assert after.status == dg.DagsterRunStatus.FAILURE
            failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
            assert f"run worker {run.tags[WORKER_TAG]} is gone" in failure.dagster_event.message
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
