"""The registered model and the predictions it makes."""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from batchinfer_assets.assets._partitions import daily_asset, record_each_day, run_days
from batchinfer_assets.lib.batching import ProgressMeter, record_batch_matrix
from batchinfer_assets.lib.hashing import table_content_hash
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.partitions import PIPELINE_GROUP
from batchinfer_assets.resources.model_registry import MODEL_VERSION_TAG, MlflowModelRegistryResource
from batchinfer_assets.resources.storage import HiveParquetIOManager
from batchinfer_assets.resources.torch_scorer import LoadedModel, MissingInputColumnsError, TorchScorerResource

SNAPSHOT_TABLE = "input_snapshot"
PREDICTIONS_TABLE = "predictions"
# Rows read from the snapshot per step on CPU; one forward batch each, so the matrix stays small.
MIN_READ_ROWS = 65_536


@dg.observable_source_asset(group_name=PIPELINE_GROUP, description="The registered model the scorer resolves.")
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


@daily_asset(
    deps=[scoring_model, dg.AssetKey(SNAPSHOT_TABLE)],
    kinds={"pytorch", "parquet"},
    code_version="1",
    pool="scoring",
)
def predictions(
    context: dg.AssetExecutionContext,
    model_registry: MlflowModelRegistryResource,
    torch_scorer: TorchScorerResource,
    io_manager: dg.ResourceParam[HiveParquetIOManager],
) -> dg.MaterializeResult:
    """A score and a label for every row of the day's input snapshot, from one pinned model version."""
    resolved = model_registry.resolve_for_run(context.run.tags)
    model = torch_scorer.load(resolved)
    store = storage_of(io_manager)
    days = run_days(context)
    total_rows = sum(snapshot_row_count(store, day) for day in days)
    pinned_by = f" (pinned by run tag {MODEL_VERSION_TAG})" if MODEL_VERSION_TAG in context.run.tags else ""
    context.log.info(
        f"scoring {total_rows:,} rows of {len(days)} day(s) with {resolved.pinned_uri}{pinned_by} on {model.device}, "
        f"{torch_scorer.precision}, batches of {torch_scorer.starting_batch_size(model):,}"
    )

    progress = ProgressMeter(total_rows=total_rows, interval_s=torch_scorer.progress_interval_s)

    def on_rows(rows: int) -> None:
        line = progress.advance(rows)
        if line is not None:
            context.log.info(line)

    results = {day: score_day(store, day, torch_scorer, model, on_rows=on_rows) for day in days}
    context.log.info(progress.line())
    hashes = {day: snapshot_content_hash(context, store, day) for day in days}
    rows = sum(r.rows for r in results.values())
    metadata: dict[str, object] = {
        "model_uri": resolved.requested_uri,
        "pinned_model_uri": resolved.pinned_uri,
        "model_name": resolved.name or "",
        "model_version": resolved.version,
        "model_run_id": resolved.run_id,
        "model_artifact_checksum": resolved.artifact_checksum,
        "input_snapshot_hash": hashes[days[0]],
        "row_count": rows,
        "rows_per_second": round(rows / progress.elapsed_s, 1) if progress.elapsed_s > 0 else float(rows),
        "device": model.device,
        "precision": torch_scorer.precision,
        "batch_size": min(r.batch_size for r in results.values()),
        "batch_size_backoffs": sum(r.backoffs for r in results.values()),
        "threshold": torch_scorer.threshold,
        "positive_rate": sum(r.positives for r in results.values()) / rows if rows else 0.0,
        "uri": dg.MetadataValue.path(store.table_uri(PREDICTIONS_TABLE)),
    }
    record_each_day(
        context,
        {
            day: {
                "input_snapshot_hash": hashes[day],
                "row_count": r.rows,
                "positive_rate": r.positives / r.rows if r.rows else 0.0,
                "batch_size": r.batch_size,
            }
            for day, r in results.items()
        },
    )
    return dg.MaterializeResult(metadata=metadata)


def storage_of(io_manager: object) -> PartitionedParquetStore:
    """The storage core behind the IO manager, which predictions streams through instead of returning frames."""
    store = getattr(io_manager, "store", None)
    if not isinstance(store, PartitionedParquetStore):
        raise dg.DagsterInvariantViolationError(
            f"predictions streams its output through the io_manager's `store` (a PartitionedParquetStore); "
            f"{type(io_manager).__name__} has none"
        )
    return store


@dataclass(frozen=True)
class DayScored:
    """What scoring one day did."""

    rows: int
    positives: int
    batch_size: int
    backoffs: int


def predictions_schema() -> pa.Schema:
    """The Arrow schema of a predictions partition, with the pandas metadata the IO manager reads dtypes from."""
    empty = pd.DataFrame(
        {
            "transaction_id": pd.array([], dtype="string"),
            "score": np.array([], dtype=np.float32),
            "label": np.array([], dtype=np.int8),
            "model_name": pd.array([], dtype="string"),
            "model_version": pd.array([], dtype="string"),
        }
    )
    return pa.Schema.from_pandas(empty, preserve_index=False)


def snapshot_row_count(store: PartitionedParquetStore, day: str) -> int:
    """Rows of the day's snapshot, from the Parquet footers."""
    return store.row_count(SNAPSHOT_TABLE, day)


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
) -> DayScored:
    """Stream the day's snapshot through the model and replace the day's predictions, in bounded memory."""
    columns = list(model.input_columns)
    available = set(store.column_names(SNAPSHOT_TABLE, day))
    missing = [c for c in columns if c not in available]
    if missing:
        raise MissingInputColumnsError(
            missing, model.resolved.pinned_uri, where=f"input_snapshot dt={day} ({store.partition_uri(SNAPSHOT_TABLE, day)})"
        )
    schema = predictions_schema()
    name = model.resolved.name or ""
    version = model.resolved.version
    rows = positives = backoffs = 0
    batch_size = torch_scorer.starting_batch_size(model)
    constant_columns: dict[int, tuple[pa.Array, pa.Array]] = {}
    with store.partition_writer(PREDICTIONS_TABLE, day, schema) as writer:
        for batch in snapshot_batches(store, day, read_rows_for(torch_scorer, model), ["transaction_id", *columns]):
            scores, run = torch_scorer.score_matrix(model, record_batch_matrix(batch, columns), on_rows)
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
                        batch.column("transaction_id").cast(pa.large_string()),
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
    return DayScored(rows=rows, positives=positives, batch_size=batch_size, backoffs=backoffs)


def snapshot_batches(store: PartitionedParquetStore, day: str, rows: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The day's snapshot as record batches of the given columns, one row group in memory at a time."""
    return store.iter_batches(SNAPSHOT_TABLE, day, batch_size=rows, columns=columns)


def snapshot_content_hash(context: dg.AssetExecutionContext, store: PartitionedParquetStore, day: str) -> str:
    """The content hash `input_snapshot` recorded for the day; recomputed from the files when it recorded none."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(SNAPSHOT_TABLE), asset_partitions=[day]), limit=1
    ).records
    if records:
        metadata = records[0].asset_materialization.metadata if records[0].asset_materialization else {}
        if "content_hash" in metadata:
            return str(metadata["content_hash"].value)
    # Reads the whole day: only reached when the snapshot was written outside this Dagster instance.
    context.log.warning(f"input_snapshot dt={day} has no recorded content hash; hashing its files")
    return table_content_hash(store.read_partition(SNAPSHOT_TABLE, day))
