"""A day's snapshot files as a Ray Data datasource whose planning runs no Ray task.

`ray.data.read_parquet` samples the files with Ray tasks while the dataset is planned, before Ray Data's
no-progress guard is armed: on a cluster with no free CPU those tasks wait forever. A thread left waiting for them
would stay inside Ray after the step leaves the cluster, and Ray crashes the process (SIGSEGV) when such a thread
outlives `ray.shutdown` and the process joins a cluster again (ray-project/ray#31145). Here the step reads the
footers itself (one or two ranged reads per file on S3, with the store's own client), so planning is pure Python
and every Ray task of the job runs under the guard.

One read task per `rows_per_block` rows of a row group, in file and row order, each yielding one table. (A task
that yields smaller tables gets them merged into one block up to Ray Data's target block size: on the tests' 1,200
rows read per row group, a single block, so one actor task scored the whole day.) So a file spreads over
the whole actor pool, each actor call gets one block, and with `preserve_order` blocks come back in the
snapshot's order. A row group split into k
pieces is decoded k times; with the default 65,536 rows a block and the store's 262,144-row groups that is 4
decodes of the few columns read, small beside scoring them.

Imported only where Ray is (`RayScoringEngine.score_day`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask


@dataclass(frozen=True)
class Piece:
    """Rows `offset` to `offset + rows` of one row group of one file: what a read task reads."""

    path: str
    row_group: int
    offset: int
    rows: int
    # Uncompressed bytes of the columns read, pro rata: Ray Data's estimate of the block's size in memory.
    size_bytes: int


def pieces(paths: Sequence[str], footers: Sequence[pq.FileMetaData], columns: Sequence[str], rows_per_block: int) -> list[Piece]:
    """The files' rows in read order, in pieces of at most `rows_per_block` rows that never cross a row group."""
    if rows_per_block < 1:
        raise ValueError(f"rows_per_block must be at least 1, got {rows_per_block}")
    wanted = set(columns)
    out = []
    for path, footer in zip(paths, footers, strict=True):
        for index in range(footer.num_row_groups):
            group = footer.row_group(index)
            size = sum(
                group.column(c).total_uncompressed_size for c in range(group.num_columns) if group.column(c).path_in_schema in wanted
            )
            for offset in range(0, group.num_rows, rows_per_block):
                rows = min(rows_per_block, group.num_rows - offset)
                out.append(Piece(path, index, offset, rows, int(size * rows // max(group.num_rows, 1))))
    return out


class SnapshotDatasource(Datasource):
    """The day's pieces, read on the cluster's nodes with `filesystem` (None: local paths)."""

    def __init__(self, day_pieces: list[Piece], filesystem: Optional[Any], columns: Sequence[str]) -> None:
        super().__init__()
        self.pieces = day_pieces
        self.filesystem = filesystem
        self.columns = list(columns)

    def get_name(self) -> str:
        return "InputSnapshot"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return sum(piece.size_bytes for piece in self.pieces)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None, data_context: Any = None) -> list[ReadTask]:
        """One task per piece whatever `parallelism` asks: the engine passes the number of pieces as it."""
        return [
            ReadTask(
                functools.partial(read_piece, piece, self.filesystem, self.columns),
                BlockMetadata(num_rows=piece.rows, size_bytes=piece.size_bytes, input_files=[piece.path], exec_stats=None),
                per_task_row_limit=per_task_row_limit,
            )
            for piece in self.pieces
        ]


def read_piece(piece: Piece, filesystem: Optional[Any], columns: list[str]) -> Iterator[pa.Table]:
    """The piece's rows as one table (runs in a Ray task on a node)."""
    source = filesystem.open_input_file(piece.path) if filesystem is not None else piece.path
    with pq.ParquetFile(source, pre_buffer=False) as parquet:
        yield parquet.read_row_group(piece.row_group, columns=columns).slice(piece.offset, piece.rows)
