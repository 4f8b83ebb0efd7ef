"""Buckets on disk: whole groups, original order within a bucket, the same split in every process."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from batchinfer_assets.lib.spill import DayBuckets, RowOrderedSpill, bucket_count, bucket_of


@pytest.mark.parametrize(("rows", "chunk", "expected"), [(0, 10, 1), (1, 10, 1), (10, 10, 1), (11, 10, 2), (100, 7, 15)])
def test_bucket_count_splits_rows_into_parts_of_at_most_chunk(rows, chunk, expected):
    assert bucket_count(rows, chunk) == expected


def test_groups_stay_whole_and_rows_keep_their_order_across_batches(tmp_path):
    rng = np.random.default_rng(7)
    groups = [f"c{g}" for g in rng.integers(0, 300, size=5_000)]
    table = pa.table({"group": groups, "row": np.arange(5_000)})
    with DayBuckets(4, table.schema, spill_dir=tmp_path) as buckets:
        for start in range(0, 5_000, 1_234):
            batch = table.slice(start, 1_234)
            buckets.add(batch, bucket_of(batch.column("group"), 4))
        assert sum(buckets.rows) == 5_000
        parts = list(buckets)
    assert len(parts) == 4
    seen: dict[str, int] = {}
    for index, part in enumerate(parts):
        rows = part.column("row").to_numpy()
        assert (np.diff(rows) > 0).all()
        for group in set(part.column("group").to_pylist()):
            assert seen.setdefault(group, index) == index
    assert sorted(np.concatenate([p.column("row").to_numpy() for p in parts]).tolist()) == list(range(5_000))
    assert list(tmp_path.iterdir()) == []


def test_bucket_of_is_the_same_in_another_process():
    keys = ["a", "b", "customer-0001", "é", ""]
    here = bucket_of(pa.array(keys), 7).tolist()
    code = (
        "import pyarrow as pa; from batchinfer_assets.lib.spill import bucket_of; "
        f"print(bucket_of(pa.array({keys!r}), 7).tolist())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", **__import__("os").environ}).stdout
    assert there.strip() == str(here)


def test_parts_come_back_merged_in_the_order_of_the_days_rows(tmp_path):
    rng = np.random.default_rng(3)
    rows = np.flatnonzero(rng.random(50_000) > 0.2)  # the day's rows that reach this output (the rest quarantined)
    parts = rng.integers(0, 5, len(rows))  # the bucket each row went through
    schema = pa.schema([("row", pa.int64()), ("text", pa.string())])
    with RowOrderedSpill(schema, tmp_path) as spill:
        for part in range(5):
            numbers = rows[parts == part]
            spill.add(pa.table({"row": numbers, "text": [f"r{n}" for n in numbers]}, schema=schema), numbers)
        chunks = list(spill.merged(7_000))

    merged = pa.concat_tables(chunks)
    assert merged.schema == schema
    assert merged.column("row").to_pylist() == rows.tolist()
    assert merged.column("text").to_pylist() == [f"r{n}" for n in rows]
    assert max(chunk.num_rows for chunk in chunks) <= 7_000
    assert list(tmp_path.iterdir()) == []  # the spill files are gone


def test_more_parts_than_the_fan_in_merge_in_passes_holding_at_most_the_fan_in_open(tmp_path, monkeypatch):
    """A day of N buckets merged N files at once: open files and read buffers grew with the day (a billion rows in
    chunks of 250,000 is 4,000 buckets). Past MERGE_FAN_IN parts the merge runs in passes."""
    from batchinfer_assets.lib import spill as spill_module

    monkeypatch.setattr(spill_module, "MERGE_FAN_IN", 4)
    open_now, most = [0], [0]
    real_init, real_close = spill_module._PartCursor.__init__, spill_module._PartCursor.close

    def counted_init(self, path):
        real_init(self, path)
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])

    def counted_close(self):
        real_close(self)
        open_now[0] -= 1

    monkeypatch.setattr(spill_module._PartCursor, "__init__", counted_init)
    monkeypatch.setattr(spill_module._PartCursor, "close", counted_close)
    rng = np.random.default_rng(5)
    rows = np.flatnonzero(rng.random(20_000) > 0.1)
    parts = rng.integers(0, 30, len(rows))
    schema = pa.schema([("row", pa.int64()), ("text", pa.string())])
    with RowOrderedSpill(schema, tmp_path, rows_per_read=1_000) as spill:
        for part in range(30):
            numbers = rows[parts == part]
            spill.add(pa.table({"row": numbers, "text": [f"r{n}" for n in numbers]}, schema=schema), numbers)
        chunks = list(spill.merged(3_000))

    merged = pa.concat_tables(chunks)
    assert merged.column("row").to_pylist() == rows.tolist()
    assert merged.column("text").to_pylist() == [f"r{n}" for n in rows]
    assert max(chunk.num_rows for chunk in chunks) <= 3_000
    assert most[0] == 4 and open_now[0] == 0
    assert list(tmp_path.iterdir()) == []


def test_a_part_whose_rows_do_not_rise_is_refused(tmp_path):
    with RowOrderedSpill(pa.schema([("v", pa.int64())]), tmp_path) as spill, pytest.raises(ValueError, match="must rise"):
        spill.add(pa.table({"v": [1, 2]}), np.array([5, 3]))
