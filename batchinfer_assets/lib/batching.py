"""Batching helpers for scoring: batch spans, progress reporting and remembered batch sizes; no Dagster here."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

BATCH_SIZES_FILE = "scorer_batch_sizes.json"


def batch_spans(rows: int, batch_size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive batches covering rows [start, rows)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for begin in range(start, rows, batch_size):
        yield begin, min(begin + batch_size, rows)


def halved(batch_size: int) -> int:
    """The next smaller batch size to try after running out of memory (never below 1)."""
    return max(1, batch_size // 2)


@dataclass
class ProgressMeter:
    """Counts scored rows and says, at most once per interval, how far along and how fast."""

    total_rows: int | None = None
    interval_s: float = 10.0
    clock: Callable[[], float] = time.perf_counter
    rows_done: int = 0
    started: float = field(default=0.0)
    _last_report: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self._last_report = self.clock()

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    @property
    def rows_per_second(self) -> float:
        elapsed = self.elapsed_s
        return self.rows_done / elapsed if elapsed > 0 else float(self.rows_done)

    def advance(self, rows: int) -> str | None:
        """Add `rows`; return a progress line when the interval has passed since the last one, else None."""
        self.rows_done += rows
        now = self.clock()
        if now - self._last_report < self.interval_s:
            return None
        self._last_report = now
        return self.line()

    def line(self) -> str:
        """rows done (of the total when known) and the rate so far."""
        of_total = f" of {self.total_rows:,}" if self.total_rows is not None else ""
        return f"{self.rows_done:,}{of_total} rows scored, {self.rows_per_second:,.0f} rows/s"


class BatchSizeMemory:
    """The batch size that fit, per (model version, device), kept in a small JSON file across runs."""

    def __init__(self, state_dir: str | os.PathLike[str] | None) -> None:
        self.path = Path(state_dir) / BATCH_SIZES_FILE if state_dir is not None else None
        self._in_memory: dict[str, int] = {}

    @staticmethod
    def key(model_version_id: str, device: str) -> str:
        return f"{model_version_id}|{device}"

    def get(self, model_version_id: str, device: str) -> int | None:
        """The remembered batch size, or None when none was recorded."""
        key = self.key(model_version_id, device)
        value = self._read().get(key, self._in_memory.get(key))
        return int(value) if value is not None else None

    def remember(self, model_version_id: str, device: str, batch_size: int) -> None:
        """Record the batch size that worked, replacing the file atomically."""
        key = self.key(model_version_id, device)
        self._in_memory[key] = batch_size
        if self.path is None:
            return
        entries = self._read()
        entries[key] = batch_size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".batch_sizes.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(entries, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self) -> dict[str, int]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            entries = json.loads(self.path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"remembered batch sizes file {self.path} is not valid JSON ({error}); delete it to reset") from error
        if not isinstance(entries, dict):
            raise ValueError(f"remembered batch sizes file {self.path} must hold a JSON object; delete it to reset")
        return entries


def record_batch_matrix(batch: pa.RecordBatch, columns: Sequence[str]) -> np.ndarray:
    """The batch's `columns`, in that order, as a C-contiguous float32 (N, F) matrix (nulls become NaN)."""
    matrix = np.empty((batch.num_rows, len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        matrix[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
    return matrix
