"""Shared fixtures: real local MLflow stores holding a tiny model (both formats) and the trained demo model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

TINY_COLUMNS = ("amount_z", "velocity", "risk")

# Tests that start real servers or processes (webserver and daemon, PostgreSQL, an S3 server, Ray, the CLI, a
# clean virtualenv): marked `system`, so `pytest -m "not system"` is the fast subset a contributor runs while working.
SYSTEM_FOLDERS = frozenset({"system", "postgres", "s3", "ray", "deploy"})
SYSTEM_MODULES = frozenset({"test_validation_cli", "test_domains_end_to_end", "test_console", "test_secrets"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        uses_servers = "postgres_server" in getattr(item, "fixturenames", ())
        if path.parent.name in SYSTEM_FOLDERS or path.stem in SYSTEM_MODULES or uses_servers:
            item.add_marker(pytest.mark.system)
        if path.parent.name == "ray":
            # With pytest-xdist (scripts/test.sh runs two workers), every Ray test goes to one worker: one loopback
            # cluster for the session, as when run serially, instead of one per worker on the same two cores.
            item.add_marker(pytest.mark.xdist_group("ray"))


@dataclass(frozen=True)
class TinyModelStore:
    """A local MLflow store with the same tiny model registered as pt2 and as pickle."""

    tracking_uri: str
    artifact_location: str
    module: torch.nn.Module
    columns: tuple[str, ...]
    run_id: str
    reference: pd.DataFrame
    # registered name per serialization format, each version 1 with alias "champion"
    names: dict[str, str]


def tiny_module() -> torch.nn.Module:
    """Sigmoid over a fixed linear map of TINY_COLUMNS; returns shape (N, 1)."""
    linear = torch.nn.Linear(len(TINY_COLUMNS), 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.8, -1.5, 2.25]]))
        linear.bias.fill_(-0.25)
    return torch.nn.Sequential(linear, torch.nn.Sigmoid()).eval()


@pytest.fixture(scope="session")
def tiny_model_store(tmp_path_factory: pytest.TempPathFactory) -> TinyModelStore:
    """One run logging the tiny model in both formats plus a reference sample; registered with alias champion."""
    import mlflow

    from batchinfer_assets.lib.model_loading import (
        REFERENCE_ARTIFACT_PATH,
        ensure_experiment,
        log_torch_model,
        make_client,
        mlflow_uris,
    )

    root = tmp_path_factory.mktemp("tiny_mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    artifact_location = str(root / "artifacts")
    client = make_client(tracking_uri)
    experiment_id = ensure_experiment(client, "tiny", artifact_location)
    module = tiny_module()
    example = np.random.default_rng(0).normal(size=(6, len(TINY_COLUMNS))).astype(np.float32)
    reference = pd.DataFrame(example, columns=list(TINY_COLUMNS)).assign(score=np.float32(0.5))
    names = {"pt2": "tiny-pt2", "pickle": "tiny-pickle"}
    with mlflow_uris(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run:
        for fmt, name in names.items():
            log_torch_model(
                module,
                input_columns=TINY_COLUMNS,
                example=example,
                serialization_format=fmt,  # type: ignore[arg-type]
                name=f"model_{fmt}",
                registered_model_name=name,
            )
            client.set_registered_model_alias(name, "champion", "1")
        folder, _, filename = REFERENCE_ARTIFACT_PATH.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            reference.to_parquet(Path(tmp) / filename, index=False)
            mlflow.log_artifact(str(Path(tmp) / filename), artifact_path=folder)
    return TinyModelStore(
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        module=module,
        columns=TINY_COLUMNS,
        run_id=run.info.run_id,
        reference=reference,
        names=names,
    )


@pytest.fixture(scope="session")
def demo_training():
    """The demo model trained once per session with its defaults."""
    from batchinfer_assets.lib.demo_model import train_demo_model

    return train_demo_model()


@pytest.fixture(scope="session")
def demo_model_store(tmp_path_factory: pytest.TempPathFactory, demo_training):
    """Settings whose MLflow store already holds the demo model as fraud-detector@champion."""
    from batchinfer_assets.lib.demo_model import register_demo_model
    from batchinfer_assets.settings import Settings

    home = tmp_path_factory.mktemp("demo_home")
    settings = Settings.from_env(environ={"BATCHINFER_HOME": str(home)})
    register_demo_model(
        tracking_uri=settings.tracking_uri, artifact_location=settings.artifact_location, training=demo_training
    )
    return settings


@pytest.fixture
def pipeline_settings(tmp_path, demo_model_store):
    """Fresh storage and prediction database per test, sharing the session's registered demo model."""
    import dataclasses

    return dataclasses.replace(
        demo_model_store,
        home=tmp_path,
        storage_uri=str(tmp_path / "storage"),
        rows_per_day=1500,
        predictions_db_url=f"sqlite:///{tmp_path / 'predictions.db'}",
    )


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's binaries) on a free loopback port for the session; always stopped."""
    from batchinfer_assets_tests.postgres.server import find_bin_dir, start_server, stop_server

    try:
        find_bin_dir()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)
