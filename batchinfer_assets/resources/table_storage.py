"""Direct access to the asset tables for assets that read days other than the ones they depend on."""

from typing import Optional

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.resources.storage import S3_FIELD_DESCRIPTION, open_table_store


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

    @property
    def store(self) -> PartitionedParquetStore:
        """The storage core over the same base as the IO manager."""
        return open_table_store(self.base_uri, self.s3)

    def write_side_file(self, folder: str, day: str, filename: str, text: str) -> str:
        """Replace `{base}/{folder}/dt={day}/{filename}`, a per-day file kept beside the tables; its path or URI."""
        return self.store.write_side_file(folder, day, filename, text)
