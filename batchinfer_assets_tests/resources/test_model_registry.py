"""The registry resource pins URIs to versions against a real local MLflow store."""

from __future__ import annotations

import os
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batchinfer_assets.tags import MODEL_VERSION_TAG
from batchinfer_assets_tests.conftest import TINY_COLUMNS
from batchinfer_assets.lib.model_loading import ModelNotFoundError, ModelResolutionError, make_client
from batchinfer_assets.resources.model_registry import DEFAULT_MODEL_URI, MlflowModelRegistryResource


def _registry(store, uri: str, **kwargs) -> MlflowModelRegistryResource:
    return MlflowModelRegistryResource(tracking_uri=store.tracking_uri, model_uri=uri, **kwargs)


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_alias_resolves_to_pinned_version(tiny_model_store, fmt):
    name = tiny_model_store.names[fmt]
    resolved = _registry(tiny_model_store, f"models:/{name}@champion").resolve()
    assert resolved.requested_uri == f"models:/{name}@champion"
    assert resolved.pinned_uri == f"models:/{name}/1"
    assert (resolved.name, resolved.version) == (name, "1")
    assert resolved.run_id == tiny_model_store.run_id
    assert resolved.input_columns == tiny_model_store.columns
    assert resolved.model_format == fmt
    assert len(resolved.artifact_checksum) == 64


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_version_and_runs_uris(tiny_model_store, fmt):
    name = tiny_model_store.names[fmt]
    by_alias = _registry(tiny_model_store, f"models:/{name}@champion").resolve()
    by_version = _registry(tiny_model_store, f"models:/{name}/1").resolve()
    assert by_version.pinned_uri == by_alias.pinned_uri
    assert by_version.artifact_checksum == by_alias.artifact_checksum

    runs_uri = f"runs:/{tiny_model_store.run_id}/model_{fmt}"
    by_run = _registry(tiny_model_store, runs_uri).resolve()
    assert by_run.pinned_uri == runs_uri
    assert by_run.name is None
    assert by_run.version == by_run.run_id == tiny_model_store.run_id
    assert by_run.input_columns == tiny_model_store.columns
    assert by_run.model_format == fmt
    assert by_run.artifact_checksum == by_alias.artifact_checksum


def test_formats_have_different_checksums(tiny_model_store):
    pt2 = _registry(tiny_model_store, "models:/tiny-pt2/1").resolve()
    pickle = _registry(tiny_model_store, "models:/tiny-pickle/1").resolve()
    assert pt2.artifact_checksum != pickle.artifact_checksum


@pytest.mark.parametrize(
    "uri", ["models:/tiny-pt2@challenger", "models:/tiny-pt2/7", "models:/no-such-model@champion"]
)
def test_missing_model_names_uri_and_tracking_uri(tiny_model_store, uri):
    with pytest.raises(ModelNotFoundError) as error:
        _registry(tiny_model_store, uri).resolve()
    assert uri in str(error.value)
    assert tiny_model_store.tracking_uri in str(error.value)


def test_missing_run_is_not_found(tiny_model_store):
    with pytest.raises(ModelNotFoundError, match="runs:/0123456789abcdef0123456789abcdef/model"):
        _registry(tiny_model_store, "runs:/0123456789abcdef0123456789abcdef/model").resolve()


def test_unsupported_uri(tiny_model_store):
    with pytest.raises(ModelResolutionError, match="Unsupported model URI"):
        _registry(tiny_model_store, "s3://bucket/model").resolve()


def test_non_default_missing_uri_never_trains_demo(tmp_path):
    registry = MlflowModelRegistryResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", model_uri="models:/fraud-detector@staging"
    )
    with pytest.raises(ModelNotFoundError, match="fraud-detector@staging"):
        registry.resolve()
    assert not (tmp_path / "mlartifacts").exists()


def test_default_uri_missing_without_demo_is_error(tmp_path):
    registry = MlflowModelRegistryResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", demo_when_missing=False
    )
    with pytest.raises(ModelNotFoundError, match=DEFAULT_MODEL_URI):
        registry.resolve()


def test_default_uri_registers_demo_once(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = tmp_path / "home" / "mlartifacts"
    registry = MlflowModelRegistryResource(tracking_uri=tracking_uri, artifact_location=str(artifacts))
    first = registry.resolve()
    assert first.pinned_uri == "models:/fraud-detector/1"
    assert first.model_format == "pt2"
    assert artifacts.is_dir() and any(artifacts.iterdir())
    assert not (tmp_path / "mlruns").exists()

    # A fresh resource instance (no in-memory cache) must find the registered model, not retrain.
    second = MlflowModelRegistryResource(tracking_uri=tracking_uri, artifact_location=str(artifacts)).resolve()
    assert second == first

    from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS
    from batchinfer_assets.lib.model_loading import make_client

    client = make_client(tracking_uri)
    assert [str(mv.version) for mv in client.search_model_versions("name = 'fraud-detector'")] == ["1"]
    run = client.get_run(first.run_id)
    assert run.data.metrics["holdout_roc_auc"] >= 0.85
    assert first.input_columns == FEATURE_COLUMNS

    reference = registry.load_reference(first)
    assert reference is not None
    assert list(reference.columns) == [*FEATURE_COLUMNS, "score"]
    assert len(reference) == 20_000


def test_load_reference(tiny_model_store):
    registry = _registry(tiny_model_store, "models:/tiny-pt2@champion")
    reference = registry.load_reference(registry.resolve())
    assert reference is not None
    assert reference.equals(tiny_model_store.reference)


def test_load_reference_absent(tmp_path, tiny_model_store):
    import mlflow
    import numpy as np

    from batchinfer_assets.lib.model_loading import ensure_experiment, log_torch_model, make_client, mlflow_uris

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = ensure_experiment(make_client(tracking_uri), "bare", str(tmp_path / "artifacts"))
    with mlflow_uris(tracking_uri), mlflow.start_run(experiment_id=experiment_id):
        log_torch_model(
            tiny_model_store.module,
            input_columns=tiny_model_store.columns,
            example=np.ones((3, 3), dtype=np.float32),
            registered_model_name="bare",
        )
    registry = MlflowModelRegistryResource(tracking_uri=tracking_uri, model_uri="models:/bare/1")
    assert registry.load_reference(registry.resolve()) is None


@pytest.mark.parametrize("uri", ["models:/tiny-pt2@champion", "models:/tiny-pt2/1"])
def test_version_pins_instead_of_alias(tiny_model_store, uri):
    registry = _registry(tiny_model_store, uri)
    resolved = registry.resolve(version="1")
    assert resolved.requested_uri == resolved.pinned_uri == "models:/tiny-pt2/1"
    assert registry.resolve_for_run({MODEL_VERSION_TAG: "1"}) == resolved
    assert registry.resolve_for_run({}).requested_uri == uri


def test_pinned_version_missing_is_not_found(tiny_model_store):
    with pytest.raises(ModelNotFoundError, match="models:/tiny-pt2/9"):
        _registry(tiny_model_store, "models:/tiny-pt2@champion").resolve(version="9")


@pytest.mark.parametrize(
    ("uri", "version", "message"),
    [
        ("runs:/0123456789abcdef0123456789abcdef/model", "1", "runs:/ URI is pinned already"),
        ("models:/tiny-pt2@champion", "champion", "registry version number"),
    ],
)
def test_pinning_a_version_that_cannot_apply(tiny_model_store, uri, version, message):
    with pytest.raises(ModelResolutionError, match=message):
        _registry(tiny_model_store, uri).resolve(version=version)


def test_two_first_runs_started_together_register_the_demo_model_once(tmp_path):
    """Two processes resolving the default URI on a fresh store at once: one trains, the other waits and finds it."""
    import subprocess
    import sys

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = (
        "import sys; from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource as R; "
        "print(R(tracking_uri=sys.argv[1], artifact_location=sys.argv[2]).resolve().pinned_uri)"
    )
    # The store exists before the race (as after `dagster instance migrate` or any earlier MLflow use).
    from batchinfer_assets.lib.model_loading import make_client

    make_client(tracking_uri).search_registered_models()
    runs = [
        subprocess.Popen([sys.executable, "-c", script, tracking_uri, str(tmp_path / "artifacts")], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0].strip().splitlines()[-1] for run in runs]

    assert [run.returncode for run in runs] == [0, 0]
    assert outputs == ["models:/fraud-detector/1", "models:/fraud-detector/1"]
    versions = make_client(tracking_uri).search_model_versions("name = 'fraud-detector'")
    assert [str(v.version) for v in versions] == ["1"]


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_model_cache_downloads_and_checksums_a_version_once_per_machine(tiny_model_store, tmp_path, monkeypatch, fmt):
    import mlflow.artifacts

    from batchinfer_assets.resources.torch_scorer import TorchScorerResource

    name = tiny_model_store.names[fmt]
    uncached = MlflowModelRegistryResource(tracking_uri=tiny_model_store.tracking_uri, model_uri=f"models:/{name}@champion")
    reference = uncached.resolve()
    downloads: list[str] = []
    real_download = mlflow.artifacts.download_artifacts

    def counting_download(*args, **kwargs):
        downloads.append(kwargs.get("artifact_uri") or args[0])
        return real_download(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counting_download)

    def fresh_resource() -> MlflowModelRegistryResource:
        # A new resource per "process": nothing is shared but the cache folder.
        return MlflowModelRegistryResource(
            tracking_uri=tiny_model_store.tracking_uri, model_uri=f"models:/{name}@champion", cache_dir=str(tmp_path / "cache")
        )

    first = fresh_resource().resolve()
    second = fresh_resource().resolve()
    # From the version's own source (its logged model), which no later registration of the name can take over.
    source = make_client(tiny_model_store.tracking_uri).get_model_version(name, "1").source
    assert downloads == [source], "downloaded once, by the first resolution"
    assert first.artifact_checksum == second.artifact_checksum == reference.artifact_checksum
    assert (first.input_columns, first.model_format) == (reference.input_columns, reference.model_format)
    assert second.local_path is not None and Path(second.local_path).is_dir()

    features = pd.DataFrame(np.random.default_rng(3).normal(size=(50, 3)).astype(np.float32), columns=list(TINY_COLUMNS))
    # The weights load from the cached copy: a registry that cannot be reached is never asked.
    unreachable = dataclasses.replace(second, tracking_uri=f"sqlite:///{tmp_path}/no-such-folder/mlflow.db")
    scorer = TorchScorerResource(device="cpu")
    from_cache = scorer.score(scorer.load(unreachable), features)
    from_registry = TorchScorerResource(device="cpu").score(TorchScorerResource(device="cpu").load(reference), features)
    np.testing.assert_array_equal(from_cache, from_registry)


def test_version_metric_reads_the_versions_run_and_names_what_is_missing(tiny_model_store, demo_model_store):
    demo = MlflowModelRegistryResource(tracking_uri=demo_model_store.tracking_uri)
    holdout = demo.version_metric("fraud-detector", "1", "holdout_roc_auc")
    assert holdout is not None and 0.5 < holdout <= 1.0
    tiny = MlflowModelRegistryResource(tracking_uri=tiny_model_store.tracking_uri)
    # The tiny model's run logged no hold-out metric; predictions scored from a runs:/ URI name the run as version.
    assert tiny.version_metric("tiny-pickle", "1", "holdout_roc_auc") is None
    assert tiny.version_metric("", tiny_model_store.run_id, "holdout_roc_auc") is None
    with pytest.raises(ModelNotFoundError, match=r"model 'tiny-pickle' version 7 \(named by the predictions\) is not in MLflow"):
        tiny.version_metric("tiny-pickle", "7", "holdout_roc_auc")
    # The run the predictions recorded is read, whatever the version number names now.
    gone = "0" * 32
    with pytest.raises(ModelNotFoundError, match=rf"model 'tiny-pickle' version 1 \(run {gone}\) \(named by the predictions\) is not in"):
        tiny.version_metric("tiny-pickle", "1", "holdout_roc_auc", run_id=gone)


def test_pointing_mlflow_at_a_store_leaves_no_uri_behind_for_processes_started_later(tmp_path, monkeypatch):
    import subprocess
    import sys

    from batchinfer_assets.lib.model_loading import mlflow_uris

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with mlflow_uris(f"sqlite:///{tmp_path / 'a.db'}"):
        pass
    # MLflow exports the URIs it is given for child processes; a training script or run worker started after must
    # see the environment the operator set, not the last store this process used.
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('MLFLOW_TRACKING_URI'), os.environ.get('MLFLOW_REGISTRY_URI'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert child.stdout.split() == ["None", "None"]
    # What the operator set survives too: `dg launch` reads MLFLOW_TRACKING_URI again after the run (an EnvVar in
    # the resource config) and failed a successful run when MLflow had unset it on the way out.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///operator-tracking.db")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///operator.db")
    with mlflow_uris(f"sqlite:///{tmp_path / 'b.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///operator-tracking.db"
    assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:///operator.db"
