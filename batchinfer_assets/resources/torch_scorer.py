"""Scores feature matrices with an MLflow PyTorch model on CPU or CUDA, in batches that back off on out-of-memory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field, PrivateAttr

from batchinfer_assets.lib.batching import BatchSizeMemory, batch_spans, halved
from batchinfer_assets.lib.model_loading import ResolvedModel, load_torch_module

CPU_BATCH_SIZE = 65_536
CUDA_BATCH_SIZE = 262_144
Precision = Literal["fp32", "bf16", "fp16"]


class MissingInputColumnsError(ValueError):
    """The feature frame lacks columns the model's signature names."""

    def __init__(self, missing: Sequence[str], model_uri: str, where: str = "the features") -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"missing column(s) {', '.join(self.missing)} required by the model {model_uri}: not in {where}"
        )


class ModelOutputError(RuntimeError):
    """The model returned something other than N finite probabilities.

    `row` is the first offending row of the scored matrix when there is one, so the caller, which knows the
    rows' ids and day, can name an example.
    """

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row

    def naming(self, where: str, id_column: str, ids: Sequence[str]) -> ModelOutputError:
        """The same error naming where the rows came from and, when known, the first offending row's id."""
        example = f", e.g. {id_column} {ids[self.row]!r}" if self.row is not None and self.row < len(ids) else ""
        return ModelOutputError(f"{self.args[0]} in {where}{example}", row=self.row)


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory on its device, with the column order its signature asks for."""

    module: Callable[[Any], Any]
    resolved: ResolvedModel
    device: str

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.resolved.input_columns

    @property
    def version_id(self) -> str:
        """Identifies the model's bytes: pinned URI plus artifact checksum."""
        return f"{self.resolved.pinned_uri}#{self.resolved.artifact_checksum[:16]}"


def select_device(requested: str, *, cuda_available: bool, cuda_device_count: int) -> str:
    """Turn auto|cpu|cuda|cuda:N into a concrete torch device string, refusing CUDA that is not there."""
    value = requested.strip().lower()
    if value == "auto":
        return "cuda:0" if cuda_available else "cpu"
    if value == "cpu":
        return "cpu"
    if value == "cuda" or value.startswith("cuda:"):
        index_text = value.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ValueError(f"Invalid device {requested!r}: expected auto, cpu, cuda or cuda:N")
        if not cuda_available:
            raise ValueError(f"Device {requested!r} requested but CUDA is not available on this machine")
        index = int(index_text)
        if index >= cuda_device_count:
            raise ValueError(f"Device {requested!r} requested but only {cuda_device_count} CUDA device(s) are visible")
        return f"cuda:{index}"
    raise ValueError(f"Invalid device {requested!r}: expected auto, cpu, cuda or cuda:N")


def feature_matrix(features: pd.DataFrame, columns: Sequence[str], model_uri: str) -> np.ndarray:
    """The frame's `columns`, in that order, as a C-contiguous float32 matrix."""
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise MissingInputColumnsError(missing, model_uri)
    matrix = np.ascontiguousarray(features.loc[:, list(columns)].to_numpy(dtype=np.float32, na_value=np.nan))
    # pandas copy-on-write can hand out read-only views, which torch.from_numpy warns about.
    return matrix if matrix.flags.writeable else matrix.copy()


def _as_probabilities(output: Any, rows: int, model_uri: str) -> Any:
    import torch

    if not isinstance(output, torch.Tensor):
        raise ModelOutputError(f"Model {model_uri} returned {type(output).__name__}, expected a tensor")
    if not output.is_floating_point():
        # 0/1 class labels (int or bool) are in [0, 1] too, and would be published and evaluated as probabilities.
        raise ModelOutputError(
            f"Model {model_uri} returned a {output.dtype} tensor, expected floating-point probabilities: the contract asks "
            "for P(positive) per row, not a class label; return the probability (e.g. the sigmoid of the logit)"
        )
    if output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    if tuple(output.shape) != (rows,):
        raise ModelOutputError(
            f"Model {model_uri} returned shape {tuple(output.shape)} for {rows} rows; expected ({rows},) or ({rows}, 1)"
        )
    return output


def _autocast(device: str, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


@dataclass
class BatchRun:
    """What one scoring call did: the batch size it started with, ended with, and how often it halved."""

    started_batch_size: int
    batch_size: int
    backoffs: int = 0


class TorchScorerResource(dg.ConfigurableResource):
    """Loads an MLflow PyTorch model once per version and scores feature matrices in batches."""

    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    batch_size: Optional[int] = Field(
        default=None,
        description=(
            f"Rows per forward pass; unset: {CPU_BATCH_SIZE} on CPU, {CUDA_BATCH_SIZE} on CUDA. Either way a "
            "smaller size remembered after an out-of-memory backoff for this model version and device wins."
        ),
    )
    precision: str = Field(
        default="fp32",
        description=(
            "fp32, or bf16 / fp16 to run the forward pass under torch.autocast (faster on recent GPUs; scores "
            "then differ from fp32 by up to about 1e-2 for bf16 and 1e-3 for fp16). Scores are stored as float32."
        ),
    )
    threshold: float = Field(default=0.5, description="Scores at or above this are labelled 1.")
    allow_pickle: bool = Field(
        default=True,
        description=(
            "Load pickle-format models too (MLflow 3 refuses them by default: unpickling runs code from the "
            "registry). Set False to accept only pt2 (torch.export) models."
        ),
    )
    state_dir: Optional[str] = Field(
        default=None,
        description=(
            "Folder where the batch size that worked after an out-of-memory backoff is remembered per model "
            "version and device (file scorer_batch_sizes.json); unset: remembered only for this process."
        ),
    )
    progress_interval_s: float = Field(default=10.0, description="Seconds between progress lines in the run log.")

    _loaded: dict[tuple[str, str, str, str], LoadedModel] = PrivateAttr(default_factory=dict)
    _memory: Optional[BatchSizeMemory] = PrivateAttr(default=None)
    _pipelines: dict[tuple[str, str, int, int], Any] = PrivateAttr(default_factory=dict)

    def resolved_device(self) -> str:
        """The concrete torch device this scorer runs on."""
        import torch

        available = torch.cuda.is_available()
        return select_device(
            self.device, cuda_available=available, cuda_device_count=torch.cuda.device_count() if available else 0
        )

    def effective_batch_size(self) -> int:
        """Rows per forward pass before any remembered backoff: the configured value or the device's default."""
        if self.batch_size is not None:
            if self.batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
            return self.batch_size
        return CUDA_BATCH_SIZE if self.resolved_device().startswith("cuda") else CPU_BATCH_SIZE

    def starting_batch_size(self, loaded: LoadedModel) -> int:
        """The batch size the next call starts with: the remembered working size when smaller than the default."""
        remembered = self._batch_memory().get(loaded.version_id, loaded.device)
        configured = self.effective_batch_size()
        return min(configured, remembered) if remembered is not None else configured

    def load(self, resolved: ResolvedModel) -> LoadedModel:
        """Load the pinned model onto the device, once per registration of a version for this resource instance."""
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        device = self.resolved_device()
        key = (resolved.tracking_uri, resolved.identity or resolved.pinned_uri, resolved.artifact_checksum, device)
        loaded = self._loaded.get(key)
        if loaded is None:
            module = load_torch_module(resolved, device, allow_pickle=self.allow_pickle)
            loaded = LoadedModel(module=module, resolved=resolved, device=device)
            self._loaded[key] = loaded
        return loaded

    def score(self, loaded: LoadedModel, features: pd.DataFrame) -> np.ndarray:
        """Probabilities for each row of `features` (float32, shape (N,)), columns taken in signature order."""
        return self.score_matrix(loaded, feature_matrix(features, loaded.input_columns, loaded.resolved.pinned_uri))[0]

    def score_matrix(
        self, loaded: LoadedModel, matrix: np.ndarray, on_rows: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, BatchRun]:
        """Probabilities for a float32 (N, F) matrix in signature column order, and how the batches went."""
        rows = matrix.shape[0]
        scores = np.empty(rows, dtype=np.float32)
        run = BatchRun(started_batch_size=self.starting_batch_size(loaded), batch_size=0)
        run.batch_size = run.started_batch_size
        if rows == 0:
            return scores, run
        if loaded.device.startswith("cuda"):
            self._score_cuda(loaded, matrix, scores, run, on_rows)
        else:
            self._score_host(loaded, matrix, scores, run, on_rows)
        if run.backoffs:
            self._batch_memory().remember(loaded.version_id, loaded.device, run.batch_size)
        uri = loaded.resolved.pinned_uri
        if not np.isfinite(scores).all():
            bad = ~np.isfinite(scores)
            raise ModelOutputError(
                f"Model {uri} returned {int(bad.sum())} non-finite score(s) of {rows}", row=int(np.flatnonzero(bad)[0])
            )
        outside = (scores < 0.0) | (scores > 1.0)
        if outside.any():
            # Logits or raw margins would be labelled and published as if they were probabilities.
            first = int(np.flatnonzero(outside)[0])
            raise ModelOutputError(
                f"Model {uri} returned {int(outside.sum())} score(s) of {rows} outside [0, 1] (e.g. {float(scores[first]):.6g} "
                f"at row {first}): the contract asks for a probability per row; add a sigmoid/softmax to the model",
                row=first,
            )
        return scores, run

    def labels(self, scores: np.ndarray) -> np.ndarray:
        """0/1 labels (int8): 1 where the score is at or above the threshold."""
        return (np.asarray(scores) >= self.threshold).astype(np.int8)

    def _batch_memory(self) -> BatchSizeMemory:
        if self._memory is None:
            self._memory = BatchSizeMemory(self.state_dir)
        return self._memory

    def _score_host(
        self, loaded: LoadedModel, matrix: np.ndarray, scores: np.ndarray, run: BatchRun, on_rows
    ) -> None:
        import torch

        uri = loaded.resolved.pinned_uri
        device = torch.device(loaded.device)
        done = 0
        with torch.inference_mode(), _autocast(loaded.device, self.precision):
            while done < scores.shape[0]:
                try:
                    for start, stop in batch_spans(scores.shape[0], run.batch_size, done):
                        batch = torch.from_numpy(matrix[start:stop]).to(device)
                        output = _as_probabilities(loaded.module(batch), stop - start, uri)
                        scores[start:stop] = output.detach().to("cpu", dtype=torch.float32).numpy()
                        done = stop
                        if on_rows is not None:
                            on_rows(stop - start)
                except torch.OutOfMemoryError as error:
                    self._back_off(run, loaded, done, error)

    def _back_off(self, run: BatchRun, loaded: LoadedModel, failed_at: int, error: BaseException) -> None:
        import torch

        if run.batch_size == 1:
            raise error
        previous, run.batch_size = run.batch_size, halved(run.batch_size)
        run.backoffs += 1
        dg.get_dagster_logger().warning(
            f"out of memory on {loaded.device} scoring rows from {failed_at:,} in batches of {previous:,} "
            f"with {loaded.resolved.pinned_uri}; retrying that batch with {run.batch_size:,}"
        )
        if loaded.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _score_cuda(
        self, loaded: LoadedModel, matrix: np.ndarray, scores: np.ndarray, run: BatchRun, on_rows
    ) -> None:
        import torch

        key = (loaded.version_id, loaded.device, run.batch_size, matrix.shape[1])
        pipeline = self._pipelines.get(key)
        if pipeline is None:
            # Pinned host memory is slow to allocate, so the buffers live as long as the resource.
            pipeline = self._pipelines[key] = _CudaPipeline(loaded, self.precision, run.batch_size, matrix.shape[1])
        pipeline.reset()
        done = 0
        while done < scores.shape[0]:
            try:
                for start, stop in batch_spans(scores.shape[0], run.batch_size, done):
                    pipeline.submit(matrix, start, stop, scores, on_rows)
                    done = stop
                pipeline.drain(scores, on_rows)
            except torch.OutOfMemoryError as error:
                # Batches already submitted completed or failed as a whole; resume at the first unfinished one.
                done = pipeline.recover(scores, on_rows)
                self._back_off(run, loaded, done, error)


class _CudaPipeline:
    """Two pinned host slots and a copy stream: batch i+1 is copied to the GPU while batch i computes."""

    def __init__(self, loaded: LoadedModel, precision: str, max_batch: int, n_features: int) -> None:
        import torch

        self.loaded = loaded
        self.precision = precision
        self.device = torch.device(loaded.device)
        self.host_in = [torch.empty((max_batch, n_features), dtype=torch.float32, pin_memory=True) for _ in range(2)]
        self.host_out = [torch.empty(max_batch, dtype=torch.float32, pin_memory=True) for _ in range(2)]
        self.copy_stream = torch.cuda.Stream(self.device)
        self.copied = [torch.cuda.Event() for _ in range(2)]
        self.computed = [torch.cuda.Event() for _ in range(2)]
        self.reset()

    def reset(self) -> None:
        """Start a new matrix."""
        # Per slot: the (start, stop) whose result waits in host_out, not yet handed to the caller.
        self.pending: list[Optional[tuple[int, int]]] = [None, None]
        self.slot = 0
        self.first_unfinished = 0

    def submit(self, matrix: np.ndarray, start: int, stop: int, scores: np.ndarray, on_rows) -> None:
        import torch

        slot, rows = self.slot, stop - start
        # The slot's previous batch must be finished before its pinned buffers are reused.
        self._collect(slot, scores, on_rows)
        self.copied[slot].synchronize()
        self.host_in[slot][:rows].numpy()[:] = matrix[start:stop]
        compute_stream = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            on_device = self.host_in[slot][:rows].to(self.device, non_blocking=True)
            self.copied[slot].record(self.copy_stream)
        compute_stream.wait_event(self.copied[slot])
        # The tensor was allocated on the copy stream and is used on the compute stream.
        on_device.record_stream(compute_stream)
        with torch.inference_mode(), _autocast(self.loaded.device, self.precision):
            output = _as_probabilities(self.loaded.module(on_device), rows, self.loaded.resolved.pinned_uri)
            self.host_out[slot][:rows].copy_(output.detach().to(torch.float32), non_blocking=True)
        self.computed[slot].record(compute_stream)
        self.pending[slot] = (start, stop)
        self.slot = 1 - slot

    def drain(self, scores: np.ndarray, on_rows) -> None:
        """Wait for the batches in flight and copy their scores out."""
        for offset in range(2):
            self._collect((self.slot + offset) % 2, scores, on_rows)

    def recover(self, scores: np.ndarray, on_rows) -> int:
        """After an out-of-memory error: keep what finished, return the first row still to score."""
        import torch

        torch.cuda.synchronize(self.device)
        self.drain(scores, on_rows)
        return self.first_unfinished

    def _collect(self, slot: int, scores: np.ndarray, on_rows) -> None:
        span = self.pending[slot]
        if span is None:
            return
        self.computed[slot].synchronize()
        start, stop = span
        scores[start:stop] = self.host_out[slot][: stop - start].numpy()
        self.pending[slot] = None
        self.first_unfinished = max(self.first_unfinished, stop)
        if on_rows is not None:
            on_rows(stop - start)

