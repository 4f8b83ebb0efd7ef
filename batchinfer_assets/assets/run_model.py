"""The run's model: loaded once per run, on a worker thread while the first day's earlier stages run."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from batchinfer_assets.resources.model_registry import ResolvedModel
from batchinfer_assets.resources.torch_scorer import LoadedModel, TorchScorerResource

# The name (prefix) of the thread a run's model loads on.
MODEL_LOADER_THREAD = "batchinfer-model-loader"


class ModelLoader:
    """Loads the run's model on one worker thread while the first day's earlier stages run.

    Only the predictions stage needs the loaded module, and loading it (the first `import torch`, reading the
    artifact) took about 2 s of a 1M-row day's step before any day began. The worker is handed the scorer and
    the resolved model only, never Dagster's context: it reads the model's files, and what it did is logged by
    the step's thread when that thread collects the result.
    """

    def __init__(self, scorer: TorchScorerResource, resolved: ResolvedModel) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=MODEL_LOADER_THREAD)
        self._future = self._executor.submit(_timed_load, scorer, resolved)

    def done(self) -> bool:
        """Whether the load has ended, loaded or failed (without waiting)."""
        return self._future.done()

    def failed(self) -> bool:
        """Whether the load has ended with an error (without waiting)."""
        return self._future.done() and self._future.exception() is not None

    def result(self) -> tuple[LoadedModel, float]:
        """The loaded model and the seconds its load took, once loaded; the load's own error when it failed."""
        return self._future.result()

    def close(self) -> None:
        """Wait for the worker to end (a load is finite), so no thread of the step outlives it."""
        self._executor.shutdown(wait=True)


def _timed_load(scorer: TorchScorerResource, resolved: ResolvedModel) -> tuple[LoadedModel, float]:
    started = time.perf_counter()
    loaded = scorer.load(resolved)
    return loaded, time.perf_counter() - started
