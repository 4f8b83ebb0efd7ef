"""IO manager for daily-partitioned asset tables in the contract's Hive layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster_aws.s3 import S3Resource
from pydantic import Field

from batchinfer_assets.lib.parquet_store import PartitionedParquetStore, is_s3_uri
from batchinfer_assets.retries import final_on_bad_data

S3_FIELD_DESCRIPTION = (
    "S3 client settings for s3:// URIs; unset: boto3's own environment (AWS_ENDPOINT_URL, credentials, region)."
)


def open_table_store(base_uri: str, s3: Optional[S3Resource]) -> PartitionedParquetStore:
    """The storage core for a base URI: a local folder, or `s3://bucket/prefix` through dagster-aws's S3 client."""
    if is_s3_uri(base_uri):
        return PartitionedParquetStore(base_uri, s3_client=(s3 or S3Resource()).get_client())
    return PartitionedParquetStore(base_uri)


class HiveParquetIOManager(dg.ConfigurableIOManager):
    """Stores each day of an asset as `{base_uri}/{asset_key}/dt={day}/*.parquet`.

    Partitioned outputs are a DataFrame (one day) or a mapping of day -> DataFrame (a single-run range);
    partitioned inputs are always loaded as a mapping of day -> DataFrame, in day order.
    """

    base_uri: str = Field(description="Folder or s3://bucket/prefix that holds one sub-folder per asset table.")
    s3: Optional[S3Resource] = Field(default=None, description=S3_FIELD_DESCRIPTION)

    @property
    def store(self) -> PartitionedParquetStore:
        """The storage core this shell delegates to."""
        return open_table_store(self.base_uri, self.s3)

    @final_on_bad_data
    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | Mapping[str, pd.DataFrame]) -> None:
        """Write each day of the output, replacing what was there."""
        table = _table_name(context.asset_key)
        frames = _frames_by_partition(context, obj)
        store = self.store
        row_counts = {}
        for dt, frame in frames.items():
            store.write_partition(table, dt, pa.Table.from_pandas(frame, preserve_index=False))
            row_counts[dt] = len(frame)
        metadata: dict[str, object] = {
            "uri": dg.MetadataValue.path(store.table_uri(table)),
            "row_count": sum(row_counts.values()),
        }
        context.add_output_metadata(metadata)

    @final_on_bad_data
    def load_input(self, context: dg.InputContext) -> dict[str, pd.DataFrame]:
        """Read the upstream days this step depends on."""
        table = _table_name(context.asset_key)
        if not context.has_asset_partitions:
            raise dg.DagsterInvariantViolationError(
                f"{type(self).__name__} stores only daily-partitioned assets; {table!r} is not partitioned"
            )
        store = self.store
        return {dt: store.read_partition(table, dt).to_pandas() for dt in sorted(context.asset_partition_keys)}


def _table_name(asset_key: dg.AssetKey) -> str:
    return "__".join(asset_key.path)


def _frames_by_partition(
    context: dg.OutputContext, obj: pd.DataFrame | Mapping[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    if not context.has_asset_partitions:
        raise dg.DagsterInvariantViolationError(
            f"HiveParquetIOManager stores only daily-partitioned assets; {context.asset_key.to_user_string()} is not"
        )
    keys = sorted(context.asset_partition_keys)
    if isinstance(obj, pd.DataFrame):
        if len(keys) != 1:
            raise dg.DagsterInvariantViolationError(
                f"{context.asset_key.to_user_string()} covers {len(keys)} days; return a mapping of day -> DataFrame"
            )
        return {keys[0]: obj}
    if isinstance(obj, Mapping) and sorted(obj) == keys and all(isinstance(v, pd.DataFrame) for v in obj.values()):
        return {k: obj[k] for k in keys}
    raise dg.DagsterInvariantViolationError(
        f"{context.asset_key.to_user_string()} must output a DataFrame per day for days {keys}, "
        f"got {type(obj).__name__}" + (f" with days {sorted(obj)}" if isinstance(obj, Mapping) else "")
    )
