"""The scorer loads both MLflow torch formats and scores frames by signature column order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from batchinfer_assets.lib.batching import BATCH_SIZES_FILE
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.torch_scorer import (
    CPU_BATCH_SIZE,
    LoadedModel,
    MissingInputColumnsError,
    ModelOutputError,
    TorchScorerResource,
    select_device,
)


def _resolve(store, uri):
    return MlflowModelRegistryResource(tracking_uri=store.tracking_uri, model_uri=uri).resolve()


def _shuffled_frame(columns, rows: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(size=rows).astype(np.float32) for c in columns})
    frame["transaction_id"] = [f"t{i}" for i in range(rows)]
    frame["unused"] = rng.normal(size=rows)
    # Deliberately not the signature order, with extra columns in between.
    return frame[["unused", columns[2], "transaction_id", columns[0], columns[1]]]


def _expected(store, frame: pd.DataFrame) -> np.ndarray:
    matrix = frame[list(store.columns)].to_numpy(np.float32, copy=True)
    with torch.inference_mode():
        return store.module(torch.from_numpy(matrix)).numpy().reshape(-1)


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
@pytest.mark.parametrize("uri_template", ["models:/{name}@champion", "models:/{name}/1", "runs:/{run_id}/model_{fmt}"])
def test_scores_match_module_in_signature_order(tiny_model_store, fmt, uri_template):
    uri = uri_template.format(name=tiny_model_store.names[fmt], run_id=tiny_model_store.run_id, fmt=fmt)
    scorer = TorchScorerResource(device="cpu", batch_size=7)
    loaded = scorer.load(_resolve(tiny_model_store, uri))
    frame = _shuffled_frame(tiny_model_store.columns, rows=50)
    scores = scorer.score(loaded, frame)
    assert scores.dtype == np.float32 and scores.shape == (50,)
    np.testing.assert_allclose(scores, _expected(tiny_model_store, frame), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_deterministic_and_batch_size_independent_on_cpu(tiny_model_store, fmt):
    resolved = _resolve(tiny_model_store, f"models:/{tiny_model_store.names[fmt]}/1")
    frame = _shuffled_frame(tiny_model_store.columns, rows=1000, seed=3)
    scorer = TorchScorerResource(device="cpu", batch_size=64)
    loaded = scorer.load(resolved)
    first, second = scorer.score(loaded, frame), scorer.score(loaded, frame)
    assert first.tobytes() == second.tobytes()
    unbatched = TorchScorerResource(device="cpu")
    np.testing.assert_allclose(unbatched.score(unbatched.load(resolved), frame), first, rtol=1e-6)


def test_load_is_cached_per_version(tiny_model_store):
    scorer = TorchScorerResource(device="cpu")
    resolved = _resolve(tiny_model_store, "models:/tiny-pt2@champion")
    assert scorer.load(resolved) is scorer.load(_resolve(tiny_model_store, "models:/tiny-pt2/1"))
    assert scorer.load(resolved) is not scorer.load(_resolve(tiny_model_store, "models:/tiny-pickle/1"))


def test_missing_column_is_named(tiny_model_store):
    scorer = TorchScorerResource(device="cpu")
    loaded = scorer.load(_resolve(tiny_model_store, "models:/tiny-pt2/1"))
    frame = _shuffled_frame(tiny_model_store.columns, rows=5).drop(columns=["velocity"])
    with pytest.raises(MissingInputColumnsError, match="velocity") as error:
        scorer.score(loaded, frame)
    assert isinstance(error.value, ValueError)
    assert error.value.missing == ("velocity",)


def test_empty_frame_scores_nothing(tiny_model_store):
    scorer = TorchScorerResource(device="cpu")
    loaded = scorer.load(_resolve(tiny_model_store, "models:/tiny-pt2/1"))
    scores = scorer.score(loaded, _shuffled_frame(tiny_model_store.columns, rows=0))
    assert scores.shape == (0,) and scores.dtype == np.float32


def test_pickle_refused_when_disallowed(tiny_model_store, monkeypatch):
    from batchinfer_assets.lib.model_loading import ModelResolutionError

    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    scorer = TorchScorerResource(device="cpu", allow_pickle=False)
    with pytest.raises(ModelResolutionError, match="pickle"):
        scorer.load(_resolve(tiny_model_store, "models:/tiny-pickle/1"))


class _BadShape(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 2)


class _NonFinite(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0],), float("nan"))


class _Logits(torch.nn.Module):
    """A model that forgot its sigmoid: logits, some far above 1 and some below 0."""

    def forward(self, x):
        return torch.linspace(-0.4, 27.7, x.shape[0])


class _SlightlyNegative(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0],), -1e-3)


class _ClassLabels(torch.nn.Module):
    """A classifier's decision, not its probability: every value in [0, 1], and still not a score."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return (x[:, 0] > 0).to(self.dtype)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (_BadShape(), r"shape \(4, 2\)"),
        (_ClassLabels(torch.int64), r"Model models:/tiny-pt2/1 returned a torch.int64 tensor, expected floating-point probabilities"),
        (_ClassLabels(torch.int32), r"returned a torch.int32 tensor, expected floating-point probabilities"),
        (_ClassLabels(torch.uint8), r"returned a torch.uint8 tensor"),
        (_ClassLabels(torch.bool), r"returned a torch.bool tensor, expected floating-point probabilities"),
        (_NonFinite(), "non-finite"),
        (_Logits(), r"returned 4 score\(s\) of 4 outside \[0, 1\] \(e.g. -0.4 at row 0\)"),
        (_SlightlyNegative(), r"returned 4 score\(s\) of 4 outside \[0, 1\] \(e.g. -0.001 at row 0\)"),
    ],
)
def test_bad_model_output_is_an_error(tiny_model_store, module, message):
    resolved = _resolve(tiny_model_store, "models:/tiny-pt2/1")
    loaded = LoadedModel(module=module, resolved=resolved, device="cpu")
    with pytest.raises(ModelOutputError, match=message):
        TorchScorerResource(device="cpu").score(loaded, _shuffled_frame(tiny_model_store.columns, rows=4))


def test_labels_at_threshold():
    scorer = TorchScorerResource(device="cpu", threshold=0.7)
    assert scorer.labels(np.array([0.1, 0.7, 0.9], dtype=np.float32)).tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    ("requested", "available", "count", "expected"),
    [
        ("auto", False, 0, "cpu"),
        ("auto", True, 2, "cuda:0"),
        ("cpu", True, 1, "cpu"),
        ("cuda", True, 1, "cuda:0"),
        ("CUDA:1", True, 2, "cuda:1"),
    ],
)
def test_select_device(requested, available, count, expected):
    assert select_device(requested, cuda_available=available, cuda_device_count=count) == expected


@pytest.mark.parametrize(
    ("requested", "available", "count", "message"),
    [
        ("cuda", False, 0, "not available"),
        ("cuda:2", True, 2, "only 2"),
        ("cuda:x", True, 1, "Invalid device"),
        ("tpu", True, 1, "Invalid device"),
    ],
)
def test_select_device_errors(requested, available, count, message):
    with pytest.raises(ValueError, match=message):
        select_device(requested, cuda_available=available, cuda_device_count=count)


def test_defaults_on_this_machine():
    scorer = TorchScorerResource()
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert scorer.resolved_device() == expected
    if expected == "cpu":
        assert scorer.effective_batch_size() == CPU_BATCH_SIZE
    assert TorchScorerResource(batch_size=100).effective_batch_size() == 100


class _OutOfMemoryAbove(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches above `limit` rows, like a GPU that is too small."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.batch_rows: list[int] = []

    def forward(self, x):
        self.batch_rows.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: batch of {x.shape[0]} rows")
        return self.inner(x)


def test_out_of_memory_halves_retries_and_remembers(tiny_model_store, tmp_path):
    resolved = _resolve(tiny_model_store, "models:/tiny-pt2/1")
    frame = _shuffled_frame(tiny_model_store.columns, rows=1000, seed=5)
    module = _OutOfMemoryAbove(tiny_model_store.module, limit=100)
    loaded = LoadedModel(module=module, resolved=resolved, device="cpu")
    scorer = TorchScorerResource(device="cpu", batch_size=400, state_dir=str(tmp_path / "state"))

    scores, run = scorer.score_matrix(loaded, frame[list(tiny_model_store.columns)].to_numpy(np.float32))

    np.testing.assert_allclose(scores, _expected(tiny_model_store, frame), rtol=1e-6, atol=1e-7)
    assert (run.started_batch_size, run.batch_size, run.backoffs) == (400, 100, 2)
    # The failing first batch is retried at 200, then 100; no row is skipped or scored twice after that.
    assert module.batch_rows == [400, 200, *([100] * 10)]
    remembered = json.loads((tmp_path / "state" / BATCH_SIZES_FILE).read_text())
    assert remembered == {f"{loaded.version_id}|cpu": 100}

    fresh = TorchScorerResource(device="cpu", batch_size=400, state_dir=str(tmp_path / "state"))
    assert fresh.starting_batch_size(loaded) == 100
    module.batch_rows.clear()
    fresh.score_matrix(loaded, frame[list(tiny_model_store.columns)].to_numpy(np.float32))
    assert module.batch_rows == [100] * 10
    other_version = LoadedModel(module=module, resolved=_resolve(tiny_model_store, "models:/tiny-pickle/1"), device="cpu")
    assert fresh.starting_batch_size(other_version) == 400


def test_out_of_memory_at_one_row_is_raised(tiny_model_store):
    resolved = _resolve(tiny_model_store, "models:/tiny-pt2/1")
    loaded = LoadedModel(module=_OutOfMemoryAbove(tiny_model_store.module, limit=0), resolved=resolved, device="cpu")
    with pytest.raises(torch.OutOfMemoryError, match="batch of 1 rows"):
        TorchScorerResource(device="cpu", batch_size=8).score(loaded, _shuffled_frame(tiny_model_store.columns, rows=20))


@pytest.mark.parametrize(("precision", "tolerance"), [("bf16", 2e-2), ("fp16", 2e-3)])
def test_autocast_precision_stays_close_to_fp32(tiny_model_store, precision, tolerance):
    resolved = _resolve(tiny_model_store, "models:/tiny-pickle/1")
    frame = _shuffled_frame(tiny_model_store.columns, rows=300, seed=7)
    scorer = TorchScorerResource(device="cpu", precision=precision)
    scores = scorer.score(scorer.load(resolved), frame)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, _expected(tiny_model_store, frame), atol=tolerance)


def test_unknown_precision_is_refused(tiny_model_store):
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        TorchScorerResource(device="cpu", precision="int8").load(_resolve(tiny_model_store, "models:/tiny-pt2/1"))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; CI has none")


@needs_cuda
@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-5), ("bf16", 2e-2)])
def test_cuda_scores_match_cpu(tiny_model_store, fmt, precision, tolerance):
    resolved = _resolve(tiny_model_store, f"models:/{tiny_model_store.names[fmt]}/1")
    frame = _shuffled_frame(tiny_model_store.columns, rows=10_007, seed=11)
    scorer = TorchScorerResource(device="cuda", batch_size=1000, precision=precision)
    loaded = scorer.load(resolved)
    assert loaded.device == "cuda:0"
    np.testing.assert_allclose(scorer.score(loaded, frame), _expected(tiny_model_store, frame), atol=tolerance)


@needs_cuda
def test_cuda_out_of_memory_backoff(tiny_model_store, tmp_path):
    resolved = _resolve(tiny_model_store, "models:/tiny-pt2/1")
    module = _OutOfMemoryAbove(tiny_model_store.module.to("cuda:0"), limit=300)
    loaded = LoadedModel(module=module, resolved=resolved, device="cuda:0")
    frame = _shuffled_frame(tiny_model_store.columns, rows=5000, seed=13)
    scorer = TorchScorerResource(device="cuda", batch_size=1000, state_dir=str(tmp_path))
    scores, run = scorer.score_matrix(loaded, frame[list(tiny_model_store.columns)].to_numpy(np.float32))
    assert (run.batch_size, run.backoffs) == (250, 2)
    np.testing.assert_allclose(scores, _expected(tiny_model_store, frame), atol=1e-5)
