"""The Ray engine's snapshot read (`ray_snapshot_read`): pieces planned from footers alone, read back in order."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.resources.ray_snapshot_read import Piece, SnapshotDatasource, pieces, read_piece


def _files(tmp_path):
    """Two files: ten rows in row groups of 4, 4 and 2; then three rows in one group."""
    first, second = tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(10)], "x": list(range(10)), "y": [0.5] * 10}), first, row_group_size=4)
    pq.write_table(pa.table({"id": ["t10", "t11", "t12"], "x": [10, 11, 12], "y": [0.5] * 3}), second)
    paths = [str(first), str(second)]
    return paths, [pq.read_metadata(path) for path in paths]


def test_pieces_split_each_row_group_into_blocks_that_never_cross_it(tmp_path):
    paths, footers = _files(tmp_path)

    planned = pieces(paths, footers, ["id", "x"], rows_per_block=3)

    assert [(p.path == paths[1], p.row_group, p.offset, p.rows) for p in planned] == [
        (False, 0, 0, 3), (False, 0, 3, 1), (False, 1, 0, 3), (False, 1, 3, 1), (False, 2, 0, 2), (True, 0, 0, 3),
    ]
    assert all(p.size_bytes > 0 for p in planned)


def test_the_pieces_read_back_are_the_days_rows_in_order_with_only_the_columns_asked(tmp_path):
    paths, footers = _files(tmp_path)
    source = SnapshotDatasource(pieces(paths, footers, ["id", "x"], rows_per_block=3), None, ["id", "x"])

    tasks = source.get_read_tasks(parallelism=1)
    tables = [table for task in tasks for table in task()]

    assert len(tasks) == 6 and [task.metadata.num_rows for task in tasks] == [3, 1, 3, 1, 2, 3]
    day = pa.concat_tables(tables)
    assert day.column_names == ["id", "x"]
    assert day.column("id").to_pylist() == [f"t{i}" for i in range(13)]
    assert day.column("x").to_pylist() == list(range(13))


def test_a_piece_reads_its_rows_alone(tmp_path):
    paths, _ = _files(tmp_path)

    (table,) = read_piece(Piece(paths[0], row_group=1, offset=1, rows=2, size_bytes=0), None, ["x"])

    assert table.column("x").to_pylist() == [5, 6]


def test_a_block_of_no_rows_is_refused_naming_the_setting(tmp_path):
    paths, footers = _files(tmp_path)
    with pytest.raises(ValueError, match="rows_per_block must be at least 1, got 0"):
        pieces(paths, footers, ["id"], rows_per_block=0)
