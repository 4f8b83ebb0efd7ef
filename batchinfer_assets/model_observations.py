"""Observations of `scoring_model`: the version the model URI resolved to, recorded by the model-version sensor
and by every run that resolves the URI itself. Its data version is that version, which is what each day's
predictions record as their `scoring_model` input, so Dagster marks a day stale exactly when the two differ."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from batchinfer_assets.tables import SCORING_MODEL


def last_observed_model_version(instance: dg.DagsterInstance) -> str | None:
    """The version the latest observation of `scoring_model` recorded; None when it was never observed."""
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(SCORING_MODEL)), limit=1).records
    if not records:
        return None
    return (records[0].event_log_entry.asset_observation.tags or {}).get(DATA_VERSION_TAG)


def model_version_observation(model_uri: str, pinned_uri: str, version: str) -> dg.AssetObservation:
    """An observation of `scoring_model` saying that `model_uri` resolves to `version` (`pinned_uri`)."""
    return dg.AssetObservation(
        asset_key=SCORING_MODEL,
        metadata={"model_uri": model_uri, "pinned_uri": pinned_uri, "model_version": version},
        tags={DATA_VERSION_TAG: version},
    )
