"""Reproduce a past scoring of one day in a place of its own, and say whether it matches the original byte for byte.

A reproduction scores the day's archived input snapshot with the model version (checked by artifact checksum), batch
size, precision and threshold the original scoring recorded, into
`{BATCHINFER_STORAGE_URI}/reproductions/{dagster run id}/predictions/dt={day}/`. It never writes the live
`predictions` table or the prediction database and records no asset event: the live day, its materialization
history, data version and staleness, and what sensors and later stages read stay as they were. The verdict is the
op's output metadata and the run's tag `batchinfer/reproduction` (`identical`, `different`).
"""


from typing import Any, Optional

import dagster as dg
from pydantic import Field

from batchinfer_assets.assets.predictions import DayScored, SnapshotSource, score_day
from batchinfer_assets.lib.model_loading import ModelNotFoundError
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.predictions_diff import describe_difference
from batchinfer_assets.lib.redaction import redact, redacted_error
from batchinfer_assets.lib.snapshot_archive import SnapshotArchive, SnapshotNotArchivedError, archive_key
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.table_storage import TableStorageResource
from batchinfer_assets.resources.torch_scorer import TorchScorerResource
from batchinfer_assets.retries import masked_failures
from batchinfer_assets.tables import INPUT_SNAPSHOT_ARCHIVE, PREDICTIONS
from batchinfer_assets.tags import REPRODUCES_TAG, VERDICT_TAG

REPRODUCTIONS_FOLDER = "reproductions"
_REQUIRED = ("pinned_model_uri", "model_version", "model_artifact_checksum", "input_snapshot_hash", "batch_size")


class CannotReproduceError(LookupError):
    """The original scoring cannot be repeated: its model, its input or its record is gone or changed."""


class ReproductionConfig(dg.Config):
    """Which scoring of which day to reproduce."""

    day: str = Field(description="The partition to reproduce, YYYY-MM-DD.")
    original_run_id: Optional[str] = Field(
        default=None, description="The run whose scoring of the day to reproduce; unset: the day's first scoring."
    )


def original_scoring(instance: dg.DagsterInstance, day: str, run_id: str | None = None) -> dg.EventLogRecord:
    """The day's first materialization of `predictions`, or the one `run_id` wrote."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(PREDICTIONS), asset_partitions=[day]), limit=1000, ascending=True
    ).records
    if run_id is not None:
        records = [r for r in records if r.run_id == run_id]
    if not records:
        raise CannotReproduceError(
            f"no materialization of {PREDICTIONS} for {day}" + (f" by run {run_id}" if run_id else "") + " in this instance"
        )
    return records[0]


def recorded(record: dg.EventLogRecord) -> dict[str, Any]:
    """The original scoring's metadata as plain values, refusing a record that lacks what a reproduction needs."""
    metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    missing = [k for k in _REQUIRED if k not in metadata]
    if missing:
        raise CannotReproduceError(f"run {record.run_id} recorded no {missing} for this day (scored before lineage was recorded)")
    return metadata


@dg.op(
    name="reproduce_predictions",
    description="Re-score one day as a past run scored it, into reproductions/<run id>/, and compare with the original's files.",
    tags={"kind": "pytorch"},
    # The verdict is the output's metadata; nothing goes through an IO manager (none of the live tables).
    out=dg.Out(dg.Nothing),
)
@masked_failures
def reproduce_predictions(
    context: dg.OpExecutionContext,
    config: ReproductionConfig,
    model_registry: MlflowModelRegistryResource,
    torch_scorer: TorchScorerResource,
    table_storage: TableStorageResource,
) -> dg.Output:
    """Score the archived input with the recorded model and settings in this run's own folder; say if identical."""
    day = config.day
    try:
        original = original_scoring(context.instance, day, config.original_run_id)
        meta = recorded(original)
        registry = model_registry.model_copy(update={"model_uri": str(meta["pinned_model_uri"]), "demo_when_missing": False})
        try:
            resolved = registry.resolve()
        except ModelNotFoundError as error:
            raise CannotReproduceError(f"the model that scored {day} is no longer in the registry: {error}") from error
        if resolved.artifact_checksum != meta["model_artifact_checksum"]:
            raise CannotReproduceError(
                f"{resolved.pinned_uri} now holds another model than the one that scored {day} in run {original.run_id} "
                f"(artifact checksum {resolved.artifact_checksum[:12]}, the original {str(meta['model_artifact_checksum'])[:12]}): "
                "the registered model was deleted and registered again, or its files changed"
            )
        archive = SnapshotArchive(table_storage.store)
        archive.require(str(meta["input_snapshot_hash"]))
    except (CannotReproduceError, SnapshotNotArchivedError) as error:
        raise dg.Failure(description=redact(f"cannot reproduce {day}: {error}; nothing was written"), allow_retries=False) from redacted_error(error)

    context.instance.add_run_tags(context.run.run_id, {REPRODUCES_TAG: original.run_id})
    # Exactly the recorded settings: no batch size remembered from out-of-memory backoffs, no configured override.
    scorer = torch_scorer.model_copy(
        update={
            "batch_size": int(meta["batch_size"]),
            "precision": str(meta.get("precision", torch_scorer.precision)),
            "threshold": float(meta.get("threshold", torch_scorer.threshold)),
            "state_dir": None,
        }
    )
    loaded = scorer.load(resolved)
    own = table_storage.store.under(REPRODUCTIONS_FOLDER, context.run.run_id)
    source = SnapshotSource(archive.store, INPUT_SNAPSHOT_ARCHIVE, archive_key(str(meta["input_snapshot_hash"])))
    # The snapshot's first column is the domain's id column (the snapshot stage writes it first).
    id_column = source.store.column_names(source.table, source.key)[0]
    scored = score_day(own, day, scorer, loaded, source=source, id_column=id_column)
    where = own.partition_uri(PREDICTIONS, day)

    original_files = _original_files_sha256(context.instance, table_storage, original, meta, day)
    identical = original_files == scored.files_sha256
    settings = f"{resolved.pinned_uri}, batch size {scored.batch_size}, {loaded.device}"
    if identical:
        verdict = f"identical to the original scoring (run {original.run_id}): {len(scored.files_sha256)} file(s) byte for byte"
    elif original_files is None:
        verdict = (
            f"not comparable: run {original.run_id} recorded no files_sha256 (scored by an older version) and the live "
            f"day has been scored again since, so the original files are gone"
        )
    else:
        verdict = f"DIFFERENT from the original scoring (run {original.run_id}): " + _difference(
            table_storage, own, day, original_files, meta, scored, loaded.device
        )
    context.instance.add_run_tags(context.run.run_id, {VERDICT_TAG: "identical" if identical else "different"})
    (context.log.info if identical else context.log.warning)(f"{day}: {verdict} ({settings}); reproduction at {where}")
    return dg.Output(
        None,
        metadata={
            "day": day,
            "identical": identical,
            "verdict": verdict,
            "original_run_id": original.run_id,
            "reproduction_uri": dg.MetadataValue.path(where),
            "pinned_model_uri": resolved.pinned_uri,
            "model_artifact_checksum": resolved.artifact_checksum,
            "input_snapshot_hash": str(meta["input_snapshot_hash"]),
            "batch_size": scored.batch_size,
            "device": loaded.device,
            "row_count": scored.rows,
            "files_sha256": dg.MetadataValue.json(scored.files_sha256),
            "original_files_sha256": dg.MetadataValue.json(original_files),
        },
    )


def _original_files_sha256(
    instance: dg.DagsterInstance, table_storage: TableStorageResource, original: dg.EventLogRecord, meta: dict[str, Any], day: str
) -> dict[str, str] | None:
    """What the original wrote, by file: as it recorded, else (an older record) the live files while they are still its own."""
    if "files_sha256" in meta:
        return dict(meta["files_sha256"])
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(PREDICTIONS), asset_partitions=[day]), limit=1
    ).records
    if latest and latest[0].storage_id == original.storage_id and table_storage.store.has_partition(PREDICTIONS, day):
        return table_storage.store.files_sha256(PREDICTIONS, day)
    return None


def _difference(
    table_storage: TableStorageResource,
    own: PartitionedParquetStore,
    day: str,
    original_files: dict[str, str],
    meta: dict[str, Any],
    scored: DayScored,
    device: str,
) -> str:
    """What differs, row by row when the original's files are still live, else what the records say."""
    notes = []
    if scored.batch_size != int(meta["batch_size"]):
        notes.append(f"batch size {scored.batch_size} (backed off from {meta['batch_size']}: out of memory)")
    if meta.get("device") and str(meta["device"]) != device:
        notes.append(f"scored on {device}, the original on {meta['device']}")
    live = table_storage.store
    if live.has_partition(PREDICTIONS, day) and live.files_sha256(PREDICTIONS, day) == original_files:
        notes.append(describe_difference(live.read_partition(PREDICTIONS, day), own.read_partition(PREDICTIONS, day), own.column_names(PREDICTIONS, day)[0]))
    else:
        if int(meta.get("row_count", scored.rows)) != scored.rows:
            notes.append(f"{scored.rows:,} rows where the original has {meta['row_count']:,}")
        notes.append("the original's files were replaced since (the day was scored again), so only their sha256 can be compared")
    return "; ".join(notes)
