"""Hive-style partitioned Parquet tables: `{base}/{table}/dt={YYYY-MM-DD}/part-*.parquet`.

A partition is replaced by writing the new files into a hidden staging folder (names starting with `_`
are ignored by pyarrow.dataset, Spark, DuckDB and Athena) and swapping folders with renames, so a
reader sees either the old files or the new ones, never a half-written file or a mix of both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PARTITION_COLUMN = "dt"
STAGING_DIR = "_staging"
ROWS_PER_FILE = 2_000_000
ROW_GROUP_SIZE = 256 * 1024


class PartitionNotFoundError(FileNotFoundError):
    """A partition that was asked for has never been written."""


class PartitionedParquetStore:
    """Reads and atomically replaces daily partitions of Parquet tables under one base folder."""

    def __init__(self, base_uri: str | os.PathLike[str]):
        base = str(base_uri)
        if "://" in base and not base.startswith("file://"):
            raise ValueError(f"storage URI {base!r} is not a local path; only local storage is supported here")
        self.base = Path(base.removeprefix("file://")).absolute()

    def table_dir(self, table: str) -> Path:
        """The folder of one table."""
        return self.base / table

    def partition_dir(self, table: str, dt: str) -> Path:
        """The folder of one day of one table."""
        return self.table_dir(table) / f"{PARTITION_COLUMN}={dt}"

    def has_partition(self, table: str, dt: str) -> bool:
        """Whether the day has been written."""
        self._restore_interrupted_swap(table, dt)
        return self.partition_dir(table, dt).is_dir()

    def partition_files(self, table: str, dt: str) -> list[Path]:
        """The day's Parquet files in read order."""
        self._restore_interrupted_swap(table, dt)
        folder = self.partition_dir(table, dt)
        if not folder.is_dir():
            raise PartitionNotFoundError(f"no partition dt={dt} of table {table!r}: {folder} does not exist")
        return sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith((".", "_")))

    def read_partition(self, table: str, dt: str, columns: Iterable[str] | None = None) -> pa.Table:
        """The whole day as one Arrow table (an empty day keeps its schema)."""
        files = self.partition_files(table, dt)
        cols = list(columns) if columns is not None else None
        tables = [pq.read_table(f, columns=cols) for f in files]
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables)

    def iter_batches(
        self, table: str, dt: str, batch_size: int, columns: Iterable[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The day as a stream of record batches, so memory stays bounded by the batch size."""
        cols = list(columns) if columns is not None else None
        for path in self.partition_files(table, dt):
            with pq.ParquetFile(path) as pf:
                yield from pf.iter_batches(batch_size=batch_size, columns=cols)

    def write_partition(self, table: str, dt: str, data: pa.Table) -> Path:
        """Replace the day's files with `data`, atomically for readers."""
        self._restore_interrupted_swap(table, dt)
        table_dir = self.table_dir(table)
        staging_root = table_dir / STAGING_DIR
        token = uuid.uuid4().hex
        staging = staging_root / f"{PARTITION_COLUMN}={dt}.{token}"
        staging.mkdir(parents=True, exist_ok=False)
        try:
            for i, offset in enumerate(range(0, max(data.num_rows, 1), ROWS_PER_FILE)):
                _write_file(staging / f"part-{i:05d}.parquet", data.slice(offset, ROWS_PER_FILE))
            _fsync_dir(staging)
            final = self.partition_dir(table, dt)
            previous = staging_root / f"{PARTITION_COLUMN}={dt}.{token}.previous"
            if final.exists():
                os.rename(final, previous)
            os.rename(staging, final)
            _fsync_dir(table_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(previous, ignore_errors=True)
        return final

    @contextlib.contextmanager
    def partition_writer(self, table: str, dt: str, schema: pa.Schema) -> Iterator[PartitionWriter]:
        """Replace the day's files with what is written through the yielded writer, swapped in only on success."""
        self._restore_interrupted_swap(table, dt)
        table_dir = self.table_dir(table)
        staging_root = table_dir / STAGING_DIR
        token = uuid.uuid4().hex
        staging = staging_root / f"{PARTITION_COLUMN}={dt}.{token}"
        staging.mkdir(parents=True, exist_ok=False)
        previous = staging_root / f"{PARTITION_COLUMN}={dt}.{token}.previous"
        try:
            writer = PartitionWriter(staging, schema)
            yield writer
            writer.close()
            _fsync_dir(staging)
            final = self.partition_dir(table, dt)
            if final.exists():
                os.rename(final, previous)
            os.rename(staging, final)
            _fsync_dir(table_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(previous, ignore_errors=True)

    def delete_partition(self, table: str, dt: str) -> None:
        """Remove the day's folder if present."""
        shutil.rmtree(self.partition_dir(table, dt), ignore_errors=True)

    def _restore_interrupted_swap(self, table: str, dt: str) -> None:
        # A process killed between the two renames of a swap leaves the day only in `.previous`.
        final = self.partition_dir(table, dt)
        if final.exists():
            return
        staging_root = self.table_dir(table) / STAGING_DIR
        if not staging_root.is_dir():
            return
        leftovers = sorted(staging_root.glob(f"{PARTITION_COLUMN}={dt}.*.previous"), key=lambda p: p.stat().st_mtime)
        if leftovers:
            os.rename(leftovers[-1], final)


class PartitionWriter:
    """Streams record batches into a staging folder: row groups of ROW_GROUP_SIZE, a new file every ROWS_PER_FILE rows."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        self.rows_written = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._files = 0
        self._file_rows = 0
        self._sink = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append rows (cast to the writer's schema); full row groups go to disk, the rest waits."""
        if batch.schema != self.schema:
            batch = batch.cast(self.schema) if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]).cast(self.schema)
        parts = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for part in parts:
            if part.num_rows:
                self._pending.append(part)
                self._pending_rows += part.num_rows
        while self._pending_rows >= ROW_GROUP_SIZE:
            self._flush(ROW_GROUP_SIZE)

    def close(self) -> None:
        """Write what is left (an empty file when nothing was written, so the day keeps its schema) and sync."""
        if self._pending_rows or self._writer is None:
            self._flush(self._pending_rows)
        self._close_file()

    def _flush(self, rows: int) -> None:
        pending = pa.Table.from_batches(self._pending, schema=self.schema)
        group, rest = pending.slice(0, rows), pending.slice(rows)
        self._pending, self._pending_rows = rest.to_batches(), rest.num_rows
        offset = 0
        while True:
            if self._writer is None or self._file_rows >= ROWS_PER_FILE:
                self._open_file()
            take = min(group.num_rows - offset, ROWS_PER_FILE - self._file_rows)
            self._writer.write_table(group.slice(offset, take), row_group_size=ROW_GROUP_SIZE)
            self._file_rows += take
            self.rows_written += take
            offset += take
            if offset >= group.num_rows:
                return

    def _open_file(self) -> None:
        self._close_file()
        self._sink = open(self.folder / f"part-{self._files:05d}.parquet", "wb")
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._files += 1
        self._file_rows = 0

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self._sink.close()
        self._writer = self._sink = None


def _write_file(path: Path, data: pa.Table) -> None:
    with open(path, "wb") as sink:
        pq.write_table(data, sink, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        sink.flush()
        os.fsync(sink.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
