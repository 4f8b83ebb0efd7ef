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


def table_content_hash(table: pa.Table) -> str:
    """sha256 of the table's canonical Arrow IPC stream (schema metadata dropped, chunks combined)."""
    canonical = table.replace_schema_metadata(None).combine_chunks()
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), canonical.schema) as writer:
        writer.write_table(canonical)
    return HASH_PREFIX + sink.digest.hexdigest()


def frame_content_hash(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame's values, column names and types (the index is ignored)."""
    return table_content_hash(pa.Table.from_pandas(frame, preserve_index=False))
