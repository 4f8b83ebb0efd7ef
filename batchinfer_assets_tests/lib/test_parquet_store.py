import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from batchinfer_assets.lib.parquet_store import STAGING_DIR, PartitionedParquetStore, PartitionNotFoundError


def _table(n: int, offset: int = 0) -> pa.Table:
    return pa.table({"transaction_id": [f"t{i}" for i in range(offset, offset + n)], "score": [i / 10 for i in range(n)]})


def test_write_then_read_roundtrip_in_hive_layout(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("predictions", "2025-01-02", _table(5))

    files = list((tmp_path / "predictions" / "dt=2025-01-02").glob("*.parquet"))
    assert len(files) == 1
    assert store.read_partition("predictions", "2025-01-02").equals(_table(5))


def test_rewrite_replaces_never_appends(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("predictions", "2025-01-02", _table(5))
    store.write_partition("predictions", "2025-01-02", _table(3, offset=100))

    assert store.read_partition("predictions", "2025-01-02").column("transaction_id").to_pylist() == ["t100", "t101", "t102"]
    assert os.listdir(tmp_path / "predictions" / STAGING_DIR) == []


def test_other_days_untouched_by_a_write(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    before = (tmp_path / "t" / "dt=2025-01-01").stat().st_ino
    store.write_partition("t", "2025-01-02", _table(3))
    assert (tmp_path / "t" / "dt=2025-01-01").stat().st_ino == before


def test_hive_readers_see_dt_column_and_ignore_staging(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    store.write_partition("t", "2025-01-02", _table(3))
    (tmp_path / "t" / STAGING_DIR / "dt=2025-01-03.abc").mkdir(parents=True)
    (tmp_path / "t" / STAGING_DIR / "dt=2025-01-03.abc" / "part-00000.parquet").write_bytes(b"half written")

    dataset = ds.dataset(tmp_path / "t", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 5
    assert sorted(set(table.column("dt").to_pylist())) == ["2025-01-01", "2025-01-02"]


def test_missing_partition_names_table_and_day(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    with pytest.raises(PartitionNotFoundError, match=r"dt=2025-02-03 of table 'predictions'"):
        store.read_partition("predictions", "2025-02-03")


def test_failed_write_keeps_previous_files(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))


    with pytest.raises(AttributeError):
        store.write_partition("t", "2025-01-01", None)  # type: ignore[arg-type]
    assert store.read_partition("t", "2025-01-01").equals(_table(2))
    assert os.listdir(tmp_path / "t") == ["dt=2025-01-01"], "no staging left behind"


def test_a_tables_first_failed_write_leaves_no_folder(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    with pytest.raises(RuntimeError), store.partition_writer("t", "2025-01-01", _table(2).schema) as writer:
        writer.write(_table(2))
        raise RuntimeError("the second landing file is unreadable")
    assert not (tmp_path / "t").exists()


def test_interrupted_swap_is_restored(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    # Simulate a process killed between the two renames of a swap.
    staging = tmp_path / "t" / STAGING_DIR
    os.rename(tmp_path / "t" / "dt=2025-01-01", staging / "dt=2025-01-01.deadbeef.previous")

    assert store.read_partition("t", "2025-01-01").equals(_table(2))


def test_a_replace_never_moves_the_day_folder_away(tmp_path, monkeypatch):
    """A reader of the folder itself (DuckDB over `dt=*/*.parquet`) must find the day at every instant of a
    replace. With two renames, a writer killed between them left no `dt=` folder until the store's next read
    restored it (seen as a day read as absent in system/test_sigkill.py). Every rename is recorded: none may
    take the day's folder as its source."""
    from batchinfer_assets.lib import parquet_store as ps

    if ps._renameat2() is None:
        pytest.skip("this system has no renameat2 (not Linux, or a C library without it): the two-rename fallback is used")
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    day = tmp_path / "t" / "dt=2025-01-01"
    inode = day.stat().st_ino
    sources = []
    real_rename = os.rename
    monkeypatch.setattr(ps.os, "rename", lambda a, b: (sources.append(os.fspath(a)), real_rename(a, b))[1])

    store.write_partition("t", "2025-01-01", _table(3, offset=10))

    assert os.fspath(day) not in sources
    assert day.stat().st_ino != inode, "the folder at the day's path is the new one"
    assert store.read_partition("t", "2025-01-01").equals(_table(3, offset=10))
    assert os.listdir(tmp_path / "t" / STAGING_DIR) == [], "the replaced day is removed"


def test_without_an_atomic_exchange_a_replace_falls_back_to_two_renames(tmp_path, monkeypatch):
    from batchinfer_assets.lib import parquet_store as ps

    monkeypatch.setattr(ps, "_renameat2", lambda: None)
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    store.write_partition("t", "2025-01-01", _table(3, offset=10))

    assert store.read_partition("t", "2025-01-01").equals(_table(3, offset=10))
    assert os.listdir(tmp_path / "t" / STAGING_DIR) == []


def test_a_failed_exchange_is_raised_naming_the_day(tmp_path):
    from batchinfer_assets.lib import parquet_store as ps

    if ps._renameat2() is None:
        pytest.skip("this system has no renameat2: nothing to fail")
    with pytest.raises(FileNotFoundError, match="dt=2025-01-01"):
        ps._exchange(tmp_path / "staging", tmp_path / "dt=2025-01-01")


@pytest.mark.parametrize("pieces", [65_536, 50_000, 12_345, 131_072, 600_000])
def test_a_days_files_depend_on_its_rows_not_on_the_pieces_they_came_in(tmp_path, pieces):
    """Arrow's Parquet writer cut pages where its input's chunks ended: the Ray engine's blocks and the local
    engine's batches gave the same predictions different bytes, and a reproduction compares bytes. Every way of
    cutting the rows gives the bytes of the local engine's 65,536-row batches, written straight with pyarrow."""
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    rows = 600_000
    table = pa.table(
        {
            "transaction_id": pa.array([f"t{i:09d}" for i in range(rows)], pa.large_string()),
            "score": pa.array(rng.random(rows, dtype=np.float32)),
            "label": pa.array(rng.integers(0, 2, rows).astype(np.int8)),
        }
    )
    store = PartitionedParquetStore(tmp_path / "store")
    with store.partition_writer("predictions", "2025-01-01", table.schema) as writer:
        for batch in table.to_batches(max_chunksize=pieces):
            writer.write(batch)
    expected = tmp_path / "expected.parquet"
    with pq.ParquetWriter(expected, table.schema, compression="zstd") as direct:
        for offset in range(0, rows, 262_144):
            group = table.slice(offset, 262_144)
            direct.write_table(pa.Table.from_batches(group.to_batches(max_chunksize=65_536)), row_group_size=262_144)

    [written] = (tmp_path / "store" / "predictions" / "dt=2025-01-01").glob("*.parquet")
    assert written.read_bytes() == expected.read_bytes()


def test_replaced_day_of_a_writer_killed_after_its_swap_is_removed_by_the_next_writer(tmp_path):
    """SIGKILL between the swap's second rename and removing the replaced folder left it forever (measured by
    benchmarks/faults.py kill --at-write): the next writer of the day removes it once its owner is gone."""
    from batchinfer_assets.lib.parquet_store import _HOST

    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    staging = tmp_path / "t" / STAGING_DIR
    leftover = staging / f"dt=2025-01-01.{_HOST}.{dead.pid}.0123abcd.previous"
    shutil.copytree(tmp_path / "t" / "dt=2025-01-01", leftover)
    alive = staging / f"dt=2025-01-01.{_HOST}.{os.getpid()}.4567cdef.previous"
    shutil.copytree(tmp_path / "t" / "dt=2025-01-01", alive)

    store.write_partition("t", "2025-01-01", _table(3))

    assert store.read_partition("t", "2025-01-01").equals(_table(3))
    # A live writer may be between its two renames: its folder stays.
    assert sorted(p.name for p in staging.iterdir()) == [alive.name]


def test_killed_writer_leaves_previous_day_intact(tmp_path):
    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(3))
    # A real process writes a large day and is killed with SIGKILL while writing.
    script = (
        "import sys, pyarrow as pa\n"
        "from batchinfer_assets.lib import parquet_store as ps\n"
        "ps.ROWS_PER_FILE = 10_000\n"
        "store = ps.PartitionedParquetStore(sys.argv[1])\n"
        "real = ps._write_file\n"
        "def slow(path, data):\n"
        "    real(path, data)\n"
        "    print('wrote', path, flush=True)\n"
        "    import time; time.sleep(30)\n"
        "ps._write_file = slow\n"
        "store.write_partition('t', '2025-01-01', pa.table({'transaction_id': [str(i) for i in range(50_000)], 'score': [0.5] * 50_000}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("wrote")
    finally:
        proc.kill()
        proc.wait(timeout=30)

    assert store.read_partition("t", "2025-01-01").equals(_table(3))
    visible = ds.dataset(tmp_path / "t", format="parquet", partitioning="hive").to_table()
    assert visible.num_rows == 3


def test_the_next_writer_of_a_day_removes_staging_left_by_a_killed_writer(tmp_path):
    import os
    import subprocess

    from batchinfer_assets.lib import parquet_store

    store = PartitionedParquetStore(tmp_path)
    store.write_partition("predictions", "2025-01-02", pa.table({"transaction_id": ["a"]}))
    staging = tmp_path / "predictions" / parquet_store.STAGING_DIR
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    killed = staging / f"dt=2025-01-02.{parquet_store._HOST}.{dead_pid.pid}.{'0' * 32}"
    alive = staging / f"dt=2025-01-02.{parquet_store._HOST}.{os.getpid()}.{'1' * 32}"
    other_day = staging / f"dt=2025-01-03.{parquet_store._HOST}.{dead_pid.pid}.{'2' * 32}"
    for folder in (killed, alive, other_day):
        folder.mkdir(parents=True)
        (folder / "part-00000.parquet").write_bytes(b"half written")

    store.write_partition("predictions", "2025-01-02", pa.table({"transaction_id": ["b"]}))
    assert not killed.exists(), "the dead writer's staging is gone"
    assert alive.exists(), "a live writer's staging is left alone"
    assert other_day.exists(), "another day's staging waits for that day's next writer"
    assert store.read_partition("predictions", "2025-01-02").column("transaction_id").to_pylist() == ["b"]


def test_missing_s3_credentials_name_endpoint_and_bucket(tmp_path, monkeypatch):
    import boto3

    from batchinfer_assets.lib.parquet_store import StorageCredentialsError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.session.Session().client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1")
    store = PartitionedParquetStore("s3://warehouse-bucket/tables", s3_client=client)
    with pytest.raises(StorageCredentialsError, match=r"no AWS credentials .* endpoint http://127.0.0.1:9 \(bucket 'warehouse-bucket'\)"):
        store.has_partition("predictions", "2025-01-02")


def _rows(n: int) -> pa.Table:
    import numpy as np

    rng = np.random.default_rng(3)
    return pa.table({"id": pa.array([f"r{i:08d}" for i in range(n)]), "x": pa.array(rng.random(n))})


def _writer_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("parquet-writer")]


def test_row_groups_written_on_the_writers_thread_are_the_bytes_written_inline(tmp_path):
    from batchinfer_assets.lib.parquet_store import PartitionWriter

    table = _rows(700_000)
    written = {}
    for background in (True, False):
        folder = tmp_path / str(background)
        folder.mkdir()
        writer = PartitionWriter(folder, table.schema, rows_per_file=300_000, background=background)
        for batch in table.to_batches(max_chunksize=90_001):
            writer.write(batch)
        writer.close()
        written[background] = ({p.name: p.read_bytes() for p in sorted(folder.iterdir())}, writer.files_sha256, writer.rows_written)
    assert list(written[True][0]) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert written[True] == written[False]
    assert not _writer_threads()


def test_a_write_failing_on_the_writers_thread_fails_the_day_and_keeps_the_previous_one(tmp_path, monkeypatch):
    from batchinfer_assets.lib import parquet_store

    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    real, calls = parquet_store._canonical, []

    def full_disk(rows):
        calls.append(rows.num_rows)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(rows)

    monkeypatch.setattr(parquet_store, "_canonical", full_disk)
    table = _rows(900_000)
    with pytest.raises(OSError, match="No space left on device"):
        with store.partition_writer("t", "2025-01-01", table.schema) as writer:
            for batch in table.to_batches(max_chunksize=100_000):
                writer.write(batch)
    assert store.read_partition("t", "2025-01-01").equals(_table(2))
    assert os.listdir(tmp_path / "t") == ["dt=2025-01-01"], "no staging left behind"
    assert not _writer_threads()


def test_a_stage_failing_while_a_row_group_is_written_raises_its_own_error_after_the_write_ends(tmp_path, monkeypatch):
    import threading
    import time

    from batchinfer_assets.lib import parquet_store

    store = PartitionedParquetStore(tmp_path)
    store.write_partition("t", "2025-01-01", _table(2))
    real, started, ended = parquet_store._canonical, threading.Event(), threading.Event()

    def slow(rows):
        started.set()
        time.sleep(0.3)  # keeps the write in flight while the stage fails
        out = real(rows)
        ended.set()
        return out

    monkeypatch.setattr(parquet_store, "_canonical", slow)
    table = _rows(300_000)
    with pytest.raises(RuntimeError, match="the model returned NaN"):
        with store.partition_writer("t", "2025-01-01", table.schema) as writer:
            writer.write(table)
            started.wait(10)
            raise RuntimeError("the model returned NaN")
    assert ended.is_set(), "the spool was thrown away only after the write in flight ended"
    assert store.read_partition("t", "2025-01-01").equals(_table(2))
    assert os.listdir(tmp_path / "t") == ["dt=2025-01-01"]
    assert not _writer_threads()
