"""Batch spans, progress lines and remembered batch sizes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchinfer_assets.lib.batching import (
    BATCH_SIZES_FILE,
    BatchSizeMemory,
    ProgressMeter,
    batch_spans,
    halved,
    record_batch_matrix,
)


@pytest.mark.parametrize(
    ("rows", "size", "start", "expected"),
    [
        (0, 4, 0, []),
        (10, 4, 0, [(0, 4), (4, 8), (8, 10)]),
        (10, 4, 6, [(6, 10)]),
        (3, 5, 0, [(0, 3)]),
    ],
)
def test_batch_spans(rows, size, start, expected):
    assert list(batch_spans(rows, size, start)) == expected


def test_batch_spans_refuse_zero():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(batch_spans(3, 0))


@pytest.mark.parametrize(("size", "expected"), [(1024, 512), (3, 1), (1, 1)])
def test_halved(size, expected):
    assert halved(size) == expected


def test_progress_lines_at_intervals():
    now = [0.0]
    meter = ProgressMeter(total_rows=300, interval_s=10, clock=lambda: now[0])
    now[0] = 5
    assert meter.advance(100) is None
    now[0] = 10
    assert meter.advance(100) == "200 of 300 rows scored, 20 rows/s"
    now[0] = 15
    assert meter.advance(100) is None
    assert meter.line() == "300 of 300 rows scored, 20 rows/s"


def test_batch_size_memory_persists_per_model_and_device(tmp_path):
    memory = BatchSizeMemory(tmp_path / "state")
    assert memory.get("models:/m/1", "cuda:0") is None
    memory.remember("models:/m/1", "cuda:0", 4096)
    again = BatchSizeMemory(tmp_path / "state")
    assert again.get("models:/m/1", "cuda:0") == 4096
    assert again.get("models:/m/1", "cuda:1") is None
    assert again.get("models:/m/2", "cuda:0") is None


def test_batch_size_memory_without_folder_is_per_process(tmp_path):
    memory = BatchSizeMemory(None)
    memory.remember("models:/m/1", "cpu", 8)
    assert memory.get("models:/m/1", "cpu") == 8
    assert not list(tmp_path.iterdir())


def test_corrupt_batch_size_file_is_named(tmp_path):
    (tmp_path / BATCH_SIZES_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=BATCH_SIZES_FILE):
        BatchSizeMemory(tmp_path).get("models:/m/1", "cpu")


def test_record_batch_matrix_orders_columns_and_keeps_nulls():
    batch = pa.record_batch(
        {"b": pa.array([1.0, None], pa.float32()), "id": ["x", "y"], "a": pa.array([3.0, 4.0], pa.float64())}
    )
    matrix = record_batch_matrix(batch, ["a", "b"])
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous
    np.testing.assert_array_equal(matrix, np.array([[3.0, 1.0], [4.0, np.nan]], dtype=np.float32))
