"""Materializing selections of the daily pipeline in tests, with real small resources."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from batchinfer_assets.assets.pipeline import daily_pipeline
from batchinfer_assets.assets.predictions import scoring_model
from batchinfer_assets.resources.domain import DomainResource
from batchinfer_assets.resources.labels_zone import PerformancePolicyResource, SyntheticLabelsResource
from batchinfer_assets.resources.landing_zone import SyntheticLandingZoneResource
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource
from batchinfer_assets.resources.scoring_engine import LocalScoringEngine
from batchinfer_assets.resources.table_storage import TableStorageResource
from batchinfer_assets.resources.torch_scorer import TorchScorerResource
from batchinfer_assets.resources.validation import ValidationPolicyResource

PIPELINE_ASSETS = [scoring_model, daily_pipeline]


def pipeline_resources(storage: Path, model_registry: Any, **overrides: Any) -> dict[str, Any]:
    """Every resource the pipeline step needs, on `storage`, with `overrides` replacing any of them."""
    resources: dict[str, Any] = {
        "table_storage": TableStorageResource(base_uri=str(storage)),
        "landing_zone": SyntheticLandingZoneResource(rows_per_day=1000),
        "validation_policy": ValidationPolicyResource(),
        "model_registry": model_registry,
        "torch_scorer": TorchScorerResource(device="cpu"),
        "scoring_engine": LocalScoringEngine(),
        "prediction_db": PredictionDatabaseResource(url=f"sqlite:///{Path(storage) / 'predictions.db'}"),
        "labels": SyntheticLabelsResource(rows_per_day=1000),
        "performance_policy": PerformancePolicyResource(),
        "domain": DomainResource(),
    }
    resources.update(overrides)
    return resources


def range_tags(start: str, end: str) -> dict[str, str]:
    """Run tags of a single-run range, as a backfill or the CLI's --partition-range sets them."""
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def materialize_pipeline(
    resources: Mapping[str, Any],
    assets: Iterable[str],
    *,
    partition_key: str | None = None,
    days: tuple[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
    tags: Mapping[str, str] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialize the named pipeline assets for one day or a range of days."""
    all_tags = dict(tags or {})
    if days is not None:
        all_tags |= range_tags(*days)
    return dg.materialize(
        PIPELINE_ASSETS,
        resources=dict(resources),
        selection=dg.AssetSelection.assets(*assets),
        partition_key=partition_key,
        instance=instance,
        tags=all_tags,
        raise_on_error=raise_on_error,
    )


def check_verdicts(result: dg.ExecuteInProcessResult, check_name: str) -> dict[str, bool]:
    """Per day: whether the named check passed in this run."""
    verdicts = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if evaluation.check_name == check_name:
                verdicts[evaluation.metadata["day"].value] = evaluation.passed
    return verdicts


def materializations(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dg.AssetMaterialization]:
    """The run's materializations of `asset`, by day."""
    return {
        event.materialization.partition: event.materialization
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key.to_user_string() == asset
    }


def materialized_days(result: dg.ExecuteInProcessResult, asset: str) -> list[str]:
    """The days the run materialized `asset` for."""
    return sorted(materializations(result, asset))
