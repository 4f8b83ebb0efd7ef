"""A big day's validation, quarantine, features and snapshot validation as Ray tasks; the step coordinates and writes.

What the step's own loop does with `DayBuckets` on local disk, done as a deterministic shuffle in Ray's object store:

- One task per file reads its Parquet footer (its row groups' sizes) on the cluster: the nodes read the store's files
  with their own credentials, as scoring's read tasks do (`ray_engine.day_files`).
- Buckets: one map task per slice of a file's row groups (about `chunk_rows` rows) numbers its rows with their place
  in the day and returns them split into the day's buckets by `spill.bucket_of` of the group column, and (id, row
  number) split by id bucket; one task per id bucket finds the rows whose id an earlier row has
  (`spill.later_occurrences`); one task per bucket puts its pieces together in the day's order (the rows of the
  local path's spill file) and runs the stage's `compute` on them.
- Chunks: one task per part of `chunk_rows` rows of each file (the parts `store.iter_batches` reads) runs `compute`.

The step keeps at most `in_flight` bucket or chunk tasks ahead of it, takes their results in order, and raises the
first error one returned, with its own type and message (a `DayBlocked` stays one), so the stage writes nothing
for the day. Tasks of which none finishes for `no_progress_timeout_s` are cancelled and the day fails, naming the
cluster.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.ray_pool import RayNoProgressError, nodes_from_ray, stages_no_progress_message
from batchinfer_assets.lib.redaction import redact
from batchinfer_assets.lib.spill import ROW_NUMBER, bucket_of, later_occurrences, split_by_bucket
from batchinfer_assets.resources.ray_engine import day_files
from batchinfer_assets.resources.scoring_engine import DayRunner


@dataclass(frozen=True)
class _Failed:
    """A task's error as its result: the error itself where it crosses processes intact, and its traceback."""

    error: BaseException
    traceback: str


@dataclass(frozen=True)
class _Span:
    """Rows of one file: whole row groups `groups`, of which rows `skip` to `skip + rows` are kept."""

    path: str
    groups: tuple[int, ...]
    skip: int
    rows: int


class RayDayRunner(DayRunner):
    """Runs a day's buckets and chunks as Ray tasks on the cluster the step has joined."""

    def __init__(self, context: Any, cpus_per_task: float, in_flight: int, no_progress_timeout_s: float) -> None:
        self.context = context
        self.cpus_per_task = cpus_per_task
        self.in_flight = in_flight
        self.no_progress_timeout_s = no_progress_timeout_s

    def bucket_results(
        self,
        store: PartitionedParquetStore,
        table: str,
        day: str,
        key: str,
        id_column: str,
        count: int,
        compute: Callable[..., Any],
        args: Sequence[Any],
    ) -> Iterator[Any]:
        """`compute(rows, row_numbers, repeated, *args)` of each non-empty bucket, computed on the cluster, in bucket order."""
        import ray

        job = _Job(self, f"split, validate and featurize {table} dt={day}")
        try:
            paths, filesystem = day_files(store, table, day)
            groups, schema = job.planned(paths, filesystem)
            # The local path's spill schema: the first file's, plus the row number.
            schema = schema.append(pa.field(ROW_NUMBER, pa.int64()))
            with_ids = key != id_column
            returns = 2 * count if with_ids else count
            split = ray.remote(_split_slice).options(num_cpus=self.cpus_per_task, num_returns=returns)
            pieces, first = [], 0
            # Map slices of about a bucket's rows: a map task holds one slice.
            slice_rows = max(1, -(-sum(map(sum, groups)) // count))
            for span in _slices(paths, groups, slice_rows):
                refs = split.remote(span, filesystem, first, schema, key, id_column, count, with_ids)
                first += span.rows
                job.started(refs[0])
                pieces.append(refs)
            if with_ids:
                later = ray.remote(_later_rows).options(num_cpus=self.cpus_per_task)
                id_refs = [later.remote(id_column, *[p[count + b] for p in pieces]) for b in range(count)]
                job.started(*id_refs)
                found = [job.result(ref) for ref in id_refs]
                repeated = ray.put(np.sort(np.concatenate(found)))
            else:
                repeated = ray.put(np.empty(0, dtype=np.int64))
            context = ray.put(tuple(args))
            reduce = ray.remote(_bucket_result).options(num_cpus=self.cpus_per_task)
            per_bucket: list[list[Any] | None] = [[p[b] for p in pieces] for b in range(count)]
            del pieces

            def tasks() -> Iterator[Any]:
                for b in range(count):
                    # A bucket's map outputs are released once its task holds them (and freed when it is done).
                    refs, per_bucket[b] = per_bucket[b], None
                    yield reduce.remote(compute, context, repeated, *refs)

            for result in job.in_order(tasks()):
                if result is not None:
                    yield result
        finally:
            job.cancel()

    def chunk_results(
        self, store: PartitionedParquetStore, table: str, day: str, chunk_rows: int, compute: Callable[..., Any], args: Sequence[Any]
    ) -> Iterator[Any]:
        """`compute(rows, *args)` of each part of `chunk_rows` rows of each file, computed on the cluster, in order."""
        import ray

        job = _Job(self, f"validate {table} dt={day}")
        try:
            paths, filesystem = day_files(store, table, day)
            groups, _ = job.planned(paths, filesystem)
            context = ray.put(tuple(args))
            run = ray.remote(_chunk_result).options(num_cpus=self.cpus_per_task)
            tasks = (run.remote(span, filesystem, compute, context) for span in _chunks(paths, groups, chunk_rows))
            yield from job.in_order(tasks)
        finally:
            job.cancel()


class _Job:
    """The tasks of one stage of one day: results taken in order, errors raised, a stall cancelled, all cancelled on exit."""

    def __init__(self, runner: RayDayRunner, what: str) -> None:
        self.runner = runner
        self.what = what
        # One reference per submitted task not yet seen finished (a task's returns all finish together).
        self.pending: list[Any] = []
        self.submitted: list[Any] = []

    def started(self, *refs: Any) -> None:
        self.pending.extend(refs)
        self.submitted.extend(refs)

    def planned(self, paths: list[str], filesystem: Any) -> tuple[list[list[int]], pa.Schema]:
        """Each file's row group sizes and the first file's schema, read from their footers on the cluster."""
        import ray

        footer = ray.remote(_footer).options(num_cpus=self.runner.cpus_per_task)
        refs = [footer.remote(path, filesystem) for path in paths]
        self.started(*refs)
        footers = [self.result(ref) for ref in refs]
        return [sizes for sizes, _ in footers], footers[0][1]

    def in_order(self, tasks: Iterator[Any]) -> Iterator[Any]:
        """The results of `tasks` (submitted lazily, at most `in_flight` ahead of the one taken), in order."""
        window: list[Any] = []
        for ref in tasks:
            self.started(ref)
            window.append(ref)
            if len(window) >= self.runner.in_flight:
                yield self.result(window.pop(0))
        while window:
            yield self.result(window.pop(0))

    def result(self, ref: Any) -> Any:
        """The task's result once it is done, its error raised; cancelled with an error naming the cluster when no task finishes in time."""
        import ray

        while not ray.wait([ref], timeout=0, fetch_local=False)[0]:
            done, self.pending = ray.wait(self.pending, num_returns=1, timeout=self.runner.no_progress_timeout_s, fetch_local=False)
            if not done:
                self.cancel()
                raise RayNoProgressError(
                    stages_no_progress_message(
                        self.runner.no_progress_timeout_s,
                        nodes_from_ray(ray.nodes()),
                        ray.available_resources(),
                        self.runner.cpus_per_task,
                        self.what,
                    )
                )
        value = ray.get(ref)
        if isinstance(value, _Failed):
            self.runner.context.log.error(redact(f"a Ray task failed to {self.what}:\n{value.traceback}"))
            raise value.error
        return value

    def cancel(self) -> None:
        """Cancel every task not yet finished (finished ones are left alone)."""
        import ray

        unfinished = ray.wait(self.submitted, num_returns=len(self.submitted), timeout=0, fetch_local=False)[1] if self.submitted else []
        for ref in unfinished:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: nothing left to stop
                pass
        self.submitted, self.pending = [], []


def _slices(paths: list[str], groups: list[list[int]], rows: int) -> Iterator[_Span]:
    """Consecutive whole row groups of each file, about `rows` rows a slice (at least one group)."""
    for path, sizes in zip(paths, groups):
        taken: list[int] = []
        held = 0
        for index, size in enumerate(sizes):
            taken.append(index)
            held += size
            if held >= rows:
                yield _Span(path, tuple(taken), 0, held)
                taken, held = [], 0
        if taken:
            yield _Span(path, tuple(taken), 0, held)


def _chunks(paths: list[str], groups: list[list[int]], rows: int) -> Iterator[_Span]:
    """Each file's rows `rows` at a time from its first (what `ParquetFile.iter_batches(batch_size=rows)` yields), as the
    row groups that hold them."""
    for path, sizes in zip(paths, groups):
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        total = int(starts[-1])
        for start in range(0, total, rows):
            stop = min(start + rows, total)
            first = int(np.searchsorted(starts, start, side="right")) - 1
            last = int(np.searchsorted(starts, stop, side="left"))
            yield _Span(path, tuple(range(first, last)), start - int(starts[first]), stop - start)


def _guarded(compute: Callable[..., Any], *args: Any) -> Any:
    """`compute(*args)`, or its error as a `_Failed`: Ray would hand it to the step wrapped, its type and arguments lost."""
    try:
        return compute(*args)
    except Exception as error:
        return _Failed(_portable(error), traceback.format_exc())


def _portable(error: BaseException) -> BaseException:
    """The error itself if it pickles and comes back the same, else a RuntimeError naming its type and message."""
    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error) and str(copy) == str(error):
            return error
    except Exception:  # an error that does not cross processes is named instead
        pass
    return RuntimeError(f"{type(error).__name__}: {error}")


def _open(path: str, filesystem: Any) -> pq.ParquetFile:
    return pq.ParquetFile(filesystem.open_input_file(path) if filesystem is not None else path, pre_buffer=False)


def _footer(path: str, filesystem: Any) -> tuple[list[int], pa.Schema]:
    """The rows of each row group of one Parquet file, and its Arrow schema."""
    with _open(path, filesystem) as parquet:
        return [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)], parquet.schema_arrow


def _read(span: _Span, filesystem: Any) -> pa.Table:
    with _open(span.path, filesystem) as parquet:
        return parquet.read_row_groups(list(span.groups)).slice(span.skip, span.rows)


def _split_slice(
    span: _Span, filesystem: Any, first: int, schema: pa.Schema, key: str, id_column: str, count: int, with_ids: bool
) -> list[pa.Table]:
    """A slice's rows, numbered from `first`, in `count` buckets by `key`; then (id, row number) in buckets by id."""
    table = _read(span, filesystem)
    numbers = pa.array(np.arange(first, first + table.num_rows, dtype=np.int64))
    table = table.append_column(ROW_NUMBER, numbers)
    table = table.cast(schema) if table.schema != schema else table
    pieces = _bucketed(table, bucket_of(table.column(key), count), count)
    if with_ids:
        ids = table.select([id_column, ROW_NUMBER])
        pieces += _bucketed(ids, bucket_of(table.column(id_column), count), count)
    return pieces


def _bucketed(table: pa.Table, buckets: np.ndarray, count: int) -> list[pa.Table]:
    pieces = [table.schema.empty_table()] * count
    for bucket, rows in split_by_bucket(table, buckets, count):
        pieces[bucket] = rows
    return pieces


def _later_rows(id_column: str, *pieces: pa.Table) -> np.ndarray:
    """The row numbers of one id bucket whose id an earlier row of the day has."""
    return later_occurrences([pa.concat_tables(pieces)], id_column)


def _bucket_result(compute: Callable[..., Any], args: tuple, repeated: np.ndarray, *pieces: pa.Table) -> Any:
    """`compute(rows, row_numbers, repeated, *args)` of one bucket (None for an empty one), its pieces in the day's order."""
    table = pa.concat_tables(pieces)
    if not table.num_rows:
        return None
    numbers = table.column(ROW_NUMBER).to_numpy()
    frame = table.drop_columns([ROW_NUMBER]).to_pandas()
    return _guarded(compute, frame, numbers, np.isin(numbers, repeated), *args)


def _chunk_result(span: _Span, filesystem: Any, compute: Callable[..., Any], args: tuple) -> Any:
    """`compute(rows, *args)` of one part of a file."""
    return _guarded(compute, _read(span, filesystem).to_pandas(), *args)
