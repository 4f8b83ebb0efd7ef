"""A model is identified by what it is: a registered model deleted and registered again (its versions restart at 1)
is scored with its own files, on a machine whose model cache holds the old version 1."""

from __future__ import annotations

import dataclasses
import math

import dagster as dg
import numpy as np
import sqlalchemy as sa
import torch

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.reproduce import CANNOT, reproduce_day
from batchinfer_assets_tests.support import materialize_pipeline, materializations

DAY = "2025-01-02"
NAME = "reused-name"
DAILY = ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions", "published_predictions"]


def constant_module(probability: float) -> torch.nn.Module:
    """Scores every row `probability` (a sigmoid over a zero-weight linear map)."""
    linear = torch.nn.Linear(len(FEATURE_COLUMNS), 1)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(math.log(probability / (1 - probability)))
    return torch.nn.Sequential(linear, torch.nn.Sigmoid()).eval()


def register_constant(settings, probability: float, holdout: float | None = None) -> str:
    """Log and register a constant model under NAME with alias champion (its run logging `holdout` as
    holdout_roc_auc when given); the registered version."""
    import mlflow

    from batchinfer_assets.lib.model_loading import ensure_experiment, log_torch_model, make_client, mlflow_uris

    client = make_client(settings.tracking_uri)
    experiment_id = ensure_experiment(client, "constants", settings.artifact_location)
    example = np.random.default_rng(0).normal(size=(6, len(FEATURE_COLUMNS))).astype(np.float32)
    with mlflow_uris(settings.tracking_uri), mlflow.start_run(experiment_id=experiment_id):
        if holdout is not None:
            mlflow.log_metric("holdout_roc_auc", holdout)
        log_torch_model(constant_module(probability), input_columns=FEATURE_COLUMNS, example=example, registered_model_name=NAME)
    version = max(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))
    client.set_registered_model_alias(NAME, "champion", str(version))
    return str(version)


def registry_checksum(settings, version: str) -> str:
    """The checksum of what the registry holds now as NAME's `version`, downloaded apart from the pipeline."""
    from batchinfer_assets.lib.model_loading import artifact_checksum, downloaded_model

    with downloaded_model(f"models:/{NAME}/{version}", settings.tracking_uri) as folder:
        return artifact_checksum(folder)


def test_a_model_deleted_and_registered_again_is_scored_from_its_own_files_not_the_cached_old_ones(pipeline_settings, tmp_path):
    from batchinfer_assets.lib.model_loading import make_client

    settings = dataclasses.replace(
        pipeline_settings, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", model_uri=f"models:/{NAME}@champion"
    )
    store = PartitionedParquetStore(settings.storage_uri)
    assert register_constant(settings, 0.9) == "1"
    old_checksum = registry_checksum(settings, "1")
    with dg.instance_for_test() as instance:
        first = materialize_pipeline(build_resources(settings), DAILY, partition_key=DAY, instance=instance)
        np.testing.assert_allclose(store.read_partition("predictions", DAY).column("score").to_numpy(), 0.9, rtol=1e-6)
        assert materializations(first, "predictions")[DAY].metadata["model_artifact_checksum"].value == old_checksum
        assert any(settings.model_cache_dir.iterdir()), "version 1 is in this machine's model cache"

        make_client(settings.tracking_uri).delete_registered_model(NAME)
        assert register_constant(settings, 0.1) == "1", "a deleted model registered again restarts at version 1"
        new_checksum = registry_checksum(settings, "1")
        assert new_checksum != old_checksum

        second = materialize_pipeline(build_resources(settings), DAILY, partition_key=DAY, instance=instance)
        # The first scoring cannot be reproduced: its model is gone, and version 1 is another model now.
        status, reason, _ = reproduce_day(build_definitions(settings), instance, DAY, run_id=first.run_id)
        assert status == CANNOT
        assert reason.startswith(f"cannot reproduce {DAY}: models:/{NAME}/1 now holds another model than the one that scored"), reason
        assert f"checksum {new_checksum[:12]}, the original {old_checksum[:12]}" in reason

    scores = store.read_partition("predictions", DAY).column("score").to_numpy()
    np.testing.assert_allclose(scores, 0.1, rtol=1e-6)
    meta = materializations(second, "predictions")[DAY].metadata
    assert (meta["pinned_model_uri"].value, meta["model_artifact_checksum"].value) == (f"models:/{NAME}/1", new_checksum)
    engine = sa.create_engine(settings.predictions_db_url)
    try:
        with engine.connect() as conn:
            published = conn.execute(
                sa.text(
                    "SELECT s.artifact_checksum, max(p.score), min(p.score) FROM predictions p "
                    "JOIN scoring_runs s ON s.id = p.scoring_run_id WHERE p.dt = :dt GROUP BY s.artifact_checksum"
                ),
                {"dt": DAY},
            ).all()
            runs = dict(conn.execute(sa.text("SELECT dagster_run_id, artifact_checksum FROM scoring_runs")).all())
    finally:
        engine.dispose()
    assert len(published) == 1 and published[0][0] == new_checksum
    assert math.isclose(published[0][1], 0.1, rel_tol=1e-6) and math.isclose(published[0][2], 0.1, rel_tol=1e-6)
    assert runs == {first.run_id: old_checksum, second.run_id: new_checksum}


def test_a_days_performance_is_judged_against_the_hold_out_of_the_registration_that_scored_it(pipeline_settings, tmp_path):
    from batchinfer_assets.lib.model_loading import make_client

    settings = dataclasses.replace(
        pipeline_settings, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", model_uri=f"models:/{NAME}@champion"
    )
    assert register_constant(settings, 0.9, holdout=0.91) == "1"
    registry = build_resources(settings)["model_registry"]
    assert registry.version_metric(NAME, "1", "holdout_roc_auc") == 0.91
    with dg.instance_for_test() as instance:
        materialize_pipeline(build_resources(settings), DAILY[:5], partition_key=DAY, instance=instance)

        make_client(settings.tracking_uri).delete_registered_model(NAME)
        assert register_constant(settings, 0.1, holdout=0.62) == "1", "a deleted model registered again restarts at version 1"
        # The same resource asked again: version 1 is another registration now, with its own run and metric.
        assert registry.version_metric(NAME, "1", "holdout_roc_auc") == 0.62

        # Re-evaluated with the labels known now: the day was scored by the first registration, judged by its hold-out.
        judged = materialize_pipeline(build_resources(settings), ["prediction_performance"], partition_key=DAY, instance=instance)
    meta = materializations(judged, "prediction_performance")[DAY].metadata
    assert (meta["model_version"].value, meta["judgement"].value["holdout_roc_auc"]) == ("1", 0.91)
