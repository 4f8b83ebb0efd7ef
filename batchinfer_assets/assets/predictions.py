"""The registered model and the predictions it makes."""

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib.batching import ProgressMeter, record_batch_matrix
from batchinfer_assets.lib.hashing import HASH_CHUNK_ROWS, ContentHasher
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.redaction import redact
from batchinfer_assets.lib.runtime_info import runtime_metadata
from batchinfer_assets.lib.snapshot_archive import SnapshotArchive
from batchinfer_assets.partitions import PIPELINE_GROUP
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.scoring_engine import RemoteScoringEngine
from batchinfer_assets.resources.torch_scorer import (
    LoadedModel,
    MissingInputColumnsError,
    ModelOutputError,
    TorchScorerResource,
)
from batchinfer_assets.retries import masked_failures
from batchinfer_assets.tables import INPUT_SNAPSHOT as SNAPSHOT_TABLE
from batchinfer_assets.tables import PREDICTIONS as PREDICTIONS_TABLE
from batchinfer_assets.tables import SCORING_MODEL

# The pool that scored the day (actors, each one's rows/s, out-of-memory batch backoffs), as one metadata entry.
ENGINE_DETAILS_KEY = "engine_details"

# Rows read from the snapshot per step on CPU; one forward batch each, so the matrix stays small.
MIN_READ_ROWS = 65_536


@dg.observable_source_asset(
    name=SCORING_MODEL, group_name=PIPELINE_GROUP, description="The registered model the scorer resolves."
)
@masked_failures
def scoring_model(model_registry: MlflowModelRegistryResource) -> dg.ObserveResult:
    """Observes which model version the configured URI resolves to; that version is the data version."""
    resolved = model_registry.resolve()
    return dg.ObserveResult(
        data_version=dg.DataVersion(resolved.version),
        metadata={
            "model_uri": resolved.requested_uri,
            "pinned_uri": resolved.pinned_uri,
            "model_name": resolved.name or "",
            "model_version": resolved.version,
            "run_id": resolved.run_id,
            "artifact_checksum": resolved.artifact_checksum,
            "input_columns": dg.MetadataValue.json(list(resolved.input_columns)),
        },
    )


PREDICTIONS_SPEC = dg.AssetSpec(
    PREDICTIONS_TABLE,
    deps=[SCORING_MODEL, SNAPSHOT_TABLE],
    description="A score and a label for every row of the day's input snapshot, from the run's one pinned model version.",
    kinds={"pytorch", "parquet"},
)


def predictions_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization]:
    """Stream the day's snapshot through the run's model into the day's predictions, here or on the engine's cluster.

    The snapshot scored is kept in the archive under its content hash, so the day can be reproduced from it
    (`batchinfer_assets.reproduction`); the files' sha256 are recorded for that comparison.
    """
    scorer = run.torch_scorer
    day = state.day
    archive = SnapshotArchive(run.store)
    source = SnapshotSource(run.store, SNAPSHOT_TABLE, day)
    snapshot_hash = run.latest_version(SNAPSHOT_TABLE, day, state) or snapshot_hash_from_files(run, day)
    progress = ProgressMeter(total_rows=source.store.row_count(source.table, source.key), interval_s=scorer.progress_interval_s)

    def on_rows(rows: int) -> None:
        line = progress.advance(rows)
        if line is not None:
            run.context.log.info(f"{day}: {line}")

    engine = run.scoring_engine
    if isinstance(engine, RemoteScoringEngine):
        result = engine.score_day(run.context, run.store, day, scorer, run.resolved, predictions_schema(run.domain.id_column), on_rows)
        device, actors, per_actor = result.device, result.actors, result.rows_per_second_per_actor
        engine_name = engine.engine
    else:
        result = score_day(run.store, day, scorer, run.model, on_rows=on_rows, source=source, id_column=run.domain.id_column)
        device, actors, per_actor, engine_name = run.model.device, 1, None, "local"
    if archive.keep(day, snapshot_hash):
        run.context.log.info(f"{day}: archived the scored input snapshot at {archive.uri(snapshot_hash)}")
    resolved = run.resolved
    rows_per_second = round(result.rows / progress.elapsed_s, 1) if progress.elapsed_s > 0 else float(result.rows)
    run.context.log.info(f"{day}: {progress.line()} with {resolved.pinned_uri} on {device} ({engine_name} engine)")
    yield run.materialization(
        PREDICTIONS_TABLE,
        state,
        {
            "model_uri": resolved.requested_uri,
            "pinned_model_uri": resolved.pinned_uri,
            "model_name": resolved.name or "",
            "model_version": resolved.version,
            "model_run_id": resolved.run_id or "",
            "model_tracking_uri": redact(resolved.tracking_uri),
            "model_artifact_checksum": resolved.artifact_checksum,
            "lineage": run.model_lineage,
            "input_snapshot_hash": snapshot_hash,
            "input_snapshot_archive": dg.MetadataValue.path(archive.uri(snapshot_hash)),
            "row_count": result.rows,
            "rows_per_second": rows_per_second,
            "device": device,
            "engine": engine_name,
            # One entry: as numbers they opened the Plots tab (sorted by key) with flat lines before positive_rate.
            # The local engine is one "actor": the step's process.
            ENGINE_DETAILS_KEY: dg.MetadataValue.json(
                {
                    "actors": actors,
                    "rows_per_second_per_actor": rows_per_second if per_actor is None else per_actor,
                    "batch_size_backoffs": result.backoffs,
                }
            ),
            "precision": scorer.precision,
            "batch_size": result.batch_size,
            "threshold": scorer.threshold,
            "code_version": run.code_versions[PREDICTIONS_TABLE],
            **runtime_metadata(),
            "positive_rate": result.positives / result.rows if result.rows else 0.0,
            "uri": dg.MetadataValue.path(run.store.partition_uri(PREDICTIONS_TABLE, day)),
            # The exact bytes written, by file: a reproduction compares with them after the day was re-scored.
            "files_sha256": dg.MetadataValue.json(result.files_sha256),
        },
        inputs=(SNAPSHOT_TABLE, SCORING_MODEL),
        # The files' bytes are fixed by the model's bytes, the input's content and how it was batched.
        data_version=predictions_version(resolved.artifact_checksum, snapshot_hash, result.batch_size, scorer),
        input_versions={SNAPSHOT_TABLE: snapshot_hash},
    )


def predictions_version(artifact_checksum: str, snapshot_hash: str, batch_size: int, scorer: TorchScorerResource) -> str:
    """The data version of a day's predictions: a hash of everything that decides their bytes."""
    parts = (artifact_checksum, snapshot_hash, str(batch_size), scorer.precision, repr(scorer.threshold))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def snapshot_hash_from_files(run: PipelineRun, day: str) -> str:
    """The snapshot's content hash recomputed from its files (a snapshot written outside this Dagster instance)."""
    run.context.log.warning(f"input_snapshot dt={day} has no recorded content hash; hashing its files")
    return stored_content_hash(run.store, SNAPSHOT_TABLE, day)


def stored_content_hash(store: PartitionedParquetStore, table: str, day: str) -> str:
    """The content hash of a stored day, streamed from its files (what its materialization recorded)."""
    hasher = ContentHasher()
    for batch in store.iter_batches(table, day, batch_size=HASH_CHUNK_ROWS):
        hasher.update(batch)
    return hasher.hexdigest(store.schema(table, day))


@dataclass(frozen=True)
class SnapshotSource:
    """Where a day's input is read from: the day's snapshot, or an archived one by content hash."""

    store: PartitionedParquetStore
    table: str
    key: str


@dataclass(frozen=True)
class DayScored:
    """What scoring one day did."""

    rows: int
    positives: int
    batch_size: int
    backoffs: int
    files_sha256: dict[str, str]


def predictions_schema(id_column: str) -> pa.Schema:
    """The Arrow schema of a predictions partition (the domain's id column first), with the pandas metadata."""
    empty = pd.DataFrame(
        {
            id_column: pd.array([], dtype="string"),
            "score": np.array([], dtype=np.float32),
            "label": np.array([], dtype=np.int8),
            "model_name": pd.array([], dtype="string"),
            "model_version": pd.array([], dtype="string"),
        }
    )
    return pa.Schema.from_pandas(empty, preserve_index=False)


def read_rows_for(torch_scorer: TorchScorerResource, model: LoadedModel) -> int:
    """Snapshot rows read per step: one forward batch on CPU, four on CUDA so copies overlap compute."""
    batch = torch_scorer.starting_batch_size(model)
    return max(MIN_READ_ROWS, batch * (4 if model.device.startswith("cuda") else 1))


def score_day(
    store: PartitionedParquetStore,
    day: str,
    torch_scorer: TorchScorerResource,
    model: LoadedModel,
    on_rows: Optional[Callable[[int], None]] = None,
    source: SnapshotSource | None = None,
    *,
    id_column: str,
) -> DayScored:
    """Stream the day's snapshot (or `source`) through the model and replace the day's predictions, in bounded memory."""
    source = source or SnapshotSource(store, SNAPSHOT_TABLE, day)
    columns = list(model.input_columns)
    available = set(source.store.column_names(source.table, source.key))
    missing = [c for c in columns if c not in available]
    if missing:
        raise MissingInputColumnsError(
            missing,
            model.resolved.pinned_uri,
            where=f"input_snapshot dt={day} ({source.store.partition_uri(source.table, source.key)})",
        )
    schema = predictions_schema(id_column)
    name = model.resolved.name or ""
    version = model.resolved.version
    rows = positives = backoffs = 0
    batch_size = torch_scorer.starting_batch_size(model)
    constant_columns: dict[int, tuple[pa.Array, pa.Array]] = {}
    with store.partition_writer(PREDICTIONS_TABLE, day, schema) as writer:
        batches = source.store.iter_batches(
            source.table, source.key, batch_size=read_rows_for(torch_scorer, model), columns=[id_column, *columns]
        )
        for batch in batches:
            try:
                scores, run = torch_scorer.score_matrix(model, record_batch_matrix(batch, columns), on_rows)
            except ModelOutputError as error:
                raise error.naming(f"input_snapshot dt={day}", id_column, batch.column(id_column).to_pylist()) from None
            labels = torch_scorer.labels(scores)
            n = batch.num_rows
            if n not in constant_columns:
                constant_columns[n] = (
                    pa.array(np.full(n, name, dtype=object), pa.large_string()),
                    pa.array(np.full(n, version, dtype=object), pa.large_string()),
                )
            names, versions = constant_columns[n]
            writer.write(
                pa.RecordBatch.from_arrays(
                    [
                        batch.column(id_column).cast(pa.large_string()),
                        pa.array(scores, pa.float32()),
                        pa.array(labels, pa.int8()),
                        names,
                        versions,
                    ],
                    schema=schema,
                )
            )
            rows += n
            positives += int(labels.sum())
            batch_size = min(batch_size, run.batch_size)
            backoffs += run.backoffs
    return DayScored(rows=rows, positives=positives, batch_size=batch_size, backoffs=backoffs, files_sha256=writer.files_sha256)


STAGE = Stage(
    assets=(PREDICTIONS_TABLE,),
    day=predictions_day,
    specs=lambda domain: [PREDICTIONS_SPEC],
    reads=(SNAPSHOT_TABLE,),
    uses_model=True,
)
