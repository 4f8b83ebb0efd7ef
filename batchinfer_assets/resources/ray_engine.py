"""Scores a day on a Ray cluster: Ray Data reads the snapshot's files, a pool of actors scores, the step commits.

A day of more than `day_chunk_rows` rows is also validated, featurized and its snapshot validated there, as Ray
tasks (`ray_day_stages`, through `RayScoringEngine.day_runner`).

Needs the `ray` extra (`pip install -e '.[ray]'`); `build_resources` imports this module only when
`BATCHINFER_SCORING_ENGINE=ray`.

- The cluster is a dagster-ray `RayResource`: `LocalRay` (a Ray started in the step's process for the run and
  shut down after it) or `ExistingRayCluster` (the cluster `RAY_ADDRESS` names). Both connect lazily, when the
  pipeline step first needs to score, and disconnect when the step ends.
- Each actor loads the run's pinned model version once (`TorchScorerResource.load`, the local engine's loading,
  device choice and output checks) and scores `rows_per_batch` rows per call.
- The step's process reads the actors' output in snapshot order and writes it through the store's
  `partition_writer`: the day is committed with the store's own protocol (a staging folder swapped in with renames
  locally, one object replaced by one upload on S3) only after every block was scored. Nothing the actors do
  touches the day's folder, so a failed, killed or disconnected Ray job leaves the previous predictions as they were.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster_ray import LocalRay, RayResource
from dagster_ray.configs import Lifecycle, RayDataExecutionOptions
from pydantic import Field

from batchinfer_assets.lib.batching import record_batch_matrix
from batchinfer_assets.lib.model_loading import ModelResolutionError, ResolvedModel
from batchinfer_assets.lib.parquet_store import LocalBackend, PartitionedParquetStore, S3Backend
from batchinfer_assets.lib.ray_pool import (
    NodeResources,
    PoolRequest,
    RayNoProgressError,
    no_progress_message,
    nodes_from_ray,
    pool_size,
)
from batchinfer_assets.lib.redaction import redact
from batchinfer_assets.resources.scoring_engine import DayRunner, RayClusterUnreachableError, RemoteScoringEngine
from batchinfer_assets.resources.torch_scorer import LoadedModel, MissingInputColumnsError, ModelOutputError, TorchScorerResource
from batchinfer_assets.tables import INPUT_SNAPSHOT, PREDICTIONS

RAY_ADDRESS_VAR = "RAY_ADDRESS"
# Per-batch statistics ride along in these columns, set on one row per batch and null elsewhere (so they stay
# correct however Ray splits or joins blocks); the step drops them before writing.
_STATS_SCHEMA = pa.schema(
    [
        ("_stat_actor", pa.string()),
        ("_stat_device", pa.string()),
        ("_stat_rows", pa.int64()),
        ("_stat_busy_s", pa.float64()),
        ("_stat_batch_size", pa.int64()),
        ("_stat_backoffs", pa.int64()),
    ]
)
# A batch the model cannot score comes back as one row naming the error instead of its predictions: errors as data
# reach the step intact (an exception would arrive wrapped by Ray, its cause lost in pickling) and per record, where
# Ray Data's own error handling (`max_errored_blocks`) only drops or fails whole blocks.
_ERROR_SCHEMA = pa.schema([("_error_kind", pa.string()), ("_error", pa.string())])
_ERRORS: dict[str, type[Exception]] = {"ModelOutputError": ModelOutputError, "ModelResolutionError": ModelResolutionError}


class DriverDataExecutionOptions(RayDataExecutionOptions):
    """dagster-ray's Ray Data options, applied in the step's process (the driver, where Ray Data plans) and nowhere else."""

    def apply_remote(self) -> None:
        """Nothing: dagster-ray sets them on a worker with a 1-CPU task, which on a busy cluster waits forever, joining included."""


class ExistingRayCluster(RayResource):
    """A Ray cluster that already runs (a `RayCluster` on Kubernetes, `ray start` nodes): joined, never created or deleted."""

    data_execution_options: DriverDataExecutionOptions = Field(
        default_factory=DriverDataExecutionOptions, description="Ray Data options dagster-ray applies on joining, in the step's process only."
    )

    address: str = Field(
        description=(
            "host:port of the cluster's GCS (e.g. raycluster-head-svc:6379, joined as a driver: the step must reach "
            "every node) or ray://host:10001 (Ray Client, through the head only)."
        )
    )

    @property
    def host(self) -> str:
        return _host_port(self.address)[0]

    @property
    def name(self) -> str:
        return f"Ray cluster at {redact(self.address)}"

    @property
    def ray_address(self) -> str:  # type: ignore[override]
        return self.address

    @property
    def created(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return True


def ray_cluster_for(address: Optional[str]) -> RayResource:
    """The cluster resource for an address: `ExistingRayCluster`, or `LocalRay` when there is none.

    Both connect only when a day is scored (`Lifecycle(connect=False)`): a run that only publishes never starts
    or joins Ray.
    """
    lazy = Lifecycle(connect=False)
    if address:
        return ExistingRayCluster(address=address, lifecycle=lazy)
    return LocalRay(lifecycle=lazy, ray_init_options={"include_dashboard": False})


@dataclass(frozen=True)
class RayDayScored:
    """What scoring one day on Ray did (the fields of the local engine's `DayScored`, plus the actors')."""

    rows: int
    positives: int
    batch_size: int
    backoffs: int
    device: str
    actors: int
    rows_per_second_per_actor: float
    files_sha256: dict[str, str]


class RayScoringEngine(RemoteScoringEngine):
    """Scores each day with Ray Data on the cluster `cluster` names, with a pool of actors that each load the model once."""

    cluster: RayResource = Field(
        description="dagster-ray resource for the cluster: ExistingRayCluster (RAY_ADDRESS) or LocalRay (unset: a Ray for the run)."
    )
    actors: Optional[int] = Field(
        default=None,
        ge=1,
        description=(
            "Actors in the scoring pool; each holds one copy of the model. Unset: as many as the cluster's nodes hold "
            "while a read task still finds its CPUs, and no more than the day has batches. A number the cluster cannot "
            "hold fails the day at once, naming the cluster's resources."
        ),
    )
    num_cpus_per_actor: float = Field(
        default=0.5,
        gt=0,
        description=(
            "CPUs Ray reserves per actor. Fractional by default: on a small machine, actors that take every CPU "
            "leave none for the read tasks and the pipeline hangs. torch's threads follow (torch_threads_per_actor)."
        ),
    )
    num_cpus_per_read_task: float = Field(
        default=0.25,
        gt=0,
        description=(
            "CPUs Ray reserves per Parquet read task (Ray Data's default is 1: next to a pool that holds the other CPUs "
            "of a small cluster, a 1-CPU read task finds no node with room and waits forever)."
        ),
    )
    no_progress_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Seconds the Ray job may go without scoring rows or moving a block between its stages (actors starting and "
            "loading the model count) before it is cancelled and the day fails, naming the cluster's resources."
        ),
    )
    num_gpus_per_actor: Optional[float] = Field(
        default=None,
        ge=0,
        description="GPUs per actor; unset: 1 when the scorer's device is cuda (or auto and the cluster has GPUs), else 0.",
    )
    rows_per_batch: int = Field(
        default=65_536,
        ge=1,
        description="Rows per actor call, and per block handed to the pool (the local engine reads as many per step on CPU).",
    )
    torch_threads_per_actor: Optional[int] = Field(
        default=None,
        ge=1,
        description=(
            "torch intra-op threads per actor; unset: Ray's choice (OMP_NUM_THREADS = num_cpus rounded up, so 1 by "
            "default). Raise it for CPU actors on big nodes. A thread count other than the local engine's can move a "
            "score by an ulp (within 1e-6)."
        ),
    )
    max_restarts: int = Field(
        default=3,
        ge=0,
        description="Times Ray restarts a dead actor and retries its batches (Ray Data's own default is forever).",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Seconds to wait for the cluster's address to answer.")
    num_cpus_per_stage_task: float = Field(
        default=0.5,
        gt=0,
        description=(
            "CPUs Ray reserves per task of a big day's validation, features and snapshot (one task per slice of the raw "
            "files, per bucket, per snapshot part). A bucket task holds about day_chunk_rows rows."
        ),
    )
    stage_tasks_in_flight: int = Field(
        default=4,
        ge=1,
        description=(
            "Buckets (or snapshot parts) the cluster computes ahead of the step, which takes their results in order: "
            "more keeps more CPUs busy and more results waiting in the object store."
        ),
    )

    @property
    def engine(self) -> str:
        return "ray"

    def prepare(self, context: Any) -> None:
        """Join (or start) the cluster once per step; an address that does not answer fails at once, naming it."""
        import ray

        if self.cluster.connected and ray.is_initialized():
            return
        address = self.cluster.ray_address
        if address:
            _check_reachable(address, self.connect_timeout_s)
        try:
            self.cluster.connect(context)
        except Exception as error:
            where = f"at {address}" if address else "started locally for this run"
            raise RayClusterUnreachableError(redact(f"cannot connect to the Ray cluster {where}: {type(error).__name__}: {error}")) from error
        resources = ray.cluster_resources()
        context.log.info(
            f"Ray {ray.__version__}: {self.cluster.name} with {resources.get('CPU', 0):g} CPU(s), "
            f"{resources.get('GPU', 0):g} GPU(s) on {len([n for n in ray.nodes() if n.get('Alive')])} node(s)"
        )

    def day_runner(self, context: Any) -> DayRunner:
        """A big day's validation, features and snapshot as Ray tasks on this engine's cluster, joined first."""
        from batchinfer_assets.resources.ray_day_stages import RayDayRunner

        self.prepare(context)
        return RayDayRunner(context, self.num_cpus_per_stage_task, self.stage_tasks_in_flight, self.no_progress_timeout_s)

    def score_day(
        self,
        context: Any,
        store: PartitionedParquetStore,
        day: str,
        torch_scorer: TorchScorerResource,
        resolved: ResolvedModel,
        schema: pa.Schema,
        on_rows: Optional[Callable[[int], None]] = None,
    ) -> RayDayScored:
        """Score the day's snapshot on the cluster and replace the day's predictions, committed by this process."""
        import ray
        import ray.data

        from batchinfer_assets.resources.ray_snapshot_read import SnapshotDatasource, pieces

        columns = list(resolved.input_columns)
        refs = store.partition_files(INPUT_SNAPSHOT, day)
        footers = [store.backend.read_metadata(ref) for ref in refs]
        missing = [c for c in columns if c not in set(footers[0].schema.names if footers else [])]
        if missing:
            raise MissingInputColumnsError(
                missing, resolved.pinned_uri, where=f"input_snapshot dt={day} ({store.partition_uri(INPUT_SNAPSHOT, day)})"
            )
        self.prepare(context)
        paths, filesystem = day_files(store, INPUT_SNAPSHOT, day, refs)
        read_columns = [schema.names[0], *columns]
        day_pieces = pieces(paths, footers, read_columns, self.rows_per_batch)
        gpus = self.gpus_per_actor(torch_scorer)
        request = PoolRequest(self.num_cpus_per_actor, gpus, self.num_cpus_per_read_task)
        nodes = nodes_from_ray(ray.nodes())
        batches = max(1, len(day_pieces))
        actors = pool_size(nodes, request, self.actors, batches)
        context.log.info(f"{day}: scoring on Ray with {request.describe(actors)} ({batches:,} batch(es) of up to {self.rows_per_batch:,} rows)")
        data_context = ray.data.DataContext.get_current()
        # Blocks come back in snapshot order, so the day's files hold the rows in the order the local engine writes.
        data_context.execution_options.preserve_order = True
        data_context.enable_progress_bars = False
        # Ray Data's own no-progress guard cancels the job (its tasks and actors) and raises in this process. The
        # read is planned from footers the step read (`SnapshotDatasource`), so no Ray task runs outside the guard.
        data_context.execution_no_progress_timeout_s = self.no_progress_timeout_s
        watchdog = functools.partial(_no_progress_named, self.no_progress_timeout_s, nodes, request, actors)
        read = ray.data.read_datasource(
            SnapshotDatasource(day_pieces, filesystem, read_columns),
            num_cpus=self.num_cpus_per_read_task,
            # One task and one block per piece of up to one call's rows, so a file spreads over the pool.
            override_num_blocks=batches,
        )
        dataset = (
            read.map_batches(
                DayScorer,
                fn_constructor_kwargs={
                    "scorer_config": actor_scorer_config(torch_scorer, gpus),
                    "resolved": resolved,
                    "day": day,
                    "schema": schema,
                    "torch_threads": self.torch_threads_per_actor,
                },
                batch_size=self.rows_per_batch,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=self.num_cpus_per_actor,
                num_gpus=gpus,
                # Deprecated in Ray 2.60 with no named replacement yet (removed in 2.64); without them a model that
                # kills its actor on every batch would be restarted forever.
                max_restarts=self.max_restarts,
                max_task_retries=self.max_restarts,
            )
        )
        rows = positives = backoffs = 0
        batch_sizes: set[int] = set()
        per_actor: dict[str, list[float]] = {}
        devices: set[str] = set()
        started = time.perf_counter()
        with store.partition_writer(PREDICTIONS, day, schema) as writer, watchdog():
            for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                failed = block.filter(pc.is_valid(block.column("_error")))
                if failed.num_rows:
                    kind, message = failed.column("_error_kind")[0].as_py(), failed.column("_error")[0].as_py()
                    raise _ERRORS[kind](message)
                writer.write(block.select(schema.names))
                rows += block.num_rows
                positives += int(pc.sum(block.column("label")).as_py() or 0)
                for stat in block.filter(pc.is_valid(block.column("_stat_rows"))).select(_STATS_SCHEMA.names).to_pylist():
                    done = per_actor.setdefault(stat["_stat_actor"], [0, 0.0])
                    done[0] += stat["_stat_rows"]
                    done[1] += stat["_stat_busy_s"]
                    devices.add(stat["_stat_device"])
                    batch_sizes.add(stat["_stat_batch_size"])
                    backoffs += stat["_stat_backoffs"]
                if on_rows is not None:
                    on_rows(block.num_rows)
        context.log.debug(f"{day}: Ray scored {rows:,} rows in {time.perf_counter() - started:.1f} s on {len(per_actor)} actor(s)")
        throughputs = [n / busy for n, busy in per_actor.values() if busy > 0]
        return RayDayScored(
            rows=rows,
            positives=positives,
            batch_size=min(batch_sizes, default=self.rows_per_batch),
            backoffs=backoffs,
            device=",".join(sorted(devices)) or ("cuda" if gpus else "cpu"),
            actors=actors,
            rows_per_second_per_actor=round(float(np.mean(throughputs)), 1) if throughputs else 0.0,
            files_sha256=writer.files_sha256,
        )

    def gpus_per_actor(self, torch_scorer: TorchScorerResource) -> float:
        """The configured GPUs per actor, else 1 for a cuda scorer (or auto on a cluster with GPUs), else 0."""
        if self.num_gpus_per_actor is not None:
            return self.num_gpus_per_actor
        device = torch_scorer.device.strip().lower()
        if device.startswith("cuda"):
            return 1.0
        if device == "auto":
            import ray

            return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        return 0.0


@contextmanager
def _no_progress_named(timeout_s: float, nodes: list[NodeResources], request: PoolRequest, actors: int) -> Iterator[None]:
    """Turn Ray Data's no-progress timeout into an error naming the cluster, the pool and what to change."""
    import ray
    from ray.data.exceptions import ExecutionTimeoutError

    try:
        yield
    except ExecutionTimeoutError as error:
        detail = str(error).split("\nIf this is expected", 1)[0].replace("\n", " ")
        raise RayNoProgressError(no_progress_message(timeout_s, nodes, ray.available_resources(), request, actors, detail)) from None


def actor_scorer_config(torch_scorer: TorchScorerResource, gpus: float) -> dict[str, Any]:
    """The step's scorer settings for an actor: its device is the GPU Ray gave it, or the CPU.

    Ray narrows CUDA_VISIBLE_DEVICES to the actor's own GPU, so `cuda` there is that GPU. A remembered
    out-of-memory batch size stays per actor process: the step's state folder is not on the cluster's nodes.
    """
    return {
        "device": "cuda" if gpus > 0 else "cpu",
        "batch_size": torch_scorer.batch_size,
        "precision": torch_scorer.precision,
        "threshold": torch_scorer.threshold,
        "allow_pickle": torch_scorer.allow_pickle,
    }


def day_files(store: PartitionedParquetStore, table: str, day: str, refs: Optional[list[Any]] = None) -> tuple[list[str], Any]:
    """The day's files of `table` (or `refs`, as the store listed them) as paths for the cluster's readers (pyarrow),
    and the filesystem to read them with.

    On S3 the filesystem carries the endpoint and region (not secret) and no credentials: each node reads with
    its own AWS credential chain (the same variables boto3 reads, an IAM role), so no secret travels in tasks.
    """
    backend = store.backend
    refs = store.partition_files(table, day) if refs is None else refs
    if isinstance(backend, LocalBackend):
        return [str(ref) for ref in refs], None
    if isinstance(backend, S3Backend):
        from pyarrow import fs

        endpoint = urlsplit(backend.endpoint)
        filesystem = fs.S3FileSystem(
            endpoint_override=backend.endpoint if endpoint.hostname and not endpoint.hostname.endswith("amazonaws.com") else None,
            scheme=endpoint.scheme or "https",
            region=backend.client.meta.region_name,
        )
        return [f"{backend.bucket}/{ref}" for ref in refs], filesystem
    raise TypeError(f"the Ray engine cannot read {store.uri}: neither a local folder nor s3://")


class DayScorer:
    """The callable class of `map_batches`: one per actor, holding the pinned model loaded once."""

    def __init__(
        self, scorer_config: dict[str, Any], resolved: ResolvedModel, day: str, schema: pa.Schema, torch_threads: Optional[int]
    ) -> None:
        import ray
        import torch

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.scorer = TorchScorerResource(**scorer_config)
        self.day = day
        self.schema = schema
        self.output_schema = pa.schema([*schema, *_STATS_SCHEMA, *_ERROR_SCHEMA])
        self.columns = list(resolved.input_columns)
        # The predictions' first column is the domain's id column.
        self.id_column = schema.names[0]
        self.actor = ray.get_runtime_context().get_actor_id() or "driver"
        self.model: Optional[LoadedModel] = None
        self.load_error: Optional[ModelResolutionError] = None
        try:
            self.model = self.scorer.load(resolved)
        except ModelResolutionError as error:
            self.load_error = error

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Scores and labels with the local engine's checks; a bad row fails the batch naming the day and an id."""
        started = time.perf_counter()
        if self.model is None:
            return self._error(self.load_error)
        batch = batch.combine_chunks()
        try:
            scores, run = self.scorer.score_matrix(self.model, record_batch_matrix(batch, self.columns))
        except ModelOutputError as error:
            return self._error(error.naming(f"input_snapshot dt={self.day}", self.id_column, batch.column(self.id_column).to_pylist()))
        labels = self.scorer.labels(scores)
        n = batch.num_rows
        name, version = self.model.resolved.name or "", self.model.resolved.version
        predictions = [
            batch.column(self.id_column).cast(pa.large_string()),
            pa.array(scores, pa.float32()),
            pa.array(labels, pa.int8()),
            pa.array(np.full(n, name, dtype=object), pa.large_string()),
            pa.array(np.full(n, version, dtype=object), pa.large_string()),
        ]
        stats = [self.actor, self.model.device, n, time.perf_counter() - started, run.batch_size, run.backoffs]
        stat_columns = [
            pa.array([value] + [None] * (n - 1), field.type) if n else pa.array([], field.type)
            for value, field in zip(stats, _STATS_SCHEMA)
        ]
        errors = [pa.nulls(n, field.type) for field in _ERROR_SCHEMA]
        return pa.Table.from_arrays([*predictions, *stat_columns, *errors], schema=self.output_schema)

    def _error(self, error: Optional[Exception]) -> pa.Table:
        """One row carrying the error in place of the batch's predictions."""
        row = {name: [None] for name in self.output_schema.names}
        row["_error_kind"], row["_error"] = [type(error).__name__], [str(error)]
        return pa.Table.from_pydict(row, schema=self.output_schema)


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if not parts.hostname:
        raise RayClusterUnreachableError(f"Ray address {redact(address)!r} names no host; expected host:port or ray://host:port")
    default = 10001 if parts.scheme == "ray" else 6379
    try:
        return parts.hostname, parts.port or default
    except ValueError:
        raise RayClusterUnreachableError(f"Ray address {redact(address)!r} has an invalid port") from None


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail in seconds, naming the address, where `ray.init` would wait and retry for about a minute."""
    if address in ("auto", "local"):
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as error:
        raise RayClusterUnreachableError(
            f"cannot reach the Ray cluster at {redact(address)} ({RAY_ADDRESS_VAR}): {error or type(error).__name__}"
        ) from error
