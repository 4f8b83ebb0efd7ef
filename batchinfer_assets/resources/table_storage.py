"""Direct access to the asset tables for assets that read days other than the ones they depend on."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from batchinfer_assets.lib.parquet_store import PartitionedParquetStore


class TableStorageResource(dg.ConfigurableResource):
    """The storage base the IO manager writes to, for reads of optional neighbouring days and side files."""

    base_uri: str = Field(description="Folder that holds one sub-folder per asset table (the IO manager's base).")

    @property
    def store(self) -> PartitionedParquetStore:
        """The storage core over the same base as the IO manager."""
        return PartitionedParquetStore(self.base_uri)

    def side_file(self, folder: str, day: str, filename: str) -> Path:
        """`{base}/{folder}/dt={day}/{filename}`: a per-day file kept beside the tables."""
        return self.store.base / folder / f"dt={day}" / filename
