"""A day too big to hold in memory, split by key into buckets on local disk and read back one bucket at a time.

Rows with the same key always land in the same bucket (a group stays whole), and each bucket keeps the rows in the
order they were added, so what is computed bucket by bucket is the same in every run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# Rows a stage holds in memory at once; a day over it is processed in buckets of about this many rows.
DEFAULT_DAY_CHUNK_ROWS = 1_000_000
DAY_CHUNK_ROWS_VARIABLE = "BATCHINFER_DAY_CHUNK_ROWS"


def bucket_count(rows: int, chunk_rows: int) -> int:
    """How many buckets split `rows` into parts of about `chunk_rows` (1: the day fits in memory whole)."""
    return max(1, -(-rows // chunk_rows))


def bucket_of(keys: pa.Array | pa.ChunkedArray | pd.Series, buckets: int) -> np.ndarray:
    """The bucket of each key: a fixed-seed hash of its value, the same in every process, platform and run."""
    series = keys if isinstance(keys, pd.Series) else keys.to_pandas()
    hashed = pd.util.hash_pandas_object(series, index=False).to_numpy()
    return (hashed % np.uint64(buckets)).astype(np.int64)


def split_by_bucket(table: pa.Table, buckets: np.ndarray, count: int) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, rows) for each non-empty bucket of `table`, the rows of each in their order in `table`."""
    order = np.argsort(buckets, kind="stable")
    sizes = np.bincount(buckets, minlength=count)
    ordered = table.take(pa.array(order))
    start = 0
    for bucket, size in enumerate(sizes):
        if size:
            yield bucket, ordered.slice(start, int(size))
            start += int(size)


class DayBuckets:
    """`count` bucket files in a private temporary folder (removed on close), written batch by batch, read bucket by bucket."""

    def __init__(self, count: int, schema: pa.Schema, spill_dir: str | Path | None = None) -> None:
        self.count = count
        self.schema = schema
        self._folder = tempfile.TemporaryDirectory(prefix="batchinfer-spill-", dir=spill_dir)
        self._writers: dict[int, pq.ParquetWriter] = {}
        self._rows = np.zeros(count, dtype=np.int64)

    def __enter__(self) -> DayBuckets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _path(self, bucket: int) -> Path:
        return Path(self._folder.name) / f"bucket-{bucket:05d}.parquet"

    def add(self, table: pa.Table | pa.RecordBatch, buckets: np.ndarray) -> None:
        """Append rows to their buckets (`buckets`: one bucket number per row)."""
        if not isinstance(table, pa.Table):
            table = pa.Table.from_batches([table])
        table = table.cast(self.schema) if table.schema != self.schema else table
        for bucket, rows in split_by_bucket(table, buckets, self.count):
            writer = self._writers.get(bucket)
            if writer is None:
                # Spill files live minutes: fast compression, no statistics.
                writer = pq.ParquetWriter(self._path(bucket), self.schema, compression="lz4", write_statistics=False)
                self._writers[bucket] = writer
            writer.write_table(rows)
            self._rows[bucket] += rows.num_rows

    @property
    def rows(self) -> Sequence[int]:
        """Rows added to each bucket so far."""
        return [int(n) for n in self._rows]

    def __iter__(self) -> Iterator[pa.Table]:
        """Each bucket's rows in the order they were added (empty buckets skipped); each file is removed once read."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        for bucket in range(self.count):
            path = self._path(bucket)
            if path.exists():
                table = pq.read_table(path)
                path.unlink()
                yield table

    def close(self) -> None:
        """Close the writers and remove the folder with whatever is left in it."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._folder.cleanup()
