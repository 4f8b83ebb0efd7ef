"""The predictions asset: any user model on any column order, streaming, staleness on alias moves, reproduction."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.definitions.observe import observe
from dagster._utils.test.data_versions import get_stale_status_resolver

from batchinfer_assets.assets.predictions import score_day, scoring_model
from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.torch_scorer import TorchScorerResource
from batchinfer_assets.tags import MODEL_VERSION_TAG
from batchinfer_assets_tests.support import materialize_pipeline, materializations, pipeline_resources

DAY = "2025-01-02"


def _user_snapshot(columns, rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(size=rows).astype(np.float32) for c in columns})
    frame["extra_feature"] = rng.normal(size=rows).astype(np.float32)
    frame["transaction_id"] = pd.array([f"t{i:06d}" for i in range(rows)], dtype="string")
    # Not the model's column order, with a column the model does not use in between.
    return frame[["transaction_id", columns[2], "extra_feature", columns[0], columns[1]]]


def _write_snapshot(storage: Path, frame: pd.DataFrame, day: str = DAY) -> None:
    PartitionedParquetStore(storage).write_partition("input_snapshot", day, pa.Table.from_pandas(frame, preserve_index=False))


def _tiny_resources(store, fmt: str, storage: Path, **scorer) -> dict:
    registry = MlflowModelRegistryResource(tracking_uri=store.tracking_uri, model_uri=f"models:/{store.names[fmt]}@champion")
    return pipeline_resources(storage, registry, torch_scorer=TorchScorerResource(device="cpu", **scorer))


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_user_model_scores_like_the_module_in_any_column_order(tiny_model_store, tmp_path, fmt):
    frame = _user_snapshot(tiny_model_store.columns, rows=2500)
    _write_snapshot(tmp_path, frame)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_pipeline(
        _tiny_resources(tiny_model_store, fmt, tmp_path, batch_size=300), ["predictions"], partition_key=DAY, instance=instance
    )

    stored = PartitionedParquetStore(tmp_path).read_partition("predictions", DAY).to_pandas()
    with torch.inference_mode():
        expected = tiny_model_store.module(torch.from_numpy(frame[list(tiny_model_store.columns)].to_numpy(np.float32, copy=True)))
    np.testing.assert_allclose(stored["score"].to_numpy(), expected.numpy().reshape(-1), rtol=1e-6, atol=1e-7)
    assert stored["transaction_id"].tolist() == frame["transaction_id"].tolist()
    assert stored.dtypes.astype(str).to_dict() == {
        "transaction_id": "string",
        "score": "float32",
        "label": "int8",
        "model_name": "string",
        "model_version": "string",
    }
    assert set(stored["model_name"]) == {tiny_model_store.names[fmt]} and set(stored["model_version"]) == {"1"}
    meta = materializations(result, "predictions")[DAY].metadata
    assert meta["pinned_model_uri"].value == f"models:/{tiny_model_store.names[fmt]}/1"
    assert meta["model_run_id"].value == tiny_model_store.run_id
    assert len(meta["model_artifact_checksum"].value) == 64
    assert meta["row_count"].value == 2500 and meta["batch_size"].value == 300
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any("2,500 of 2,500 rows scored" in m and "rows/s" in m for m in messages), messages


def test_missing_model_column_fails_naming_it_and_keeps_old_predictions(tiny_model_store, tmp_path):
    frame = _user_snapshot(tiny_model_store.columns, rows=50)
    _write_snapshot(tmp_path, frame)
    resources = _tiny_resources(tiny_model_store, "pt2", tmp_path)
    materialize_pipeline(resources, ["predictions"], partition_key=DAY)
    folder = tmp_path / "predictions" / f"dt={DAY}"
    before = {p.name: p.read_bytes() for p in folder.glob("*.parquet")}

    _write_snapshot(tmp_path, frame.drop(columns=["velocity"]))
    with pytest.raises(dg.Failure, match=f"MissingInputColumnsError: .*velocity.*input_snapshot dt={DAY}"):
        materialize_pipeline(resources, ["predictions"], partition_key=DAY)
    assert {p.name: p.read_bytes() for p in folder.glob("*.parquet")} == before


def test_streaming_spans_many_read_batches_and_files(tiny_model_store, tmp_path, monkeypatch):
    from batchinfer_assets.lib import parquet_store

    monkeypatch.setattr(parquet_store, "ROW_GROUP_SIZE", 1000)
    monkeypatch.setattr(parquet_store, "ROWS_PER_FILE", 3000)
    frame = _user_snapshot(tiny_model_store.columns, rows=7001, seed=2)
    _write_snapshot(tmp_path, frame)
    store = PartitionedParquetStore(tmp_path)
    scorer = TorchScorerResource(device="cpu", batch_size=512)
    loaded = scorer.load(MlflowModelRegistryResource(tracking_uri=tiny_model_store.tracking_uri, model_uri="models:/tiny-pickle/1").resolve())
    scored = score_day(store, DAY, scorer, loaded, id_column="transaction_id")

    assert scored.rows == 7001
    files = store.partition_files("predictions", DAY)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    stored = store.read_partition("predictions", DAY).to_pandas()
    expected = scorer.score(loaded, frame)
    # Read batches end at the snapshot's row groups, so batch edges differ from one in-memory pass: close, not bytes.
    np.testing.assert_allclose(stored["score"].to_numpy(), expected, rtol=1e-6, atol=1e-7)


def _shifted_demo_module(demo_training) -> torch.nn.Module:
    """The demo model with its output logit shifted: a genuinely different version 2."""
    module = copy.deepcopy(demo_training.module)
    with torch.no_grad():
        module.net[-1].bias += 1.0
    return module


def _register_version_two(settings, demo_training) -> None:
    import mlflow

    from batchinfer_assets.lib.demo_model import DEMO_EXPERIMENT
    from batchinfer_assets.lib.model_loading import ensure_experiment, log_torch_model, make_client, mlflow_uris

    client = make_client(settings.tracking_uri)
    experiment_id = ensure_experiment(client, DEMO_EXPERIMENT, settings.artifact_location)
    example = demo_training.reference.loc[:, list(FEATURE_COLUMNS)].to_numpy(np.float32)[:8]
    with mlflow_uris(settings.tracking_uri), mlflow.start_run(experiment_id=experiment_id):
        log_torch_model(
            _shifted_demo_module(demo_training),
            input_columns=FEATURE_COLUMNS,
            example=example,
            serialization_format="pickle",
            registered_model_name="fraud-detector",
        )
    client.set_registered_model_alias("fraud-detector", "champion", "2")


@pytest.fixture
def own_registry_settings(pipeline_settings, demo_training, tmp_path):
    """Pipeline settings with a private MLflow store holding the demo model as version 1 (alias champion)."""
    from batchinfer_assets.lib.demo_model import register_demo_model

    settings = dataclasses.replace(pipeline_settings, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    register_demo_model(
        tracking_uri=settings.tracking_uri,
        artifact_location=settings.artifact_location,
        training=demo_training,
        serialization_format="pickle",
    )
    return settings


def _all_assets(settings):
    return list(build_definitions(settings).assets)


def _run_day(settings, instance, tags=None, only_predictions: bool = False):
    selection = (
        dg.AssetSelection.assets("predictions")
        if only_predictions
        else dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")
    )
    result = dg.materialize(
        _all_assets(settings),
        resources=build_resources(settings),
        partition_key=DAY,
        instance=instance,
        tags=tags,
        selection=selection,
    )
    assert result.success
    return result


def test_alias_move_marks_predictions_stale_and_pinned_version_reproduces_the_day(own_registry_settings, demo_training):
    settings = own_registry_settings
    assets = _all_assets(settings)
    key = dg.AssetKey("predictions")
    folder = Path(settings.storage_uri) / "predictions" / f"dt={DAY}"
    with dg.instance_for_test() as instance:
        observe([scoring_model], instance=instance, resources=build_resources(settings))
        _run_day(settings, instance)
        original = {p.name: p.read_bytes() for p in folder.glob("*.parquet")}
        assert get_stale_status_resolver(instance, assets).get_status(key, DAY) == StaleStatus.FRESH

        _register_version_two(settings, demo_training)
        observe([scoring_model], instance=instance, resources=build_resources(settings))

        resolver = get_stale_status_resolver(instance, assets)
        assert resolver.get_status(key, DAY) == StaleStatus.STALE
        causes = resolver.get_stale_causes(key, DAY)
        assert any(c.dependency and c.dependency.asset_key == dg.AssetKey("scoring_model") for c in causes), causes
        assert resolver.get_current_data_version(dg.AssetKey("scoring_model")) == dg.DataVersion("2")

        # Re-scoring follows the moved alias; the run tag reproduces the day with the version it recorded.
        moved = _run_day(settings, instance, only_predictions=True)
        assert materializations(moved, "predictions")[DAY].metadata["model_version"].value == "2"
        assert {p.name: p.read_bytes() for p in folder.glob("*.parquet")} != original
        assert get_stale_status_resolver(instance, assets).get_status(key, DAY) == StaleStatus.FRESH

        reproduced = _run_day(settings, instance, tags={MODEL_VERSION_TAG: "1"}, only_predictions=True)
        meta = materializations(reproduced, "predictions")[DAY].metadata
        assert (meta["model_version"].value, meta["model_uri"].value) == ("1", "models:/fraud-detector/1")
        assert {p.name: p.read_bytes() for p in folder.glob("*.parquet")} == original
