"""Content hashes: the definition (sha256 of the table's Arrow IPC stream in fixed batches) and that pieces do not matter."""

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchinfer_assets.lib.hashing import HASH_CHUNK_ROWS, ContentHasher, frame_content_hash, table_content_hash


def _table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    amounts = rng.normal(50, 20, rows)
    return pa.table(
        {
            "transaction_id": pa.array([f"t{i:08d}" for i in range(rows)]),
            "amount": pa.array(amounts, mask=rng.random(rows) < 0.01),
            "merchant": pa.array(rng.choice(["grocery", "travel", "", "électronique"], rows)),
            "is_online": pa.array(rng.random(rows) < 0.5),
            "ts": pa.array(np.arange(rows, dtype="int64") * 1_000_000, pa.timestamp("us", tz="UTC")),
        },
        metadata={b"source": b"landing"},
    )


def _reference(table: pa.Table, batch_rows: int) -> str:
    """The definition, written out independently: one IPC stream of the schema without metadata, then the rows in
    batches of `batch_rows`, each column built afresh from its values (buffers sized to the batch's rows)."""
    schema = table.schema.remove_metadata()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for offset in range(0, table.num_rows, batch_rows):
            piece = table.slice(offset, batch_rows)
            arrays = [pa.array(piece.column(name).to_pylist(), field.type) for name, field in zip(schema.names, schema)]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return "sha256:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def test_the_hash_is_the_ipc_stream_in_batches_of_65536_rows():
    table = _table(150_000)
    assert HASH_CHUNK_ROWS == 65_536
    assert table_content_hash(table) == _reference(table, 65_536)
    assert table_content_hash(table) != _reference(table, 150_000), "the batch size is part of the definition"


@pytest.mark.parametrize("cuts", [(1,), (65_535, 1), (65_536,), (70_000, 3, 9_999), (140_000,), (149_999,)])
def test_pieces_of_any_size_hash_as_the_whole(cuts):
    table = _table(150_000, seed=1)
    hasher, start = ContentHasher(), 0
    for end in [*np.cumsum(cuts), table.num_rows]:
        hasher.update(table.slice(start, int(end) - start))
        start = int(end)
    assert hasher.hexdigest() == table_content_hash(table)


def test_a_slice_of_a_bigger_column_hashes_as_the_same_rows_read_alone():
    """A slice shares its parent's value buffer; the IPC writer writes that buffer whole, so the same rows hashed
    differently depending on what they were cut from (a day read back in other batches)."""
    table = _table(150_000, seed=6)
    alone = pa.Table.from_pylist(table.slice(0, 65_536).to_pylist(), schema=table.schema)
    assert table_content_hash(table.slice(0, 65_536)) == table_content_hash(alone) == _reference(alone, 65_536)


def test_the_bytes_under_a_null_do_not_change_the_hash():
    """pandas' NaN becomes a null over a NaN; Parquet reads a null over zero: the same rows, one hash."""
    from_pandas = pa.Table.from_pandas(
        pd.DataFrame({"amount": [1.5, np.nan, 2.0], "merchant": ["a", None, "b"]}), preserve_index=False
    )
    from_parquet = pa.table({"amount": pa.array([1.5, None, 2.0]), "merchant": pa.array(["a", None, "b"], pa.large_string())})
    hidden = pa.Array.from_buffers(
        pa.float64(), 3, [from_parquet.column(0).chunk(0).buffers()[0], pa.py_buffer(np.array([1.5, 7.0, 2.0]).tobytes())]
    )
    assert hidden.to_pylist() == [1.5, None, 2.0]
    assert table_content_hash(from_pandas.cast(from_parquet.schema)) == table_content_hash(from_parquet)
    assert table_content_hash(from_parquet.set_column(0, "amount", hidden)) == table_content_hash(from_parquet)


def test_batches_and_tables_of_several_chunks_hash_alike():
    table = _table(100_000, seed=2)
    chunked = pa.concat_tables([table.slice(0, 10), table.slice(10, 50_000), table.slice(50_010)])
    hasher = ContentHasher()
    for batch in table.to_batches(max_chunksize=7_777):
        hasher.update(batch)
    assert hasher.hexdigest() == table_content_hash(chunked) == table_content_hash(table)


def test_a_hasher_holds_at_most_one_batch_of_pending_rows():
    hasher = ContentHasher()
    hasher.update(_table(200_000, seed=3))
    assert hasher._pending_rows < HASH_CHUNK_ROWS


def test_values_types_and_names_change_the_hash_and_metadata_does_not():
    table = _table(1_000, seed=4)
    assert table_content_hash(table) == table_content_hash(table.replace_schema_metadata({b"x": b"y"}))
    changed = table.set_column(1, "amount", pa.compute.add(table.column("amount"), 0.5))
    assert table_content_hash(changed) != table_content_hash(table)
    assert table_content_hash(table.rename_columns(["id", *table.column_names[1:]])) != table_content_hash(table)
    assert table_content_hash(table.cast(table.schema.set(1, pa.field("amount", pa.float32())))) != table_content_hash(table)


def test_an_empty_day_hashes_by_its_schema():
    schema = _table(1).schema
    hasher = ContentHasher()
    assert hasher.hexdigest(schema) == _reference(schema.empty_table(), 65_536)
    assert ContentHasher().hexdigest(schema) != ContentHasher().hexdigest(pa.schema([("x", pa.int64())]))


def test_a_frames_hash_ignores_its_index_and_follows_its_values():
    table = _table(2_000, seed=5)
    frame = table.to_pandas()
    assert frame_content_hash(frame) == frame_content_hash(frame.set_axis(range(10, 2_010)))
    assert frame_content_hash(frame) == frame_content_hash(frame.iloc[::-1].iloc[::-1])
    assert frame_content_hash(frame) != frame_content_hash(frame.assign(amount=frame["amount"] + 1))
