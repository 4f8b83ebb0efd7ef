"""The Ray engine on a real two-node loopback cluster: the local engine's bytes, the pin, and failures that name things."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.ray_engine import RayScoringEngine, ray_cluster_for
from batchinfer_assets.resources.table_storage import TableStorageResource
from batchinfer_assets.resources.torch_scorer import TorchScorerResource
from batchinfer_assets.tags import MODEL_VERSION_TAG
from batchinfer_assets_tests.conftest import TINY_COLUMNS, tiny_module
from batchinfer_assets_tests.processes import free_port
from batchinfer_assets_tests.ray.cluster import REPO, LoopbackRayCluster
from batchinfer_assets_tests.support import materialize_pipeline, materializations, pipeline_resources

DAY = "2025-01-02"
# The slow model's seconds per forward pass, and a no-progress timeout well above it (and above an actor's start).
SLOW_BATCH_S = 2.0
SLOW_TIMEOUT_S = 15.0
SCORING = ["raw_transactions", "transaction_features", "input_snapshot", "predictions"]


def ray_engine(address: str, **config) -> RayScoringEngine:
    """Two actors of a quarter CPU each (unless `config` says otherwise)."""
    return RayScoringEngine(cluster=ray_cluster_for(address), **{"actors": 2, "num_cpus_per_actor": 0.25, **config})


def day_files(storage: str | Path, table: str = "predictions") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (Path(storage) / table / f"dt={DAY}").glob("*.parquet")}


def test_ray_scores_a_pipeline_day_like_the_local_engine(ray_cluster: LoopbackRayCluster, pipeline_settings):
    settings = pipeline_settings
    assets = list(build_definitions(settings).assets)
    # 400-row forward passes and 400-row actor calls: the day (1,500 rows) is four calls spread over both actors.
    scorer = TorchScorerResource(device="cpu", batch_size=400)
    local_resources = {**build_resources(settings), "torch_scorer": scorer}
    ray_resources = {**local_resources, "scoring_engine": ray_engine(ray_cluster.address, rows_per_batch=400)}
    with dg.instance_for_test() as instance:
        local = dg.materialize(assets, resources=local_resources, partition_key=DAY, instance=instance, selection=SCORING)
        local_table = PartitionedParquetStore(settings.storage_uri).read_partition("predictions", DAY)
        on_ray = dg.materialize(assets, resources=ray_resources, partition_key=DAY, instance=instance, selection=["predictions"])

    ray_table = PartitionedParquetStore(settings.storage_uri).read_partition("predictions", DAY)
    assert ray_table.schema.equals(local_table.schema, check_metadata=True)
    for column in ("transaction_id", "label", "model_name", "model_version"):
        assert ray_table.column(column).equals(local_table.column(column)), column
    ray_scores, local_scores = ray_table.column("score").to_numpy(), local_table.column("score").to_numpy()
    # The MLP's matrix products round differently on the actor's one torch thread than on this process's two: a
    # few scores move by an ulp. (The tiny model's 3-term products do not: bit-identical, next test.)
    np.testing.assert_allclose(ray_scores, local_scores, rtol=0, atol=1e-6)

    local_meta = materializations(local, "predictions")[DAY]
    meta = {k: v.value for k, v in materializations(on_ray, "predictions")[DAY].metadata.items()}
    assert (meta["engine"], meta["engine_details"]["actors"], meta["device"], meta["batch_size"]) == ("ray", 2, "cpu", 400)
    assert meta["engine_details"]["rows_per_second_per_actor"] > 0
    for key in ("row_count", "model_version", "pinned_model_uri", "input_snapshot_hash", "positive_rate"):
        assert meta[key] == local_meta.metadata[key].value, key
    assert (local_meta.metadata["engine"].value, local_meta.metadata["engine_details"].value["actors"]) == ("local", 1)
    assert meta["row_count"] == 1500


class _NaNAboveOne(torch.nn.Module):
    """The tiny model, except rows whose first feature is above 1 score NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_module()

    def forward(self, x):
        scores = self.inner(x)
        return torch.where(x[:, :1] > 1.0, torch.full_like(scores, float("nan")), scores)


class _Slow(torch.nn.Module):
    """The tiny model, sleeping `seconds` in every forward pass: a job that is slow but keeps scoring."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.inner = tiny_module()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


class _HangsWhenTold(torch.nn.Module):
    """The tiny model, except that once the marker file exists every forward pass blocks for an hour (a stuck UDF)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.inner = tiny_module()
        self.marker = marker

    def forward(self, x):
        if os.path.exists(self.marker):
            time.sleep(3600)
        return self.inner(x)


class _DiesOnce(torch.nn.Module):
    """The tiny model, except that the first forward pass anywhere kills its process (and leaves a marker file)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.inner = tiny_module()
        self.marker = marker

    def forward(self, x):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return self.inner(x)


@pytest.fixture(scope="module")
def tiny_versions(tmp_path_factory):
    """A private MLflow store: `tiny` v1 and v2 (champion, shifted) and `tiny-nan` v1, all pt2 (no test code to unpickle)."""
    import mlflow

    from batchinfer_assets.lib.model_loading import ensure_experiment, log_torch_model, make_client, mlflow_uris

    root = tmp_path_factory.mktemp("ray_mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = make_client(tracking_uri)
    experiment_id = ensure_experiment(client, "tiny-ray", str(root / "artifacts"))
    shifted = tiny_module()
    with torch.no_grad():
        shifted[0].bias += 1.0
    example = np.random.default_rng(1).normal(size=(8, len(TINY_COLUMNS))).astype(np.float32)
    with mlflow_uris(tracking_uri), mlflow.start_run(experiment_id=experiment_id):
        for name, module in (("tiny", tiny_module()), ("tiny", shifted), ("tiny-nan", _NaNAboveOne().eval())):
            log_torch_model(module, input_columns=TINY_COLUMNS, example=example, serialization_format="pt2", registered_model_name=name)
        # Pickled (a class the actors import from this module); logging runs it once, so the marker exists meanwhile.
        marker = root / "died-once"
        marker.touch()
        dies_once = _DiesOnce(str(marker)).eval()
        log_torch_model(dies_once, input_columns=TINY_COLUMNS, example=example, serialization_format="pickle", registered_model_name="tiny-dies-once")
        marker.unlink()
        hang = _HangsWhenTold(str(root / "hang")).eval()
        log_torch_model(hang, input_columns=TINY_COLUMNS, example=example, serialization_format="pickle", registered_model_name="tiny-hangs")
        log_torch_model(_Slow(SLOW_BATCH_S).eval(), input_columns=TINY_COLUMNS, example=example, serialization_format="pickle", registered_model_name="tiny-slow")
    client.set_registered_model_alias("tiny", "champion", "2")
    return tracking_uri


def _snapshot(rows: int = 1200) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({c: rng.normal(size=rows).astype(np.float32) for c in TINY_COLUMNS})
    frame.insert(0, "transaction_id", pd.array([f"t{i:06d}" for i in range(rows)], dtype="string"))
    return frame


def _write_snapshot(storage: Path, frame: pd.DataFrame) -> None:
    PartitionedParquetStore(storage).write_partition("input_snapshot", DAY, pa.Table.from_pandas(frame, preserve_index=False))


def _tiny_resources(
    tracking_uri: str, storage: Path, model_uri: str, cluster: LoopbackRayCluster | None = None, rows_per_batch: int = 300
) -> dict:
    """The pipeline's resources on the tiny store: the Ray engine on `cluster`, or the local engine without one."""
    registry = MlflowModelRegistryResource(tracking_uri=tracking_uri, model_uri=model_uri)
    engine = {"scoring_engine": ray_engine(cluster.address, rows_per_batch=rows_per_batch)} if cluster else {}
    return pipeline_resources(storage, registry, **engine)


def test_the_run_tag_pin_is_what_the_actors_load_on_a_day_of_several_files(ray_cluster, tiny_versions, tmp_path, monkeypatch):
    from batchinfer_assets.lib import parquet_store

    # Three files (500, 500 and 200 rows): the predictions must still come back in the snapshot's order.
    monkeypatch.setattr(parquet_store, "ROWS_PER_FILE", 500)
    frame = _snapshot()
    _write_snapshot(tmp_path, frame)
    assert len(PartitionedParquetStore(tmp_path).partition_files("input_snapshot", DAY)) == 3
    # 500-row calls: the local engine's batches too (it reads each file on its own), so the floats can match exactly.
    resources = _tiny_resources(tiny_versions, tmp_path, "models:/tiny@champion", ray_cluster, rows_per_batch=500)

    pinned = {MODEL_VERSION_TAG: "1"}
    materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny@champion"), ["predictions"], partition_key=DAY, tags=pinned)
    local = PartitionedParquetStore(tmp_path).read_partition("predictions", DAY)

    result = materialize_pipeline(resources, ["predictions"], partition_key=DAY, tags=pinned)

    meta = materializations(result, "predictions")[DAY].metadata
    assert (meta["model_version"].value, meta["pinned_model_uri"].value) == ("1", "models:/tiny/1")
    stored = PartitionedParquetStore(tmp_path).read_partition("predictions", DAY)
    assert stored.column("transaction_id").to_pylist() == frame["transaction_id"].tolist()
    assert set(stored.column("model_version").to_pylist()) == {"1"}
    # Version 1's scores, not the champion's (version 2 is shifted), and the local engine's to the bit.
    for column in local.column_names:
        assert stored.column(column).equals(local.column(column)), column
    with torch.inference_mode():
        expected = tiny_module()(torch.from_numpy(frame[list(TINY_COLUMNS)].to_numpy(np.float32))).numpy().reshape(-1)
    np.testing.assert_allclose(stored.column("score").to_numpy(), expected, rtol=0, atol=1e-6)


def test_non_finite_scores_fail_the_day_naming_model_day_and_a_row_and_keep_the_old_predictions(ray_cluster, tiny_versions, tmp_path):
    frame = _snapshot()
    _write_snapshot(tmp_path, frame)
    # The previous predictions come from the local engine: what matters is that the failed Ray job leaves them as they were.
    materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny/1"), ["predictions"], partition_key=DAY)
    before = day_files(tmp_path)
    first_bad = frame["transaction_id"][frame[TINY_COLUMNS[0]] > 1.0].iloc[0]

    with pytest.raises(dg.Failure) as failed:
        materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny-nan/1", ray_cluster), ["predictions"], partition_key=DAY)

    message = str(failed.value)
    assert "ModelOutputError: Model models:/tiny-nan/1 returned" in message and f"non-finite score(s) of 300 in input_snapshot dt={DAY}" in message
    # The first failing batch is the first one (rows are scored in order within a batch); its first NaN row is named.
    assert f"e.g. transaction_id {first_bad!r}" in message
    assert day_files(tmp_path) == before


def test_a_missing_model_column_is_named_before_the_cluster_does_any_work(ray_cluster, tiny_versions, tmp_path):
    _write_snapshot(tmp_path, _snapshot())
    materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny/1"), ["predictions"], partition_key=DAY)
    before = day_files(tmp_path)

    _write_snapshot(tmp_path, _snapshot().drop(columns=["velocity"]))
    with pytest.raises(dg.Failure, match=f"MissingInputColumnsError: missing column\\(s\\) velocity required by the model models:/tiny/1: not in input_snapshot dt={DAY}"):
        materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny/1", ray_cluster), ["predictions"], partition_key=DAY)
    assert day_files(tmp_path) == before


def test_an_unreachable_cluster_fails_once_naming_its_address(tiny_versions, tmp_path):
    _write_snapshot(tmp_path, _snapshot())
    address = f"127.0.0.1:{free_port()}"
    registry = MlflowModelRegistryResource(tracking_uri=tiny_versions, model_uri="models:/tiny/1")
    resources = pipeline_resources(tmp_path, registry, scoring_engine=ray_engine(address))

    result = materialize_pipeline(resources, ["predictions"], partition_key=DAY, raise_on_error=False)

    assert not result.success
    events = [event.event_type_value for event in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in events and events.count("STEP_FAILURE") == 1
    error = result.failure_data_for_node("daily_pipeline").error
    assert f"RayClusterUnreachableError: cannot reach the Ray cluster at {address} (RAY_ADDRESS)" in error.message
    assert not (tmp_path / "predictions").exists()


def test_a_day_on_s3_is_read_by_the_nodes_and_committed_as_one_object(ray_cluster, tiny_versions, s3_env, tmp_path):
    uri = f"s3://{s3_env.bucket}/warehouse"
    store = PartitionedParquetStore(uri, s3_client=s3_env.client)
    store.write_partition("input_snapshot", DAY, pa.Table.from_pandas(_snapshot(), preserve_index=False))
    on_s3 = {"table_storage": TableStorageResource(base_uri=uri)}
    registry = MlflowModelRegistryResource(tracking_uri=tiny_versions, model_uri="models:/tiny/1")
    local_resources = pipeline_resources(tmp_path, registry, **on_s3)
    materialize_pipeline(local_resources, ["predictions"], partition_key=DAY)
    local = store.read_partition("predictions", DAY)

    materialize_pipeline({**local_resources, "scoring_engine": ray_engine(ray_cluster.address)}, ["predictions"], partition_key=DAY)

    listed = s3_env.client.list_objects_v2(Bucket=s3_env.bucket, Prefix=f"warehouse/predictions/dt={DAY}/")
    assert [item["Key"] for item in listed["Contents"]] == [f"warehouse/predictions/dt={DAY}/part-00000.parquet"]
    stored = store.read_partition("predictions", DAY)
    for column in local.column_names:
        assert stored.column(column).equals(local.column(column)), column


def test_an_actor_that_dies_is_restarted_and_its_batch_retried(ray_cluster, tiny_versions, tmp_path):
    frame = _snapshot()
    _write_snapshot(tmp_path, frame)
    marker = Path(tiny_versions.removeprefix("sqlite:///")).parent / "died-once"
    assert not marker.exists()

    materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny-dies-once/1", ray_cluster), ["predictions"], partition_key=DAY)

    assert marker.exists(), "an actor died in its first batch"
    stored = PartitionedParquetStore(tmp_path).read_partition("predictions", DAY)
    assert stored.column("transaction_id").to_pylist() == frame["transaction_id"].tolist()
    with torch.inference_mode():
        expected = tiny_module()(torch.from_numpy(frame[list(TINY_COLUMNS)].to_numpy(np.float32))).numpy().reshape(-1)
    np.testing.assert_allclose(stored.column("score").to_numpy(), expected, rtol=0, atol=1e-6)


def test_the_default_engine_scores_a_day_on_two_one_cpu_nodes(ray_cluster, tiny_versions, tmp_path):
    """Issue 25: on `ray start --num-cpus 1` twice, a 1-CPU read task beside the pool found no node with room: it hung."""
    frame = _snapshot()
    _write_snapshot(tmp_path, frame)
    registry = MlflowModelRegistryResource(tracking_uri=tiny_versions, model_uri="models:/tiny/1")
    # The engine `BATCHINFER_SCORING_ENGINE=ray` builds (every default), with 300-row calls: the day is four batches.
    engine = RayScoringEngine(cluster=ray_cluster_for(ray_cluster.address), rows_per_batch=300)

    result = materialize_pipeline(pipeline_resources(tmp_path, registry, scoring_engine=engine), ["predictions"], partition_key=DAY)

    meta = materializations(result, "predictions")[DAY].metadata
    # Sized from the cluster: 2 CPUs, less a read task's 0.25 on each node wherever the actors land, hold three 0.5-CPU actors.
    assert (meta["engine"].value, meta["engine_details"].value["actors"], meta["row_count"].value) == ("ray", 3, len(frame))
    stored = PartitionedParquetStore(tmp_path).read_partition("predictions", DAY)
    assert stored.column("transaction_id").to_pylist() == frame["transaction_id"].tolist()
    with torch.inference_mode():
        expected = tiny_module()(torch.from_numpy(frame[list(TINY_COLUMNS)].to_numpy(np.float32))).numpy().reshape(-1)
    np.testing.assert_allclose(stored.column("score").to_numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"actors": 4}, "the pool asks 4 actor(s) x 0.5 CPU, and 0.25 CPU per read task (RayScoringEngine.actors=4,"),
        ({"num_gpus_per_actor": 1.0}, "the pool asks 1 actor(s) x 0.5 CPU + 1 GPU, and 0.25 CPU per read task (RayScoringEngine.actors=unset,"),
    ],
)
def test_a_pool_the_cluster_cannot_hold_is_refused_before_any_work_naming_cluster_and_setting(ray_cluster, tiny_versions, tmp_path, config, named):
    _write_snapshot(tmp_path, _snapshot())
    materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny/1"), ["predictions"], partition_key=DAY)
    before = day_files(tmp_path)
    registry = MlflowModelRegistryResource(tracking_uri=tiny_versions, model_uri="models:/tiny/1")
    engine = RayScoringEngine(cluster=ray_cluster_for(ray_cluster.address), rows_per_batch=300, **config)

    result = materialize_pipeline(pipeline_resources(tmp_path, registry, scoring_engine=engine), ["predictions"], partition_key=DAY, raise_on_error=False)

    assert not result.success
    assert "STEP_UP_FOR_RETRY" not in [event.event_type_value for event in result.all_events]
    message = result.failure_data_for_node("daily_pipeline").error.message
    assert "RayPoolDoesNotFitError: the Ray cluster cannot hold the scoring pool: it has 2 node(s), 2 CPU(s) (1 + 1), 0 GPU(s)" in message
    assert named in message
    assert day_files(tmp_path) == before


def _hold_cpus(cluster: LoopbackRayCluster, cpus: int) -> subprocess.Popen:
    """Another Ray job that holds `cpus` CPUs, one per node (a placement group), until its stdin closes."""
    script = (
        "import sys, ray; from ray.util.placement_group import placement_group; "
        "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
        "group = placement_group([{'CPU': 1}] * int(sys.argv[2]), strategy='STRICT_SPREAD'); ray.get(group.ready()); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, cluster.address, str(cpus)],
        cwd=REPO, env=cluster.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    ready, _, _ = select.select([holder.stdout], [], [], 120)
    if not ready or holder.stdout.readline().strip() != "held":
        _release(holder)
        raise RuntimeError("the job holding the cluster's CPUs did not start")
    return holder


def _release(holder: subprocess.Popen) -> None:
    """End the holding job; Ray frees its placement group when the job's driver goes."""
    holder.stdin.close()
    try:
        holder.wait(timeout=30)
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.wait()


def test_a_job_that_cannot_be_scheduled_is_cancelled_by_the_watchdog_naming_why(ray_cluster, tiny_versions, tmp_path):
    _write_snapshot(tmp_path, _snapshot())
    materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny/1"), ["predictions"], partition_key=DAY)
    before = day_files(tmp_path)
    registry = MlflowModelRegistryResource(tracking_uri=tiny_versions, model_uri="models:/tiny/1")
    # The pool fits the cluster on paper; another job holds every CPU, so neither a read task nor an actor can start.
    resources = pipeline_resources(tmp_path, registry, scoring_engine=ray_engine(ray_cluster.address, no_progress_timeout_s=5))

    holder = _hold_cpus(ray_cluster, 2)
    threads_before = set(threading.enumerate())
    try:
        result = materialize_pipeline(resources, ["predictions"], partition_key=DAY, raise_on_error=False)
    finally:
        _release(holder)

    assert not result.success
    assert "STEP_UP_FOR_RETRY" not in [event.event_type_value for event in result.all_events]
    message = result.failure_data_for_node("daily_pipeline").error.message
    assert "RayNoProgressError: the Ray job made no progress for 5 s (RayScoringEngine.no_progress_timeout_s) and was cancelled" in message
    assert "The cluster has 2 node(s), 2 CPU(s) (1 + 1), 0 GPU(s); free now: 0 CPU(s), 0 GPU(s)" in message
    assert "the pool asked 2 actor(s) x 0.25 CPU, and 0.25 CPU per read task" in message
    assert "raise RayScoringEngine.no_progress_timeout_s" in message
    assert day_files(tmp_path) == before
    # Nothing of the job is left waiting inside Ray: a thread still blocked in Ray after the step left the cluster
    # crashes the process (SIGSEGV) when it joins a cluster again (ray-project/ray#31145), as CI once saw.
    assert [thread.name for thread in set(threading.enumerate()) - threads_before] == []


def test_a_model_that_stops_scoring_is_cancelled_by_the_watchdog_naming_why(ray_cluster, tiny_versions, tmp_path):
    _write_snapshot(tmp_path, _snapshot())
    materialize_pipeline(_tiny_resources(tiny_versions, tmp_path, "models:/tiny/1"), ["predictions"], partition_key=DAY)
    before = day_files(tmp_path)
    registry = MlflowModelRegistryResource(tracking_uri=tiny_versions, model_uri="models:/tiny-hangs/1")
    resources = pipeline_resources(tmp_path, registry, scoring_engine=ray_engine(ray_cluster.address, no_progress_timeout_s=5))
    hang = Path(tiny_versions.removeprefix("sqlite:///")).parent / "hang"

    hang.touch()
    try:
        result = materialize_pipeline(resources, ["predictions"], partition_key=DAY, raise_on_error=False)
    finally:
        hang.unlink()

    assert not result.success
    message = result.failure_data_for_node("daily_pipeline").error.message
    assert "RayNoProgressError: the Ray job made no progress for 5 s (RayScoringEngine.no_progress_timeout_s)" in message
    assert "The cluster has 2 node(s), 2 CPU(s) (1 + 1), 0 GPU(s); free now:" in message
    # Ray Data's own account of where the job stood comes along.
    assert "Ray Data said: Dataset execution made no progress" in message
    assert day_files(tmp_path) == before


def test_the_watchdog_lets_a_slow_job_that_keeps_scoring_finish(ray_cluster, tiny_versions, tmp_path):
    frame = _snapshot()
    _write_snapshot(tmp_path, frame)
    registry = MlflowModelRegistryResource(tracking_uri=tiny_versions, model_uri="models:/tiny-slow/1")
    # One actor, twelve 100-row batches of SLOW_BATCH_S each: the job lasts longer than the timeout, no gap does.
    engine = ray_engine(ray_cluster.address, actors=1, rows_per_batch=100, no_progress_timeout_s=SLOW_TIMEOUT_S)
    assert len(frame) / 100 * SLOW_BATCH_S > SLOW_TIMEOUT_S

    result = materialize_pipeline(pipeline_resources(tmp_path, registry, scoring_engine=engine), ["predictions"], partition_key=DAY)

    assert materializations(result, "predictions")[DAY].metadata["row_count"].value == len(frame)
    stored = PartitionedParquetStore(tmp_path).read_partition("predictions", DAY)
    assert stored.column("transaction_id").to_pylist() == frame["transaction_id"].tolist()
