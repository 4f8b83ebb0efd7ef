"""The validated, content-hashed input the model sees."""

import dagster as dg
import pandas as pd

from batchinfer_assets.assets._partitions import per_day_metadata, run_days
from batchinfer_assets.lib.features import FEATURE_COLUMNS
from batchinfer_assets.lib.hashing import frame_content_hash
from batchinfer_assets.partitions import daily_partitions
from batchinfer_assets.schemas import feature_schema

SNAPSHOT_COLUMNS = ("transaction_id", *FEATURE_COLUMNS)


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="1",
)
def input_snapshot(context: dg.AssetExecutionContext, transaction_features: dict[str, pd.DataFrame]) -> dg.Output:
    """The day's validated model input; its content hash is its data version."""
    schema = feature_schema(FEATURE_COLUMNS)
    snapshots: dict[str, pd.DataFrame] = {}
    hashes: dict[str, str] = {}
    for day in run_days(context):
        snapshot = schema.validate(transaction_features[day].loc[:, list(SNAPSHOT_COLUMNS)], lazy=True)
        snapshots[day] = snapshot.reset_index(drop=True)
        hashes[day] = frame_content_hash(snapshots[day])
    days = run_days(context)
    metadata: dict[str, object] = {
        "row_count": sum(len(s) for s in snapshots.values()),
        "columns": dg.MetadataValue.json(list(SNAPSHOT_COLUMNS)),
        **per_day_metadata(hashes),
    }
    if len(days) == 1:
        metadata["content_hash"] = hashes[days[0]]
        return dg.Output(snapshots, metadata=metadata, data_version=dg.DataVersion(hashes[days[0]]))
    return dg.Output(snapshots, metadata=metadata)
