"""A day over day_chunk_rows on the Ray engine: validation, quarantine, features and the snapshot run as Ray tasks on the
loopback cluster and give the local engine's files, and their failures reach the step with nothing written."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.lib import parquet_store
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.spill import bucket_of
from batchinfer_assets.resources.ray_engine import RayScoringEngine, ray_cluster_for
from batchinfer_assets.settings import Settings
from batchinfer_assets_tests.assets.test_big_days import DAY, ROWS, SMALL_CHUNK, _landed_day
from batchinfer_assets_tests.ray.day_stage_domains import MARKER_AMOUNT, RAISED, STEP_PID_VARIABLE
from batchinfer_assets_tests.ray.cluster import LoopbackRayCluster
from batchinfer_assets_tests.ray.test_ray_engine import _hold_cpus, _release
from batchinfer_assets_tests.s3.conftest import REGION, S3Env
from batchinfer_assets_tests.support import materializations

AWAY_FROM_STEP = "batchinfer_assets_tests.ray.day_stage_domains:away_from_step"
STAGES = ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot"]
DAY_TABLES = ("transaction_features", "quarantined_transactions", "input_snapshot")
BUCKETS = -(-ROWS // SMALL_CHUNK)


@pytest.fixture
def landing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The big-days test's landed day, one valid row of its last bucket marked; stored in files of 1,100 rows with row
    groups of 200, so the day's map slices, files and snapshot parts do not line up with its buckets."""
    monkeypatch.setattr(parquet_store, "ROW_GROUP_SIZE", 200)
    monkeypatch.setattr(parquet_store, "ROWS_PER_FILE", 1_100)
    root = tmp_path / "landing"
    frame = _landed_day(root)
    buckets = bucket_of(frame["customer_id"], BUCKETS)
    marked = next(i for i in range(100, ROWS) if buckets[i] == BUCKETS - 1 and frame.loc[i, "amount"] >= 0)
    frame.loc[marked, "amount"] = MARKER_AMOUNT
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / f"dt={DAY}" / "part-0.parquet")
    return root


def _settings(base: Settings, home: Path, landing: Path, **changes) -> Settings:
    values = {
        "home": home,
        "landing_uri": str(landing),
        "storage_uri": str(home / "storage"),
        "predictions_db_url": f"sqlite:///{home / 'predictions.db'}",
        "day_chunk_rows": SMALL_CHUNK,
        "max_invalid_fraction": 0.05,
        **changes,
    }
    return dataclasses.replace(base, **values)


def _on_ray(settings: Settings, cluster: LoopbackRayCluster) -> Settings:
    return dataclasses.replace(settings, scoring_engine="ray", ray_address=cluster.address)


def _run(settings: Settings, assets: list[str], instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    defs = build_definitions(settings)
    return dg.materialize(
        list(defs.assets), resources=build_resources(settings), partition_key=DAY, selection=assets, instance=instance, raise_on_error=False
    )


def _files(settings: Settings, table: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(settings.storage_uri) / table / f"dt={DAY}").glob("*.parquet"))}


def _table(settings: Settings, table: str) -> pd.DataFrame:
    return PartitionedParquetStore(settings.storage_uri).read_partition(table, DAY).to_pandas()


def _logs(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(r.user_message for r in instance.all_logs(result.run_id))


def test_a_big_day_on_the_ray_engine_gives_the_local_engines_files(
    ray_cluster: LoopbackRayCluster, demo_model_store: Settings, landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    local = _settings(demo_model_store, tmp_path / "local", landing)
    # The built-in features, refusing to run in this process: on Ray they are computed by the cluster's workers.
    on_ray = _on_ray(_settings(demo_model_store, tmp_path / "ray", landing, domain=AWAY_FROM_STEP), ray_cluster)
    whole = _settings(demo_model_store, tmp_path / "whole", landing, day_chunk_rows=10_000_000)
    results = {}
    with dg.instance_for_test() as instance:
        for name, settings in (("local", local), ("ray", on_ray), ("whole", whole)):
            with monkeypatch.context() as env:
                if name == "ray":
                    env.setenv(STEP_PID_VARIABLE, str(os.getpid()))
                results[name] = _run(settings, [*STAGES, "predictions"], instance)
            assert results[name].success, name
        logs = _logs(instance, results["ray"])
    assert f"{ROWS:,} rows in {BUCKETS} buckets of whole customer_id groups on the cluster" in logs

    # The map slices (600 rows), the stored files (1,100 rows) and the snapshot parts (500 rows of a file) all differ.
    assert len(_files(on_ray, "raw_transactions")) == 3
    for table in DAY_TABLES:
        ray_files = _files(on_ray, table)
        assert ray_files and ray_files == _files(local, table), table
    hashes = {name: materializations(result, "input_snapshot")[DAY].metadata["content_hash"].value for name, result in results.items()}
    assert hashes["ray"] == hashes["local"] == hashes["whole"]
    gates = {}
    for name, result in results.items():
        [check] = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == "invalid_share_within_limit"]
        gates[name] = {k: check.metadata[k].value for k in ("rows", "quarantined_rows", "reasons")}
    assert gates["ray"] == gates["local"] == gates["whole"]
    assert gates["ray"]["quarantined_rows"] == 4

    # The whole day in memory holds the same rows in the same order.
    for table in DAY_TABLES:
        pd.testing.assert_frame_equal(_table(on_ray, table), _table(whole, table))
    scores = {name: _table(s, "predictions") for name, s in (("local", local), ("ray", on_ray))}
    assert scores["ray"]["transaction_id"].equals(scores["local"]["transaction_id"])
    np.testing.assert_allclose(scores["ray"]["score"], scores["local"]["score"], rtol=0, atol=1e-6)
    # The actors' blocks and the local batches are cut differently; the writer's pages are not: wherever the
    # arithmetic gave the same scores (a reproduction of a Ray-scored day compares files byte for byte), the files
    # are the same.
    bitwise = np.array_equal(scores["ray"]["score"].to_numpy(), scores["local"]["score"].to_numpy())
    assert (_files(on_ray, "predictions") == _files(local, "predictions")) == bitwise


def test_a_big_day_on_s3_is_read_by_the_nodes_and_gives_the_local_engines_objects(
    ray_cluster: LoopbackRayCluster, demo_model_store: Settings, landing: Path, tmp_path: Path, s3_env: S3Env, monkeypatch: pytest.MonkeyPatch
):
    objects = {}
    with dg.instance_for_test() as instance:
        for name in ("local", "ray"):
            settings = _settings(demo_model_store, tmp_path / name, landing, storage_uri=f"s3://{s3_env.bucket}/{name}", aws_region=REGION)
            with monkeypatch.context() as env:
                if name == "ray":
                    settings = _on_ray(dataclasses.replace(settings, domain=AWAY_FROM_STEP), ray_cluster)
                    env.setenv(STEP_PID_VARIABLE, str(os.getpid()))
                assert _run(settings, STAGES, instance).success, name
            for table in DAY_TABLES:
                # On S3 a day is one object: the map slices and snapshot parts are row groups of it (200 rows each).
                key = f"{name}/{table}/dt={DAY}/part-00000.parquet"
                objects[name, table] = s3_env.client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    for table in DAY_TABLES:
        assert objects["ray", table] == objects["local", table], table


@pytest.mark.parametrize(
    ("domain", "stopped_at", "absent"),
    [
        # The domain's feature function raises in the day's last bucket: no features and no quarantine for the day.
        ("raising", "transaction_features", ("transaction_features", "quarantined_transactions")),
        # It returns an infinite feature: the snapshot's validation blocks the day, naming the column, with no snapshot.
        ("infinite", "input_snapshot", ("input_snapshot",)),
    ],
)
def test_a_failing_stage_on_ray_fails_as_on_the_local_engine_and_writes_nothing_for_the_day(
    ray_cluster: LoopbackRayCluster, demo_model_store: Settings, landing: Path, tmp_path: Path, domain, stopped_at, absent
):
    reference = f"batchinfer_assets_tests.ray.day_stage_domains:{domain}"
    failures, logs = {}, {}
    with dg.instance_for_test() as instance:
        for name in ("local", "ray"):
            settings = _settings(demo_model_store, tmp_path / name, landing, domain=reference)
            settings = _on_ray(settings, ray_cluster) if name == "ray" else settings
            result = _run(settings, STAGES, instance)
            assert not result.success
            failures[name] = result.failure_data_for_node("daily_pipeline").error.message
            logs[name] = _logs(instance, result)
            store = PartitionedParquetStore(settings.storage_uri)
            assert store.has_partition("raw_transactions", DAY)
            for table in absent:
                assert not store.has_partition(table, DAY), (name, table)
    if stopped_at == "transaction_features":
        # The feature function raised on a worker of the cluster, and the step failed with its type and message.
        [pid] = re.findall(rf"{DAY} transaction_features/quarantined_transactions: ValueError: {RAISED} \(in process (\d+)\)", failures["ray"])
        assert int(pid) != os.getpid() and f"(in process {os.getpid()})" in failures["local"]
        assert failures["ray"].replace(pid, "N") == failures["local"].replace(str(os.getpid()), "N")
    else:
        assert failures["ray"] == failures["local"]
        assert f"a Ray task failed to validate transaction_features dt={DAY}" in logs["ray"]
        assert f"{DAY}: input_snapshot: features fail validation, nothing is passed to the model: " in failures["ray"]
        assert "finite (1 rows)" in failures["ray"]


def test_day_stage_tasks_that_cannot_start_are_cancelled_by_the_watchdog_naming_why(
    ray_cluster: LoopbackRayCluster, demo_model_store: Settings, landing: Path, tmp_path: Path
):
    settings = _on_ray(_settings(demo_model_store, tmp_path / "ray", landing), ray_cluster)
    engine = RayScoringEngine(cluster=ray_cluster_for(ray_cluster.address), no_progress_timeout_s=5)
    resources = {**build_resources(settings), "scoring_engine": engine}
    # Another job holds every CPU of the cluster: no task of the day's stages can start.
    holder = _hold_cpus(ray_cluster, 2)
    try:
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                list(build_definitions(settings).assets), resources=resources, partition_key=DAY, selection=STAGES,
                instance=instance, raise_on_error=False,
            )
    finally:
        _release(holder)

    assert not result.success
    assert "STEP_UP_FOR_RETRY" not in [event.event_type_value for event in result.all_events]
    message = result.failure_data_for_node("daily_pipeline").error.message
    assert (
        f"RayNoProgressError: the Ray tasks that split, validate and featurize raw_transactions dt={DAY} made no progress "
        "for 5 s (RayScoringEngine.no_progress_timeout_s) and were cancelled"
    ) in message
    assert "The cluster has 2 node(s), 2 CPU(s) (1 + 1), 0 GPU(s); free now: 0 CPU(s), 0 GPU(s)" in message
    assert "each task asks 0.5 CPU (RayScoringEngine.num_cpus_per_stage_task)" in message
    store = PartitionedParquetStore(settings.storage_uri)
    assert store.has_partition("raw_transactions", DAY)
    assert not store.has_partition("transaction_features", DAY) and not store.has_partition("quarantined_transactions", DAY)
