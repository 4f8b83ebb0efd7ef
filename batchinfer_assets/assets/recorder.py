"""How a day's results become Dagster events with their provenance: the one place that writes (and reads) the tags
Dagster decides staleness from, so the only module of the assets that imports `dagster._core`.

Dagster records one output of a multi-partition step as one materialization per partition with the same data
version and no per-partition check result (dagster issues 14332, 17005, 17836, 18649). The pipeline therefore
records each day itself: a runtime `AssetMaterialization` per asset and day carrying that day's own data version and
the events it read, and an `AssetCheckEvaluation` per check and day with the day as its partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

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

# (data version, storage id of the event) of one input as a stage read it.
InputEvent = tuple[str | None, int | None]


def materialization(
    asset: str,
    day: str,
    metadata: Mapping[str, Any],
    *,
    code_version: str,
    data_version: str,
    user_provided: bool,
    inputs: Mapping[str, InputEvent],
) -> dg.AssetMaterialization:
    """The day's materialization of `asset` with its data version, code version and the events it read."""
    tags = {
        DATA_VERSION_TAG: data_version,
        CODE_VERSION_TAG: code_version,
        DATA_VERSION_IS_USER_PROVIDED_TAG: "true" if user_provided else "false",
    }
    for name, (input_version, storage_id) in inputs.items():
        if input_version is not None:
            tags[f"{INPUT_DATA_VERSION_TAG_PREFIX}/{name}"] = input_version
            tags[f"{INPUT_EVENT_POINTER_TAG_PREFIX}/{name}"] = str(storage_id) if storage_id is not None else NULL_EVENT_POINTER
    return dg.AssetMaterialization(asset_key=asset, partition=day, metadata=dict(metadata), tags=tags)


def check_evaluation(
    asset: str,
    check_name: str,
    day: str,
    judged: dg.EventLogRecord | None,
    *,
    passed: bool,
    description: str,
    metadata: Mapping[str, Any],
    blocking: bool,
    severity: dg.AssetCheckSeverity,
) -> dg.AssetCheckEvaluation:
    """A check's verdict for one day, on that day's partition, naming the materialization it `judged`.

    The UI counts a verdict as the partition's current one only when it names the materialization it judged (what
    Dagster fills in for an `AssetCheckResult` of a one-partition step).
    """
    target = (
        AssetCheckEvaluationTargetMaterializationData(storage_id=judged.storage_id, run_id=judged.run_id, timestamp=judged.timestamp)
        if judged is not None
        else None
    )
    return dg.AssetCheckEvaluation(
        target_materialization_data=target,
        asset_key=dg.AssetKey(asset),
        check_name=check_name,
        passed=passed,
        partition=day,
        metadata=dict(metadata),
        severity=severity,
        description=description,
        blocking=blocking,
    )


def data_version_of(record: dg.EventLogRecord) -> str | None:
    """The data version an event records (a materialization's or an observation's)."""
    entry = record.asset_materialization or getattr(record.event_log_entry, "asset_observation", None)
    return ((entry.tags if entry is not None else None) or {}).get(DATA_VERSION_TAG)


def recorded_input(record: dg.EventLogRecord, name: str) -> InputEvent:
    """(data version, storage id) of input `name` as the materialization `record` read it (None, None: unrecorded)."""
    tags = (record.asset_materialization.tags if record.asset_materialization else None) or {}
    pointer = tags.get(f"{INPUT_EVENT_POINTER_TAG_PREFIX}/{name}")
    return tags.get(f"{INPUT_DATA_VERSION_TAG_PREFIX}/{name}"), (int(pointer) if pointer and pointer.isdigit() else None)


def derived_version(code_version: str, inputs: Mapping[str, str | None]) -> str:
    """The data version Dagster derives for an output from its code version and its inputs' data versions."""
    versions = {dg.AssetKey(name): dg.DataVersion(v) if v is not None else NULL_DATA_VERSION for name, v in inputs.items()}
    return compute_logical_data_version(code_version, versions).value
