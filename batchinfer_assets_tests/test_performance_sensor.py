"""Performance follows labels and predictions: exactly the scored days whose labels or predictions changed are evaluated again."""

import dataclasses
import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domain import BUILT_IN_DOMAIN as CARD
from batchinfer_assets.resources.domain import DomainResource
from batchinfer_assets.resources.labels_zone import SyntheticLabelsResource
from batchinfer_assets.sensors import PREDICTION_PERFORMANCE, prediction_performance_sensor
from batchinfer_assets.settings import Settings

CUSTOMER_DAYS = "batchinfer_assets_tests.customer_days:domain"

DAYS = ("2025-02-03", "2025-02-04", "2025-02-05")
SCORING = (
    dg.AssetSelection.assets("prediction_performance").upstream()
    - dg.AssetSelection.assets("scoring_model")
)


@pytest.fixture
def settings(pipeline_settings, tmp_path):
    return dataclasses.replace(pipeline_settings, rows_per_day=300, labels_uri=str(tmp_path / "labels"))


def _land(settings, day: str, name: str, ids: list[str]) -> None:
    folder = Path(settings.labels_uri) / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "transaction_id": ids,
            "is_fraud": pa.array([0] * len(ids), pa.int8()),
            "labelled_at": pa.array([1_740_000_000_000_000] * len(ids), pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, folder / name)


def _evaluate(defs, instance, cursor):
    # Called directly, a sensor gets its resources from the context, not from `definitions`.
    resources = {key: defs.resources[key] for key in ("labels", "domain")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources) as context:
        result = prediction_performance_sensor(context)
    keys = [key for request in result.run_requests or [] for key in request.asset_graph_subset.iterate_asset_partitions()]
    assert {k.asset_key for k in keys} <= {PREDICTION_PERFORMANCE}
    assert len(result.run_requests or []) <= 1, "one backfill for all changed days"
    return sorted(k.partition_key for k in keys), result.cursor, result.skip_reason.skip_message if result.skip_reason else None


def test_requests_exactly_the_days_whose_labels_or_predictions_changed(settings):
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        days, cursor, skip = _evaluate(defs, instance, None)
        assert days == [] and skip == "no scored days yet"

        result = dg.materialize(
            list(defs.assets), resources=build_resources(settings), instance=instance, selection=SCORING,
            tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
        )
        assert result.success
        # Every day was evaluated by the scoring run with the labels then known (none): nothing to do.
        days, cursor, skip = _evaluate(defs, instance, cursor)
        assert days == [] and skip == f"labels and predictions unchanged for the 3 scored day(s) {DAYS[0]}..{DAYS[-1]}"

        _land(settings, DAYS[0], "part-1.parquet", [f"{DAYS[0].replace('-', '')}-0000001"])
        _land(settings, DAYS[2], "part-1.parquet", ["x"])
        days, cursor, _ = _evaluate(defs, instance, cursor)
        assert days == [DAYS[0], DAYS[2]]
        assert set(json.loads(cursor)) == set(DAYS)

        days, cursor, _ = _evaluate(defs, instance, cursor)
        assert days == [], "already requested"

        _land(settings, DAYS[0], "part-2.parquet", ["y"])
        days, cursor, _ = _evaluate(defs, instance, cursor)
        assert days == [DAYS[0]]

        # Scored again (say after the model alias moved), without its evaluation: requested once.
        assert dg.materialize(
            list(defs.assets), resources=build_resources(settings), instance=instance,
            selection=dg.AssetSelection.assets("predictions"), partition_key=DAYS[1],
        ).success
        days, cursor, _ = _evaluate(defs, instance, cursor)
        assert days == [DAYS[1]]
        days, cursor, _ = _evaluate(defs, instance, cursor)
        assert days == [], "one request per new predictions, even before the requested run has evaluated the day"


def test_a_cursor_less_start_compares_with_what_each_evaluation_saw(settings):
    defs = build_definitions(settings)
    _land(settings, DAYS[1], "part-1.parquet", ["y"])
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            list(defs.assets), resources=build_resources(settings), instance=instance, selection=SCORING, partition_key=DAYS[1]
        ).success
        # Only predictions for the first day: scored but never evaluated, so it is requested, once its run is over.
        scoring = dg.materialize(
            list(defs.assets), resources=build_resources(settings), instance=instance,
            selection=SCORING - dg.AssetSelection.assets("prediction_performance"), partition_key=DAYS[0],
        )
        assert scoring.success
        run = instance.get_run_by_id(scoring.run_id)
        # A run still in progress may evaluate the day itself: the sensor waits (CANCELING is a run not yet over).
        instance.report_run_canceling(run)
        days, cursor, skip = _evaluate(defs, instance, None)
        assert days == [] and skip.endswith("; 1 day(s) wait for the run scoring them")
        instance.report_run_canceled(run)
        days, _, _ = _evaluate(defs, instance, cursor)
        assert days == [DAYS[0]]


# A day's last synthetic labels come in the drop (00:00 UTC) after its last row's longest delay: day + delay + 1.
@pytest.mark.parametrize(("reference", "watched"), [(CARD, 61), (CUSTOMER_DAYS, 70)])
def test_the_sensor_watches_as_long_as_the_domains_synthetic_labels_keep_coming(tmp_path, reference, watched):
    """The card source's labels are all out 61 days after their day, the test domain's after 76: 70 scored days are all watched."""
    now = dt.date(2025, 6, 1)
    scored = [(now - dt.timedelta(days=n)).isoformat() for n in range(70, 0, -1)]
    resources = {"labels": SyntheticLabelsResource(rows_per_day=10, now=now.isoformat()), "domain": DomainResource(reference=reference)}
    defs = build_definitions(Settings.from_env({}, cwd=tmp_path))
    with dg.instance_for_test() as instance:
        for day in scored:
            instance.report_runless_asset_event(dg.AssetMaterialization("predictions", partition=day))
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=resources) as context:
            result = prediction_performance_sensor(context)
    (request,) = result.run_requests
    requested = sorted(k.partition_key for k in request.asset_graph_subset.iterate_asset_partitions())
    # Never evaluated: every watched day is requested.
    assert requested == scored[-watched:]
