"""Content hashes of tables: the same rows, columns and types give the same hash in any process."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

HASH_PREFIX = "sha256:"


class _HashSink:
    """A write-only file object that feeds a hash instead of storing bytes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass


# A table is hashed as Arrow IPC record batches of this many rows, so a day is hashed as it streams past holding
# at most one batch (and its copy in one piece) whatever the day's size. Before 0.5.0 this was 2,097,152 rows, which
# held up to 2 x 2M rows (about 0.4 GiB of card rows) in the step; tables of at most 65,536 rows hash as before.
HASH_CHUNK_ROWS = 1 << 16


class ContentHasher:
    """The content hash of a table fed in pieces: equal to `table_content_hash` of the whole, whatever the pieces."""

    def __init__(self) -> None:
        self._sink = _HashSink()
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def update(self, data: pa.Table | pa.RecordBatch) -> None:
        """Add the next rows."""
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        table = table.replace_schema_metadata(None)
        if self._schema is None:
            self._schema = table.schema
            self._writer = pa.ipc.new_stream(pa.PythonFile(self._sink, mode="w"), table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= HASH_CHUNK_ROWS:
            self._emit(HASH_CHUNK_ROWS)

    def _emit(self, rows: int) -> None:
        pending = pa.concat_tables(self._pending)
        chunk, rest = pending.slice(0, rows), pending.slice(rows)
        assert self._writer is not None and self._schema is not None
        # Each column copied into buffers of exactly its rows: the IPC writer writes a slice's whole value buffer
        # (a string column sliced from a bigger one hashed differently from the same rows read another way).
        batch = pa.RecordBatch.from_arrays([_exact(column) for column in chunk.columns], schema=self._schema)
        self._writer.write_batch(batch)
        self._pending, self._pending_rows = [rest], rest.num_rows

    def hexdigest(self, schema: pa.Schema | None = None) -> str:
        """The hash of everything added (`schema`: the table's, when no rows may have been added)."""
        if self._writer is None:
            self.update((schema or pa.schema([])).empty_table())
        if self._pending_rows:
            self._emit(self._pending_rows)
        assert self._writer is not None
        self._writer.close()
        return HASH_PREFIX + self._sink.digest.hexdigest()


def _exact(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array in new buffers sized to its rows (Arrow's concatenation copies even one chunk), its
    null slots holding zero, an empty string or False: the IPC body carries the bytes under a null, which differ
    with where the rows came from (pandas' NaN, Parquet's zero)."""
    array = pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)
    blank = _blank(array.type)
    if array.null_count == 0 or blank is None:
        return array
    filled = pc.fill_null(array, blank)
    return pa.Array.from_buffers(array.type, len(array), [array.buffers()[0], *filled.buffers()[1:]], null_count=array.null_count)


def _blank(kind: pa.DataType) -> pa.Scalar | None:
    """The value stored under a null of a flat type (None: a type whose nulls are left as they are)."""
    if pa.types.is_boolean(kind):
        return pa.scalar(False)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pa.scalar(0, kind)
    if pa.types.is_temporal(kind):
        return pa.scalar(0, pa.int64() if kind.bit_width == 64 else pa.int32()).cast(kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.scalar("", kind)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.scalar(b"", kind)
    return None


def table_content_hash(table: pa.Table) -> str:
    """sha256 of the table's canonical Arrow IPC stream (schema metadata dropped, batches of HASH_CHUNK_ROWS rows)."""
    hasher = ContentHasher()
    for offset in range(0, table.num_rows, HASH_CHUNK_ROWS):
        hasher.update(table.slice(offset, HASH_CHUNK_ROWS))
    return hasher.hexdigest(table.schema)


def frame_content_hash(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame's values, column names and types (the index is ignored)."""
    return table_content_hash(pa.Table.from_pandas(frame, preserve_index=False))
