"""The asset tables: where the pipeline writes and reads each day, a local folder or an S3 prefix."""

from typing import Optional

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from batchinfer_assets.lib.parquet_store import PartitionedParquetStore, is_s3_uri
from batchinfer_assets.lib.spill import DEFAULT_DAY_CHUNK_ROWS

S3_FIELD_DESCRIPTION = (
    "S3 client settings for s3:// URIs; unset: boto3's own environment (AWS_ENDPOINT_URL, credentials, region)."
)


def open_table_store(base_uri: str, s3: Optional[S3Resource]) -> PartitionedParquetStore:
    """The storage core for a base URI: a local folder, or `s3://bucket/prefix` through dagster-aws's S3 client."""
    if is_s3_uri(base_uri):
        return PartitionedParquetStore(base_uri, s3_client=(s3 or S3Resource()).get_client())
    return PartitionedParquetStore(base_uri)


class TableStorageResource(dg.ConfigurableResource):
    """The storage base the IO manager writes to, for reads of optional neighbouring days and side files."""

    base_uri: str = Field(
        description="Folder or s3://bucket/prefix that holds one sub-folder per asset table (the IO manager's base)."
    )
    s3: Optional[S3Resource] = Field(default=None, description=S3_FIELD_DESCRIPTION)
    snapshot_retention_days: float = Field(
        default=90.0,
        description=(
            "Days an archived input snapshot (input_snapshot_archive/sha256=...) is kept after it was archived; "
            "one that a published day's rows still come from is never removed."
        ),
    )
    day_chunk_rows: int = Field(
        default=DEFAULT_DAY_CHUNK_ROWS,
        gt=0,
        description=(
            "Rows a stage holds in memory at once: a day with more is validated, featurized, snapshotted and "
            "published in buckets of about this many rows, spilled to local disk (BATCHINFER_DAY_CHUNK_ROWS)."
        ),
    )
    spill_dir: Optional[str] = Field(
        default=None, description="Local folder for a big day's buckets while a stage runs; unset: the system's temp folder."
    )

    @property
    def store(self) -> PartitionedParquetStore:
        """The storage core over the tables' base URI."""
        return open_table_store(self.base_uri, self.s3)
