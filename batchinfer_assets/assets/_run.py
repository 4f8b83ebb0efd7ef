"""What one run of the daily pipeline shares across its days and stages, and how a day's results become events.

Dagster records one output of a multi-partition step as one materialization per partition with the same
data version and no per-partition check result (dagster issues 14332, 17005, 17836, 18649). The pipeline
therefore records each day itself: a runtime `AssetMaterialization` per asset and day, carrying that day's
own data version and provenance, and an `AssetCheckEvaluation` per check and day with the day as its
partition. A day that fails a gate is recorded as such and stops there; the other days go on.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import dagster as dg
import pandas as pd

# Check evaluations name the materialization they judged (as Dagster does for an AssetCheckResult).
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData
# The provenance tags Dagster writes on the materializations of outputs, and reads to decide staleness; written
# here by hand because each day is recorded as a runtime materialization (no public API names them).
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    INPUT_DATA_VERSION_TAG_PREFIX,
    INPUT_EVENT_POINTER_TAG_PREFIX,
    NULL_DATA_VERSION,
    NULL_EVENT_POINTER,
    compute_logical_data_version,
)

from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.resources.landing import LandingZoneResource
from batchinfer_assets.resources.model_registry import MODEL_VERSION_TAG, MlflowModelRegistryResource, ResolvedModel
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource
from batchinfer_assets.resources.scoring_engine import ScoringEngineResource
from batchinfer_assets.resources.torch_scorer import LoadedModel, TorchScorerResource
from batchinfer_assets.resources.validation import ValidationPolicyResource
from batchinfer_assets.tables import SCORING_MODEL


class DayBlocked(Exception):
    """The day stops here for this run: a blocking check failed or its data cannot be used.

    The stage that raises has already recorded what it could (e.g. the failed check); later stages of the
    same day are skipped and earlier days' and later days' work is unaffected.
    """

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(f"{stage}: {reason}")


@dataclass
class DayState:
    """What the stages of one day hand to each other in memory (one day at a time, dropped afterwards)."""

    day: str
    raw: pd.DataFrame | None = None
    features: pd.DataFrame | None = None
    snapshot: pd.DataFrame | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def date(self) -> dt.date:
        return dt.date.fromisoformat(self.day)


@dataclass
class PipelineRun:
    """Resources, selection and run-wide state (the pinned model, loaded once) of one pipeline step."""

    context: dg.AssetExecutionContext
    store: PartitionedParquetStore
    landing_zone: LandingZoneResource
    validation_policy: ValidationPolicyResource
    model_registry: MlflowModelRegistryResource
    torch_scorer: TorchScorerResource
    scoring_engine: ScoringEngineResource
    prediction_db: PredictionDatabaseResource
    code_versions: Mapping[str, str]
    cache: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def days(self) -> list[str]:
        """The partition keys of the step, in day order (one day, or a single-run range)."""
        return sorted(self.context.partition_keys)

    @cached_property
    def selected(self) -> frozenset[str]:
        """The pipeline assets this run materializes."""
        return frozenset(k.to_user_string() for k in self.context.selected_asset_keys)

    @cached_property
    def done_before_retry(self) -> frozenset[tuple[str, str]]:
        """(asset, day) pairs this run already materialized in an earlier attempt of the step."""
        if self.context.retry_number == 0:
            return frozenset()
        records = self.context.instance.get_records_for_run(
            self.context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        done = set()
        for record in records:
            materialization = record.event_log_entry.asset_materialization
            if materialization is not None and materialization.partition:
                done.add((materialization.asset_key.to_user_string(), materialization.partition))
        return frozenset(done)

    def wants(self, asset: str, day: str) -> bool:
        """Whether this run materializes `asset` for `day` (selected, and not done by an earlier attempt)."""
        return asset in self.selected and (asset, day) not in self.done_before_retry

    @cached_property
    def resolved(self) -> ResolvedModel:
        """The one model version every stage of this run uses: the run tag's pin, else what the URI resolves to now."""
        resolved = self.model_registry.resolve_for_run(self.context.run.tags)
        pinned_by = f" (pinned by run tag {MODEL_VERSION_TAG})" if MODEL_VERSION_TAG in self.context.run.tags else ""
        self.context.log.info(f"model for this run: {resolved.pinned_uri}{pinned_by}, checksum {resolved.artifact_checksum[:12]}")
        return resolved

    @cached_property
    def model(self) -> LoadedModel:
        """The run's model loaded on its device, once for every day of the run."""
        started = time.perf_counter()
        loaded = self.torch_scorer.load(self.resolved)
        self.context.log.info(f"loaded {self.resolved.pinned_uri} on {loaded.device} in {time.perf_counter() - started:.1f} s")
        return loaded

    def latest_version(self, asset: str, day: str, state: DayState) -> str | None:
        """The data version of `asset` for `day`: computed by this run, else its latest recorded materialization."""
        if asset in state.versions:
            return state.versions[asset]
        return self.input_event(asset, day)[0]

    def input_event(self, asset: str, day: str) -> tuple[str | None, int | None]:
        """(data version, storage id) of the event a stage read for `asset` on `day`.

        For the model: the version this run used (so a day is stale exactly when the URI now resolves to
        another version), with the latest observation as its event.
        """
        if asset == SCORING_MODEL:
            records = self.context.instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=1).records
            return self.resolved.version, (records[0].storage_id if records else None)
        records = self.context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day]), limit=1
        ).records
        if not records or records[0].asset_materialization is None:
            return None, None
        return (records[0].asset_materialization.tags or {}).get(DATA_VERSION_TAG), records[0].storage_id

    def materialization(
        self,
        asset: str,
        state: DayState,
        metadata: Mapping[str, Any],
        inputs: tuple[str, ...],
        data_version: str | None = None,
    ) -> dg.AssetMaterialization:
        """The day's materialization of `asset` with its own data version and the versions of what it read."""
        code_version = self.code_versions[asset]
        # The provenance Dagster writes for outputs, per day: what each input was (its data version and the
        # event it came from), so staleness is judged day by day against the inputs this day really read.
        input_events = {name: self.input_event(name, state.day) for name in inputs}
        input_versions = {name: version for name, (version, _) in input_events.items()}
        version = data_version or derived_version(code_version, input_versions)
        state.versions[asset] = version
        tags = {
            DATA_VERSION_TAG: version,
            CODE_VERSION_TAG: code_version,
            DATA_VERSION_IS_USER_PROVIDED_TAG: "true" if data_version else "false",
        }
        for name, (input_version, storage_id) in input_events.items():
            if input_version is not None:
                tags[f"{INPUT_DATA_VERSION_TAG_PREFIX}/{name}"] = input_version
                tags[f"{INPUT_EVENT_POINTER_TAG_PREFIX}/{name}"] = str(storage_id) if storage_id is not None else NULL_EVENT_POINTER
        return dg.AssetMaterialization(asset_key=asset, partition=state.day, metadata=dict(metadata), tags=tags)

    def check(
        self,
        asset: str,
        check_name: str,
        state: DayState,
        *,
        passed: bool,
        description: str,
        metadata: Mapping[str, Any],
        blocking: bool,
        severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    ) -> dg.AssetCheckEvaluation:
        """The check's verdict for one day, recorded on that day's partition, about that day's latest materialization.

        The UI counts a verdict as the partition's current one only when it names the materialization it
        judged (what Dagster fills in for an `AssetCheckResult` of a one-partition step).
        """
        records = self.context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[state.day]), limit=1
        ).records
        target = (
            AssetCheckEvaluationTargetMaterializationData(
                storage_id=records[0].storage_id, run_id=records[0].run_id, timestamp=records[0].timestamp
            )
            if records
            else None
        )
        return dg.AssetCheckEvaluation(
            target_materialization_data=target,
            asset_key=dg.AssetKey(asset),
            check_name=check_name,
            passed=passed,
            partition=state.day,
            metadata=dict(metadata),
            severity=severity,
            description=description,
            blocking=blocking,
        )


def derived_version(code_version: str, inputs: Mapping[str, str | None]) -> str:
    """The data version Dagster derives for an output from its code version and its inputs' data versions."""
    versions = {dg.AssetKey(name): dg.DataVersion(v) if v is not None else NULL_DATA_VERSION for name, v in inputs.items()}
    return compute_logical_data_version(code_version, versions).value
