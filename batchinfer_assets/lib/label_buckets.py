"""A day's labels too many to hold in memory: split by id range into buckets on local disk, read back one at a time.

Labels are read piece by piece (a batch of a labels file, or a synthetic drop). While the pieces hold at most a chunk
of rows (`BATCHINFER_DAY_CHUNK_ROWS`) they are kept and reduced whole (`latest_labels`), as always. Past it every
piece goes to a spill file on local disk, and a sample of the ids read is kept. When the stage knows how many buckets
it needs (from the labels and the day's predictions together), the spill is split at quantiles of the ids: bucket k
holds the ids from the k-th cut up to the next. So all the labels of an id share a bucket, each bucket reduced to
its latest label per id (`latest_labels`, the same rule and counts) is sorted by id, and the buckets in their order
are the day's labels sorted by id: their content hash is the one the whole day's labels have.

The day's predictions are split at the same cuts, so each bucket of predictions is joined to its bucket of labels
alone: memory holds one bucket of each, whatever the day's size.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from batchinfer_assets.lib.labels import LABELLED_AT, DayLabels, implausible, labels_arrow, labels_schema, latest_labels
from batchinfer_assets.lib.spill import DayBuckets, _SpillWriter

# Ids kept to place the cuts: between this many and twice as many, whatever the day's size.
SAMPLE_TARGET = 1 << 16


def ids_as_text(ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Ids as a numpy unicode array: ordered by code point, as Arrow (UTF-8 bytes) and Python order strings."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = ids.to_numpy(zero_copy_only=False)
    return np.asarray(ids, dtype=object).astype(str)


class IdSample:
    """Every `stride`-th id read (by position), the stride doubling whenever the sample passes 2 x SAMPLE_TARGET: a
    sample of a fixed size whatever the number of ids, decided by the ids and their order alone."""

    def __init__(self, target: int = SAMPLE_TARGET) -> None:
        self.target = target
        self.stride = 1
        self.seen = 0
        self._positions: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._size = 0

    def add(self, ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> None:
        n = len(ids)
        first = (-self.seen) % self.stride
        # A big piece is thinned before it is picked from (the same ids as after), so it never costs more than the sample.
        while len(range(first, n, self.stride)) > 2 * self.target:
            self._thin(self.stride * 2)
            first = (-self.seen) % self.stride
        picked = np.arange(first, n, self.stride)
        if picked.size:
            values = ids.take(pa.array(picked)) if isinstance(ids, (pa.Array, pa.ChunkedArray)) else np.asarray(ids, dtype=object)[picked]
            self._positions.append(picked + self.seen)
            self._ids.append(ids_as_text(values))
            self._size += picked.size
        self.seen += n
        while self._size > 2 * self.target:
            self._thin(self.stride * 2)

    def _thin(self, stride: int) -> None:
        positions, ids = self._merged()
        keep = positions % stride == 0
        self._positions, self._ids, self._size, self.stride = [positions[keep]], [ids[keep]], int(keep.sum()), stride

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._ids:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=str)
        return np.concatenate(self._positions), np.concatenate(self._ids)

    def at_stride(self, stride: int) -> np.ndarray:
        """The ids sampled at `stride` (a multiple of this sample's): samples of two streams at one stride weigh
        their rows alike."""
        if stride % self.stride:
            raise ValueError(f"stride {stride} is not a multiple of the sample's stride {self.stride}")
        positions, ids = self._merged()
        return ids[positions % stride == 0]


def id_cuts(samples: Sequence[IdSample], buckets: int) -> np.ndarray:
    """Ids that split the sampled streams together into about `buckets` ranges of equal rows (sorted, distinct)."""
    stride = max(s.stride for s in samples)
    pooled = np.sort(np.concatenate([s.at_stride(stride) for s in samples] or [np.empty(0, dtype=str)]))
    if buckets <= 1 or pooled.size == 0:
        return np.empty(0, dtype=str)
    return np.unique(pooled[(np.arange(1, buckets) * pooled.size) // buckets])


class SpilledLabels:
    """A day's plausible labels on local disk (see the module's doc): read, then `split`, then taken bucket by bucket.

    Labels dated after `now` (beyond CLOCK_SKEW) or before `day` began are counted and dropped as they are read, as
    `latest_labels` drops them, so they never reach a bucket. A context manager: its files go on exit.
    """

    def __init__(
        self,
        *,
        id_column: str,
        label_column: str,
        spill_dir: str | Path | None = None,
        day: dt.date | None = None,
        now: pd.Timestamp | None = None,
    ) -> None:
        self.id_column, self.label_column = id_column, label_column
        self.schema = labels_schema(id_column, label_column)
        self._day, self._now = day, now
        self._folder = tempfile.TemporaryDirectory(prefix="batchinfer-labels-", dir=spill_dir)
        self._read_path = Path(self._folder.name) / "read.arrows"
        self._writer: _SpillWriter | None = _SpillWriter(self._read_path, self.schema)
        self.sample = IdSample()
        self.rows_read = self.kept = self.future = self.before_day = 0
        self.sources: tuple[str, ...] = ()
        self.cuts = np.empty(0, dtype=str)
        self._buckets: DayBuckets | None = None

    def __enter__(self) -> SpilledLabels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, frame: pd.DataFrame) -> None:
        """The next conformed labels (`conform_labels`), in the order `latest_labels` would stack them."""
        if self._writer is None:
            raise RuntimeError("labels added after the split")
        self.rows_read += len(frame)
        future, early = implausible(frame[LABELLED_AT], self._day, self._now)
        self.future += int(future.sum())
        self.before_day += int((early & ~future).sum())
        if future.any() or early.any():
            frame = frame[~(future | early)]
        table = labels_arrow(frame, self.id_column, self.label_column)
        self._writer.write(table)
        self.sample.add(table.column(self.id_column))
        self.kept += table.num_rows

    def split(self, buckets: int, with_samples: Sequence[IdSample] = ()) -> None:
        """Split the labels read into about `buckets` id ranges, cut at quantiles of their ids and of `with_samples`'
        (the ids of what will be joined to them, so each bucket's share of both stays about a chunk)."""
        if self._writer is None:
            raise RuntimeError("labels split twice")
        self._writer.close()
        self._writer = None
        self.cuts = id_cuts([self.sample, *with_samples], buckets)
        self._buckets = DayBuckets(len(self.cuts) + 1, self.schema, self._folder.name)
        with pa.OSFile(str(self._read_path), "rb") as source:
            # Batch by batch, as they were added: a piece of a file at most.
            for batch in pa.ipc.open_stream(source):
                self._buckets.add(batch, self.bucket_of(batch.column(0)))
        self._read_path.unlink()

    @property
    def count(self) -> int:
        """Buckets after `split`."""
        return len(self.cuts) + 1

    def bucket_of(self, ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
        """The id-range bucket of each id: 0 below the first cut, k from the k-th cut to the next."""
        if not len(self.cuts):
            return np.zeros(len(ids), dtype=np.int64)
        return np.searchsorted(self.cuts, ids_as_text(ids), side="right").astype(np.int64)

    def bucket(self, k: int) -> DayLabels:
        """Bucket k's latest label per id, sorted by id, with what was superseded in it (its file removed)."""
        if self._buckets is None:
            raise RuntimeError("labels taken before the split")
        frame = self._buckets.take(k).to_pandas()
        frame[self.id_column] = frame[self.id_column].astype("string")
        return latest_labels([frame], self.sources, id_column=self.id_column, label_column=self.label_column)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._buckets is not None:
            self._buckets.close()
        self._folder.cleanup()


def gather_labels(
    pieces: Iterable[tuple[str, pd.DataFrame]],
    *,
    id_column: str,
    label_column: str,
    chunk_rows: int,
    spill_dir: str | Path | None = None,
    sources: Sequence[str] | None = None,
    day: dt.date | None = None,
    now: pd.Timestamp | None = None,
) -> DayLabels | SpilledLabels:
    """A day's labels from their pieces ((source, conformed frame), in file order): reduced whole (`latest_labels`)
    while they hold at most `chunk_rows` rows, spilled to disk past it (`SpilledLabels`, to be split by the caller).

    `sources`: every source read, in order (default: those of the pieces)."""
    names: list[str] = []
    held: list[pd.DataFrame] = []
    rows = 0
    spilled: SpilledLabels | None = None
    try:
        for source, frame in pieces:
            if source not in names:
                names.append(source)
            if spilled is not None:
                spilled.add(frame)
                continue
            held.append(frame)
            rows += len(frame)
            if rows > chunk_rows:
                spilled = SpilledLabels(id_column=id_column, label_column=label_column, spill_dir=spill_dir, day=day, now=now)
                for kept in held:
                    spilled.add(kept)
                held = []
    except BaseException:
        if spilled is not None:
            spilled.close()
        raise
    final = tuple(sources) if sources is not None else tuple(names)
    if spilled is None:
        return latest_labels(held, final, id_column=id_column, label_column=label_column, day=day, now=now)
    spilled.sources = final
    return spilled

