"""Content hashes of tables: the same rows, columns and types give the same hash in any process."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa

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


# A table is hashed as Arrow IPC record batches of this many rows: a day is hashed as it streams past, and any
# table of at most this many rows hashes as one batch (as every day did before days were streamed).
HASH_CHUNK_ROWS = 1 << 21


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
        assert self._writer is not None
        self._writer.write_table(chunk.combine_chunks())
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


def table_content_hash(table: pa.Table) -> str:
    """sha256 of the table's canonical Arrow IPC stream (schema metadata dropped, batches of HASH_CHUNK_ROWS rows)."""
    hasher = ContentHasher()
    for offset in range(0, table.num_rows, HASH_CHUNK_ROWS):
        hasher.update(table.slice(offset, HASH_CHUNK_ROWS))
    return hasher.hexdigest(table.schema)


def frame_content_hash(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame's values, column names and types (the index is ignored)."""
    return table_content_hash(pa.Table.from_pandas(frame, preserve_index=False))
