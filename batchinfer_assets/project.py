"""Every asset, check, job, schedule, sensor and resource of the pipeline, built from explicit settings.

`definitions.py` is the project's own code location; a user's project builds one for its own domain:

    from batchinfer_assets.project import definitions_for

    defs = definitions_for("my_project.domain:domain")
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg
from dagster_aws.s3 import S3Resource

from batchinfer_assets.assets.pipeline import build_daily_pipeline
from batchinfer_assets.domain import DOMAIN_VARIABLE, load_domain
from batchinfer_assets.assets.predictions import scoring_model
from batchinfer_assets.freshness import FRESHNESS_CHECKS, delivery_deadline
from batchinfer_assets.jobs import daily_scoring_job, reproduce_predictions_job
from batchinfer_assets.resources.domain import DomainResource
from batchinfer_assets.resources.labels_zone import (
    LabelsResource,
    NoLabelsResource,
    ParquetLabelsResource,
    PerformancePolicyResource,
    SyntheticLabelsResource,
)
from batchinfer_assets.resources.landing_zone import (
    LandingZoneResource,
    ParquetLandingZoneResource,
    SyntheticLandingZoneResource,
)
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource
from batchinfer_assets.resources.scoring_engine import LocalScoringEngine, ScoringEngineResource
from batchinfer_assets.resources.table_storage import TableStorageResource
from batchinfer_assets.resources.torch_scorer import TorchScorerResource
from batchinfer_assets.resources.validation import ValidationPolicyResource
from batchinfer_assets.schedules import daily_scoring_schedule
from batchinfer_assets.sensors import (
    freshness_checks_sensor,
    model_version_sensor,
    orphaned_runs_sensor,
    prediction_performance_sensor,
    publish_predictions_sensor,
)
from batchinfer_assets.settings import Settings

S3_MAX_ATTEMPTS = 5


PREDICTIONS_DB_URL_VAR = "BATCHINFER_PREDICTIONS_DB_URL"
TRACKING_URI_VAR = "MLFLOW_TRACKING_URI"


def _secret_or_value(variable: str, value: str | None) -> str | dg.EnvVar | None:
    """`dg.EnvVar(variable)` when the value came from that variable, so the UI shows its name, never its value.

    Resource config is shown in the UI (and returned by GraphQL's `configuredValues`); a URI that can carry a
    password or a token (tracking URI, database URL, Ray address) must reach the resource as an environment
    variable reference instead.
    """
    return dg.EnvVar(variable) if value and os.environ.get(variable, "").strip() == value else value


def build_resources(settings: Settings) -> dict[str, object]:
    """The resources for one set of settings: the only place implementations are chosen."""
    # Used only by s3:// URIs; endpoint and credentials come from boto3's own variables, retries are
    # botocore's "standard" mode (backoff with jitter on throttling, 5xx and connection errors).
    s3 = S3Resource(region_name=settings.aws_region, max_attempts=S3_MAX_ATTEMPTS)
    landing_zone: LandingZoneResource = (
        ParquetLandingZoneResource(uri=settings.landing_uri, s3=s3)
        if settings.landing_uri
        else SyntheticLandingZoneResource(rows_per_day=settings.rows_per_day)
    )
    # The synthetic labels are the synthetic landing zone's truth (same rows a day, so the ids match); beside a real
    # landing zone they would only name ids that were never scored.
    labels: LabelsResource
    if settings.labels_uri:
        labels = ParquetLabelsResource(uri=settings.labels_uri, s3=s3)
    elif settings.landing_uri:
        labels = NoLabelsResource()
    else:
        labels = SyntheticLabelsResource(rows_per_day=settings.rows_per_day)
    return {
        "landing_zone": landing_zone,
        "validation_policy": ValidationPolicyResource(max_invalid_fraction=settings.max_invalid_fraction),
        "model_registry": MlflowModelRegistryResource(
            tracking_uri=_secret_or_value(TRACKING_URI_VAR, settings.tracking_uri),
            model_uri=settings.model_uri,
            artifact_location=settings.artifact_location,
            cache_dir=str(settings.model_cache_dir),
            demo_domain=settings.domain,
        ),
        "torch_scorer": TorchScorerResource(
            device=settings.device, batch_size=settings.batch_size, state_dir=str(settings.state_dir)
        ),
        "scoring_engine": build_scoring_engine(settings),
        "prediction_db": PredictionDatabaseResource(url=_secret_or_value(PREDICTIONS_DB_URL_VAR, settings.predictions_db_url)),
        "table_storage": TableStorageResource(
            base_uri=settings.storage_uri,
            s3=s3,
            snapshot_retention_days=settings.snapshot_retention_days,
            day_chunk_rows=settings.day_chunk_rows,
        ),
        "labels": labels,
        "performance_policy": PerformancePolicyResource(),
        "domain": DomainResource(reference=settings.domain),
    }


def build_scoring_engine(settings: Settings) -> ScoringEngineResource:
    """The engine `BATCHINFER_SCORING_ENGINE` names; Ray (an optional extra) is imported only when it is chosen."""
    if settings.scoring_engine == "ray":
        from batchinfer_assets.resources.ray_engine import RAY_ADDRESS_VAR, RayScoringEngine, ray_cluster_for

        return RayScoringEngine(cluster=ray_cluster_for(_secret_or_value(RAY_ADDRESS_VAR, settings.ray_address)))
    return LocalScoringEngine()


def build_definitions(settings: Settings) -> dg.Definitions:
    """All definitions of the project, wired to the given settings."""
    return dg.Definitions(
        assets=[scoring_model, build_daily_pipeline(load_domain(settings.domain)), delivery_deadline],
        asset_checks=FRESHNESS_CHECKS,
        jobs=[daily_scoring_job, reproduce_predictions_job],
        schedules=[daily_scoring_schedule],
        sensors=[
            publish_predictions_sensor,
            prediction_performance_sensor,
            freshness_checks_sensor,
            model_version_sensor,
            orphaned_runs_sensor,
        ],
        resources=build_resources(settings),
        # Each run is one step (the day-by-day pipeline, or an observation): a separate step process would only
        # add its start-up and its exit (about 1.7 s of interpreter shutdown with torch and MLflow loaded).
        # The Kubernetes location sets its own executor (a pod per step).
        executor=dg.in_process_executor,
    )


def definitions_for(domain: str, environ: Mapping[str, str] | None = None) -> dg.Definitions:
    """The whole pipeline for the domain `module.path:attribute` names, its other settings from the environment."""
    env = dict(os.environ if environ is None else environ)
    env[DOMAIN_VARIABLE] = domain
    return build_definitions(Settings.from_env(env))
