"""Scores feature frames with an MLflow PyTorch model on CPU or CUDA, in fixed-size batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field, PrivateAttr

from batchinfer_assets.lib.model_loading import ResolvedModel, load_torch_module

CPU_BATCH_SIZE = 65_536
CUDA_BATCH_SIZE = 262_144


class MissingInputColumnsError(ValueError):
    """The feature frame lacks columns the model's signature names."""

    def __init__(self, missing: Sequence[str], model_uri: str) -> None:
        self.missing = tuple(missing)
        super().__init__(f"Model {model_uri} needs input column(s) missing from the features: {', '.join(self.missing)}")


class ModelOutputError(RuntimeError):
    """The model returned something other than N finite probabilities."""


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory on its device, with the column order its signature asks for."""

    module: Callable[[Any], Any]
    resolved: ResolvedModel
    device: str

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.resolved.input_columns


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
    if output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    if tuple(output.shape) != (rows,):
        raise ModelOutputError(
            f"Model {model_uri} returned shape {tuple(output.shape)} for {rows} rows; expected ({rows},) or ({rows}, 1)"
        )
    return output


class TorchScorerResource(dg.ConfigurableResource):
    """Loads an MLflow PyTorch model once per version and scores feature frames in batches."""

    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    batch_size: Optional[int] = Field(
        default=None,
        description=f"Rows per forward pass; unset: {CPU_BATCH_SIZE} on CPU, {CUDA_BATCH_SIZE} on CUDA.",
    )
    threshold: float = Field(default=0.5, description="Scores at or above this are labelled 1.")
    allow_pickle: bool = Field(
        default=True,
        description=(
            "Load pickle-format models too (MLflow 3 refuses them by default: unpickling runs code from the "
            "registry). Set False to accept only pt2 (torch.export) models."
        ),
    )

    _loaded: dict[tuple[str, str, str, str], LoadedModel] = PrivateAttr(default_factory=dict)

    def resolved_device(self) -> str:
        """The concrete torch device this scorer runs on."""
        import torch

        available = torch.cuda.is_available()
        return select_device(
            self.device, cuda_available=available, cuda_device_count=torch.cuda.device_count() if available else 0
        )

    def effective_batch_size(self) -> int:
        """Rows per forward pass: the configured value or the device's default."""
        if self.batch_size is not None:
            if self.batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
            return self.batch_size
        return CUDA_BATCH_SIZE if self.resolved_device().startswith("cuda") else CPU_BATCH_SIZE

    def load(self, resolved: ResolvedModel) -> LoadedModel:
        """Load the pinned model onto the device, once per version for this resource instance."""
        device = self.resolved_device()
        key = (resolved.tracking_uri, resolved.pinned_uri, resolved.artifact_checksum, device)
        loaded = self._loaded.get(key)
        if loaded is None:
            module = load_torch_module(resolved, device, allow_pickle=self.allow_pickle)
            loaded = LoadedModel(module=module, resolved=resolved, device=device)
            self._loaded[key] = loaded
        return loaded

    def score(self, loaded: LoadedModel, features: pd.DataFrame) -> np.ndarray:
        """Probabilities for each row of `features` (float32, shape (N,)), columns taken in signature order."""
        import torch

        uri = loaded.resolved.pinned_uri
        matrix = feature_matrix(features, loaded.input_columns, uri)
        rows = matrix.shape[0]
        scores = np.empty(rows, dtype=np.float32)
        if rows == 0:
            return scores
        batch_size = self.effective_batch_size()
        device = torch.device(loaded.device)
        # The loop is the seam for CUDA work: pinned host buffers, non-blocking copies, autocast
        # and halving the batch on out-of-memory all belong around this one forward call.
        with torch.inference_mode():
            for start in range(0, rows, batch_size):
                stop = min(start + batch_size, rows)
                batch = torch.from_numpy(matrix[start:stop]).to(device)
                output = _as_probabilities(loaded.module(batch), stop - start, uri)
                scores[start:stop] = output.detach().to("cpu", dtype=torch.float32).numpy()
        if not np.isfinite(scores).all():
            bad = int((~np.isfinite(scores)).sum())
            raise ModelOutputError(f"Model {uri} returned {bad} non-finite score(s) of {rows}")
        return scores

    def labels(self, scores: np.ndarray) -> np.ndarray:
        """0/1 labels (int8): 1 where the score is at or above the threshold."""
        return (np.asarray(scores) >= self.threshold).astype(np.int8)
