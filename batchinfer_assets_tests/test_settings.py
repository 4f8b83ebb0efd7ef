import datetime as dt
import re
from pathlib import Path

import dagster as dg
import pytest

from batchinfer_assets.lib.model_loading import DEFAULT_MODEL_URI
from batchinfer_assets.project import build_resources
from batchinfer_assets.settings import Settings


def test_embedded_defaults_live_under_the_working_directory(tmp_path):
    settings = Settings.from_env({}, cwd=tmp_path)

    home = tmp_path / ".batchinfer"
    assert settings.home == home
    assert settings.storage_uri == str(home / "storage")
    assert settings.landing_uri is None
    assert settings.labels_uri is None
    assert settings.rows_per_day == 20_000
    assert settings.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.model_uri == DEFAULT_MODEL_URI
    assert settings.device == "auto"
    assert settings.batch_size is None
    assert settings.max_invalid_fraction == 0.01
    assert settings.predictions_db_url == f"sqlite:///{home / 'predictions.db'}"
    assert settings.artifact_location == (home / "mlartifacts").as_uri()


def test_every_contract_variable_is_honoured(tmp_path):
    env = {
        "BATCHINFER_HOME": str(tmp_path / "h"),
        "BATCHINFER_STORAGE_URI": "s3://bucket/prefix",
        "BATCHINFER_LANDING_URI": "/data/landing",
        "BATCHINFER_DEMO_ROWS_PER_DAY": "500",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "BATCHINFER_MODEL_URI": "models:/mine/3",
        "BATCHINFER_DEVICE": "cuda:1",
        "BATCHINFER_BATCH_SIZE": "4096",
        "BATCHINFER_MAX_INVALID_FRACTION": "0.05",
        "BATCHINFER_PREDICTIONS_DB_URL": "postgresql+psycopg://u:p@db/preds",
        "BATCHINFER_LABELS_URI": "s3://labels-bucket/fraud",
        "BATCHINFER_DAY_CHUNK_ROWS": "500000",
    }
    s = Settings.from_env(env)
    assert s.day_chunk_rows == 500_000
    assert build_resources(s)["table_storage"].day_chunk_rows == 500_000
    assert (s.home, s.storage_uri, s.landing_uri, s.rows_per_day) == (Path(tmp_path / "h"), "s3://bucket/prefix", "/data/landing", 500)
    assert (s.tracking_uri, s.model_uri, s.device, s.batch_size) == ("http://mlflow:5000", "models:/mine/3", "cuda:1", 4096)
    assert (s.max_invalid_fraction, s.predictions_db_url) == (0.05, "postgresql+psycopg://u:p@db/preds")
    assert s.labels_uri == "s3://labels-bucket/fraud"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATCHINFER_DEMO_ROWS_PER_DAY", "many"),
        ("BATCHINFER_DEMO_ROWS_PER_DAY", "0"),
        ("BATCHINFER_BATCH_SIZE", "-3"),
        ("BATCHINFER_MAX_INVALID_FRACTION", "1.5"),
        ("BATCHINFER_MAX_INVALID_FRACTION", "ten percent"),
    ],
)
def test_bad_values_name_the_variable(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value}, cwd=tmp_path)


def test_the_prediction_database_password_never_reaches_resource_config(monkeypatch, tmp_path):
    """Resource config is shown in the UI: a URL read from the environment is passed as an EnvVar reference."""
    from batchinfer_assets.project import PREDICTIONS_DB_URL_VAR, build_definitions

    url = "postgresql+psycopg://scorer:s3cret-pw@db.internal:5432/predictions"
    monkeypatch.setenv(PREDICTIONS_DB_URL_VAR, url)
    defs = build_definitions(Settings.from_env(cwd=tmp_path))

    resource = defs.resources["prediction_db"]
    assert resource.url == dg.EnvVar(PREDICTIONS_DB_URL_VAR)
    snapshot = str(resource.get_resource_definition().config_schema.as_field().default_value)
    assert "s3cret-pw" not in snapshot and PREDICTIONS_DB_URL_VAR in snapshot


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BATCHINFER_LABELS_URI", "gs://bucket/labels", "BATCHINFER_LABELS_URI='gs://bucket/labels': only local paths"),
        ("BATCHINFER_LABELS_URI", "s3:///labels", "BATCHINFER_LABELS_URI='s3:///labels' is not s3://<bucket>/<prefix>"),
        ("BATCHINFER_DEVICE", "gpu", "BATCHINFER_DEVICE must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("BATCHINFER_DEVICE", "cuda:x", "BATCHINFER_DEVICE must be auto, cpu, cuda or cuda:N"),
        ("BATCHINFER_MODEL_URI", "fraud-detector@champion", "BATCHINFER_MODEL_URI must be models:/<name>@<alias>"),
        ("BATCHINFER_PREDICTIONS_DB_URL", "postgres//scorer:s3cret@db/predictions", "BATCHINFER_PREDICTIONS_DB_URL is not a SQLAlchemy URL"),
        ("BATCHINFER_PREDICTIONS_DB_URL", "mysql://u:s3cret@db/p", "BATCHINFER_PREDICTIONS_DB_URL names backend 'mysql'"),
        ("BATCHINFER_SCORING_ENGINE", "spark", "BATCHINFER_SCORING_ENGINE must be one of local, ray"),
        ("BATCHINFER_STORAGE_URI", "gs://bucket/tables", "BATCHINFER_STORAGE_URI='gs://bucket/tables': only local paths"),
        ("BATCHINFER_LANDING_URI", "s3://Bad_Bucket/landing", "BATCHINFER_LANDING_URI='s3://Bad_Bucket/landing' is not s3://<bucket>/<prefix>"),
        ("BATCHINFER_SNAPSHOT_RETENTION_DAYS", "forever", "BATCHINFER_SNAPSHOT_RETENTION_DAYS must be a positive integer"),
        ("BATCHINFER_DAY_CHUNK_ROWS", "0", "BATCHINFER_DAY_CHUNK_ROWS must be a positive integer"),
        ("BATCHINFER_DAY_CHUNK_ROWS", "2M", "BATCHINFER_DAY_CHUNK_ROWS must be a positive integer"),
    ],
)
def test_settings_that_can_never_work_are_refused_at_load_naming_the_variable(tmp_path, variable, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        Settings.from_env({variable: value}, cwd=tmp_path)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("environ", "engine", "address"),
    [
        ({}, "local", None),
        ({"BATCHINFER_SCORING_ENGINE": "LOCAL"}, "local", None),
        ({"BATCHINFER_SCORING_ENGINE": "ray"}, "ray", None),
        ({"BATCHINFER_SCORING_ENGINE": "ray", "RAY_ADDRESS": "raycluster-head-svc:6379"}, "ray", "raycluster-head-svc:6379"),
    ],
)
def test_the_scoring_engine_and_ray_address_are_read_from_the_contract_variables(tmp_path, environ, engine, address):
    settings = Settings.from_env(environ, cwd=tmp_path)
    assert (settings.scoring_engine, settings.ray_address) == (engine, address)


def test_the_ray_engine_is_built_on_the_cluster_ray_address_names(tmp_path):
    from dagster_ray import LocalRay

    from batchinfer_assets.project import build_scoring_engine
    from batchinfer_assets.resources.ray_engine import ExistingRayCluster, RayScoringEngine

    remote = build_scoring_engine(Settings.from_env({"BATCHINFER_SCORING_ENGINE": "ray", "RAY_ADDRESS": "head:6379"}, cwd=tmp_path))
    assert isinstance(remote, RayScoringEngine) and isinstance(remote.cluster, ExistingRayCluster)
    assert remote.cluster.ray_address == "head:6379"
    local = build_scoring_engine(Settings.from_env({"BATCHINFER_SCORING_ENGINE": "ray"}, cwd=tmp_path))
    assert isinstance(local.cluster, LocalRay) and local.cluster.ray_address is None


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "CUDA:0"])
def test_every_documented_device_is_accepted(tmp_path, device):
    assert Settings.from_env({"BATCHINFER_DEVICE": device}, cwd=tmp_path).device == device.lower()


def test_labels_uri_picks_the_parquet_labels_zone_and_its_absence_the_synthetic_truth_or_none(tmp_path):
    from batchinfer_assets.definitions import build_resources
    from batchinfer_assets.resources.labels_zone import NoLabelsResource, ParquetLabelsResource, SyntheticLabelsResource

    synthetic = build_resources(Settings.from_env({"BATCHINFER_DEMO_ROWS_PER_DAY": "700"}, cwd=tmp_path))["labels"]
    assert isinstance(synthetic, SyntheticLabelsResource) and synthetic.rows_per_day == 700, "ids must match the landing zone's"
    zone = build_resources(Settings.from_env({"BATCHINFER_LABELS_URI": str(tmp_path / "labels")}, cwd=tmp_path))["labels"]
    assert isinstance(zone, ParquetLabelsResource) and zone.uri == str(tmp_path / "labels")
    # A real landing zone without a labels zone: the synthetic truth would name ids that were never scored.
    resources = build_resources(Settings.from_env({"BATCHINFER_LANDING_URI": str(tmp_path / "landing")}, cwd=tmp_path))
    own_data = resources["labels"]
    assert isinstance(own_data, NoLabelsResource) and own_data.labels_for(dt.date(2025, 3, 1), resources["domain"].load()).labels.empty
