"""What one run of the daily pipeline shares across its days and stages: resources, the run's model, each day's
state, and what earlier runs recorded (read through Dagster's instance; written as events by `recorder`).

A day that fails a gate is recorded as such and stops there; the other days go on.
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

from batchinfer_assets.assets import recorder
from batchinfer_assets.assets.run_model import ModelLoader
from batchinfer_assets.domain import Domain, load_domain
from batchinfer_assets.lib.model_loading import ModelResolutionError
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.spill import DEFAULT_DAY_CHUNK_ROWS
from batchinfer_assets.model_observations import last_observed_model_version, model_version_observation
from batchinfer_assets.resources.labels_zone import LabelsResource, PerformancePolicyResource
from batchinfer_assets.resources.landing_zone import LandingZoneResource
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource, ResolvedModel
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource
from batchinfer_assets.resources.scoring_engine import ScoringEngineResource
from batchinfer_assets.resources.torch_scorer import LoadedModel, TorchScorerResource
from batchinfer_assets.resources.validation import ValidationPolicyResource
from batchinfer_assets.tables import (
    DRIFT_METRICS,
    INPUT_SNAPSHOT,
    PREDICTION_PERFORMANCE,
    PREDICTIONS,
    PUBLISHED_PREDICTIONS,
    QUARANTINED_TRANSACTIONS,
    RAW_TRANSACTIONS,
    SCORING_MODEL,
    TRANSACTION_FEATURES,
)
from batchinfer_assets.tags import BATCH_SIZE_TAG, INPUT_SNAPSHOT_HASH_TAG, MODEL_VERSION_TAG

# A check's verdict counts the days of this window (up to its newest judged day) whose latest verdict failed.
FAILING_DAYS_WINDOW = 30
FAILING_DAYS_KEY = "failing_days"

# The stored input each asset's rows are computed from, back to raw_transactions (the day's one lineage).
DERIVED_FROM = {
    TRANSACTION_FEATURES: RAW_TRANSACTIONS,
    QUARANTINED_TRANSACTIONS: RAW_TRANSACTIONS,
    INPUT_SNAPSHOT: TRANSACTION_FEATURES,
    PREDICTIONS: INPUT_SNAPSHOT,
    DRIFT_METRICS: PREDICTIONS,
    PUBLISHED_PREDICTIONS: PREDICTIONS,
    PREDICTION_PERFORMANCE: PREDICTIONS,
}


class DayBlocked(Exception):
    """The day stops here for this run: a blocking check failed or its data cannot be used.

    The stage that raises has already recorded what it could (e.g. the failed check); later stages of the
    same day are skipped and earlier days' and later days' work is unaffected.
    """

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(f"{stage}: {reason}")

    def __reduce__(self) -> tuple:
        # Pickled with its own arguments: a day's stage computed in a Ray task hands its DayBlocked back to the step.
        return type(self), (self.stage, self.reason)


class InputsDisagree(DayBlocked):
    """Stored inputs of a stage come from another version of the day's raw data than the day's current one."""


@dataclass
class DayState:
    """What the stages of one day hand to each other in memory (one day at a time, dropped afterwards)."""

    day: str
    raw: pd.DataFrame | None = None
    features: pd.DataFrame | None = None
    snapshot: pd.DataFrame | None = None
    versions: dict[str, str] = field(default_factory=dict)
    # The raw_transactions data version each asset this run computed comes from (see `PipelineRun.raw_lineage`).
    lineage: dict[str, str | None] = field(default_factory=dict)
    # The metadata this run recorded for each asset of the day (what later stages of the day read back).
    recorded: dict[str, Mapping[str, Any]] = field(default_factory=dict)

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
    labels: LabelsResource
    performance_policy: PerformancePolicyResource
    snapshot_retention_days: float = 90.0
    # Rows a stage holds in memory at once (a bigger day goes through `DayBuckets` in `spill_dir`).
    day_chunk_rows: int = DEFAULT_DAY_CHUNK_ROWS
    spill_dir: str | None = None
    # What the run's data is: its columns, rules, features, business columns and labels.
    domain: Domain = field(default_factory=lambda: load_domain(None))
    cache: dict[str, Any] = field(default_factory=dict)
    # "<day> <stage>: " while a day's stage runs, so an unexpected failure says where it happened.
    where: str = ""
    # The model loading in the background (`start_loading_model`); None: `model` loads it when first asked.
    model_loader: ModelLoader | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        tags = self.context.run.tags
        if BATCH_SIZE_TAG in tags:
            size = tags[BATCH_SIZE_TAG]
            if not size.isdigit() or int(size) < 1:
                raise dg.Failure(f"run tag {BATCH_SIZE_TAG} must be a positive integer, got {size!r}", allow_retries=False)
            self.torch_scorer = self.torch_scorer.model_copy(update={"batch_size": int(size)})
        if INPUT_SNAPSHOT_HASH_TAG in tags:
            # Scoring an archived input here would replace the live day with a past one's scores.
            raise dg.Failure(
                f"run tag {INPUT_SNAPSHOT_HASH_TAG} is not honoured by pipeline runs: reproduce a day with "
                "`python -m batchinfer_assets.reproduce DAY` (reproduce_predictions_job), which writes under "
                "reproductions/ and leaves the live tables alone",
                allow_retries=False,
            )

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
    def model_lineage(self) -> str:
        """How this run chose its model version, as a sentence for each day's metadata."""
        resolved = self.resolved
        if MODEL_VERSION_TAG not in self.context.run.tags:
            return f"version {resolved.version}, what {resolved.requested_uri} resolved to"
        _, current = self.model_registry.current_version()
        now = "the URI resolves to it now too" if current == resolved.version else f"the URI resolves to {current} now"
        return f"pinned to version {resolved.version} by run tag {MODEL_VERSION_TAG} ({now})"

    def observe_model_version(self) -> None:
        """Record what the model URI resolves to as an observation of `scoring_model`, when it is news.

        A run that resolved the URI itself (no pin) knows the current version as well as `model_version_sensor`
        does. Recorded before any day, so the days this run scores read that observation as their input and are
        fresh at once, also where no daemon runs the sensor (a CLI run right after install: before, every day read
        "scoring_model has a new data version" until the sensor's first tick). Nothing is recorded when the latest
        observation already says this version.
        """
        if MODEL_VERSION_TAG in self.context.run.tags:
            return  # a pinned run's version says nothing of what the URI resolves to now
        resolved = self.resolved
        observed = last_observed_model_version(self.context.instance)
        if observed == resolved.version:
            return
        self.context.log_event(model_version_observation(resolved.requested_uri, resolved.pinned_uri, resolved.version))
        self.context.log.info(
            f"{resolved.requested_uri} resolves to {resolved.pinned_uri}: observed for scoring_model (last observed: {observed or 'never'})"
        )

    def start_loading_model(self) -> None:
        """Load the run's model on a worker thread from now on; `model` waits for it."""
        self.model_loader = ModelLoader(self.torch_scorer, self.resolved)

    def stop_loading_model(self) -> None:
        """Wait for the background load to end, whatever it and the step came to (the step's end calls this)."""
        if self.model_loader is not None:
            self.model_loader.close()

    def surface_model_load_failure(self) -> None:
        """Raise the background load's error now when it has failed already, rather than after more of the run's work."""
        if self.model_loader is not None and self.model_loader.failed():
            self.model

    @cached_property
    def model(self) -> LoadedModel:
        """The run's model loaded on its device, once for every day of the run."""
        if self.model_loader is None:
            started = time.perf_counter()
            loaded = self.torch_scorer.load(self.resolved)
            self.context.log.info(f"loaded {self.resolved.pinned_uri} on {loaded.device} in {time.perf_counter() - started:.1f} s")
            return loaded
        ready = self.model_loader.done()
        asked = time.perf_counter()
        try:
            loaded, load_s = self.model_loader.result()
        except Exception:
            # Whichever stage was running when it surfaced, the failure is the model's.
            self.where = f"loading {self.resolved.pinned_uri}: "
            raise
        waited_s = time.perf_counter() - asked
        self.context.log.info(f"loaded {self.resolved.pinned_uri} on {loaded.device} in {load_s:.1f} s")
        self.context.log.info(
            "model was ready when the predictions stage asked for it"
            if ready
            else f"model ready {waited_s:.2f} s after the predictions stage asked for it"
        )
        return loaded

    def latest_materializations(self, asset: str, day: str) -> list[dg.EventLogRecord]:
        """The day's latest materialization record of `asset` in the instance (an empty list when there is none)."""
        return list(
            self.context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day]), limit=1
            ).records
        )

    def recorded_metadata(self, asset: str, state: DayState) -> dict[str, Any]:
        """The metadata of the day's `asset` as plain values: what this run recorded, else its latest materialization."""
        if asset in state.recorded:
            return {k: getattr(v, "value", v) for k, v in state.recorded[asset].items()}
        records = self.latest_materializations(asset, state.day)
        if not records or records[0].asset_materialization is None:
            return {}
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}

    def recorded_run_id(self, asset: str, state: DayState) -> str | None:
        """The Dagster run that wrote the day's `asset`: this one, else the run of its latest materialization."""
        if asset in state.recorded:
            return self.context.run_id
        records = self.latest_materializations(asset, state.day)
        return records[0].run_id if records else None

    def scored_with(self, state: DayState) -> ResolvedModel:
        """The model version that produced the day's predictions: this run's when it scored the day, else the one
        the day's predictions recorded (a drift- or publish-only run describes the scores that exist, whatever
        the URI resolves to now)."""
        scored = self.recorded_metadata(PREDICTIONS, state)
        recorded, checksum = scored.get("model_version"), scored.get("model_artifact_checksum")
        if recorded is None or (recorded == self.resolved.version and checksum in (None, self.resolved.artifact_checksum)):
            return self.resolved
        # By checksum too: a model deleted and registered again reuses its version numbers.
        key = f"model_version:{recorded}:{checksum}"
        if key not in self.cache:
            resolved = self.model_registry.resolve(version=str(recorded))
            if checksum is not None and resolved.artifact_checksum != checksum:
                raise ModelResolutionError(
                    f"{state.day}: its predictions were scored by {resolved.pinned_uri} with checksum {str(checksum)[:12]}, "
                    f"but that version now holds another model (checksum {resolved.artifact_checksum[:12]}): "
                    f"re-score {state.day} (materialize predictions) first"
                )
            self.cache[key] = resolved
        return self.cache[key]

    def raw_lineage(self, asset: str, state: DayState) -> str | None:
        """The data version of the day's raw_transactions that the day's `asset` was computed from (None: unknown).

        As this run computed it, else as its latest materialization records it: Dagster's own provenance (each
        input's data version and event) followed input by input back to raw_transactions.
        """
        if asset in state.lineage:
            return state.lineage[asset]
        if asset == RAW_TRANSACTIONS and asset in state.versions:
            return state.versions[asset]
        records = self.latest_materializations(asset, state.day)
        return self._recorded_lineage(asset, records[0]) if records else None

    def _recorded_lineage(self, asset: str, record: dg.EventLogRecord) -> str | None:
        if asset == RAW_TRANSACTIONS:
            return recorder.data_version_of(record)
        parent = DERIVED_FROM.get(asset)
        if parent is None:
            return None
        version, pointer = recorder.recorded_input(record, parent)
        if parent == RAW_TRANSACTIONS:
            return version
        if pointer is None:
            return None
        parents = self.context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(parent), storage_ids=[pointer]), limit=1
        ).records
        return self._recorded_lineage(parent, parents[0]) if parents else None

    def require_inputs_stored(self, state: DayState, stage: str, inputs: tuple[str, ...]) -> None:
        """Stop the day at `stage` with what to run when an input it reads is neither computed by this run nor stored."""
        for name in inputs:
            if name not in state.versions and not self.store.has_partition(name, state.day):
                raise DayBlocked(
                    stage,
                    f"{name} for {state.day} is not in storage (never materialized), so there is nothing to read: run the "
                    f"day with its upstream stages, e.g. dg launch --assets '+{stage.split('/')[0]}' --partition {state.day}",
                )

    def require_inputs_agree(self, state: DayState, stage: str, inputs: tuple[str, ...]) -> None:
        """Refuse the stage for the day when an input it reads from storage comes from other raw data than the day's current one.

        A stage whose upstream is not selected reads it from storage; after a day is re-landed (or any upstream is
        re-run alone) that stored input may belong to an older version of the day. Combining it with newer data
        would publish rows of two lineages, so the day stops here and the message names the stage to re-run.
        """
        current = self.raw_lineage(RAW_TRANSACTIONS, state)
        for name in inputs:
            lineage = self.raw_lineage(name, state)
            if lineage is None:
                if name not in state.lineage and self.latest_materializations(name, state.day):
                    self.context.log.warning(
                        f"{state.day}: the provenance of {name} does not lead back to raw_transactions (its upstream "
                        f"events are gone from this instance); {stage} reads it as it is"
                    )
                continue
            if lineage == current:
                continue
            stale = self._first_stale(name, state, current)
            raise InputsDisagree(
                stage,
                f"{name} for {state.day} was computed from raw_transactions version {_short(lineage)}, but the day's "
                f"raw_transactions is now version {_short(current)}: {stage} would mix two versions of the day, "
                f"so nothing is written. Re-run from the stale stage: dg launch --assets '{stale}*' --partition {state.day}"
                + ("" if stale != TRANSACTION_FEATURES else " (the quarantine gate then judges the current raw data)"),
            )

    def _first_stale(self, asset: str, state: DayState, current: str | None) -> str:
        """The most upstream asset on `asset`'s chain whose lineage is not the day's current raw data."""
        stale = asset
        parent = DERIVED_FROM.get(asset)
        while parent is not None and parent != RAW_TRANSACTIONS and self.raw_lineage(parent, state) != current:
            stale, parent = parent, DERIVED_FROM.get(parent)
        return stale

    def latest_version(self, asset: str, day: str, state: DayState) -> str | None:
        """The data version of `asset` for `day`: computed by this run, else its latest recorded materialization."""
        if asset in state.versions:
            return state.versions[asset]
        return self.input_event(asset, day)[0]

    def input_event(self, asset: str, day: str, model_version: str | None = None) -> tuple[str | None, int | None]:
        """(data version, storage id) of the event a stage read for `asset` on `day`.

        For the model: the version that scored the day (`model_version`, else this run's), so a day and
        everything computed from its scores are stale exactly when the URI now resolves to another version,
        with the latest observation as its event.
        """
        if asset == SCORING_MODEL:
            records = self.context.instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=1).records
            return model_version or self.resolved.version, (records[0].storage_id if records else None)
        records = self.latest_materializations(asset, day)
        if not records or records[0].asset_materialization is None:
            return None, None
        return recorder.data_version_of(records[0]), records[0].storage_id

    def materialization(
        self,
        asset: str,
        state: DayState,
        metadata: Mapping[str, Any],
        inputs: tuple[str, ...],
        data_version: str | None = None,
        model_version: str | None = None,
        input_versions: Mapping[str, str] | None = None,
    ) -> dg.AssetMaterialization:
        """The day's materialization of `asset` with its own data version and the versions of what it read
        (`model_version`: the model version behind the day's scores, when `scoring_model` is an input)."""
        code_version = self.code_versions[asset]
        # The provenance Dagster writes for outputs, per day: what each input was (its data version and the
        # event it came from), so staleness is judged day by day against the inputs this day really read.
        input_events = {name: self.input_event(name, state.day, model_version) for name in inputs}
        # What the stage read instead of the latest event (a reproduction reads an archived snapshot).
        for name, version in (input_versions or {}).items():
            input_events[name] = (version, input_events[name][1])
        input_versions = {name: version for name, (version, _) in input_events.items()}
        version = data_version or recorder.derived_version(code_version, input_versions)
        state.versions[asset] = version
        state.recorded[asset] = metadata
        state.lineage[asset] = (
            version if asset == RAW_TRANSACTIONS else self.raw_lineage(DERIVED_FROM[asset], state) if asset in DERIVED_FROM else None
        )
        return recorder.materialization(
            asset,
            state.day,
            metadata,
            code_version=code_version,
            data_version=version,
            user_provided=data_version is not None,
            inputs=input_events,
        )

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
        """The check's verdict for one day, about that day's latest materialization, on the day's planned execution.

        A partitioned run plans one execution of each check per day, whatever the check's spec, and each verdict
        resolves its day's (none is left "Skipped"). The specs declare no partitions: the UI sums a partitioned check
        as failed while any day ever failed but shows its latest execution elsewhere, so one check read "Failed" and
        "Passed" at once; now every summary is the latest verdict, which names its day and lists the recent days
        whose latest verdict failed. The UI counts a verdict as current only when it names the materialization it
        judged (as Dagster does for an `AssetCheckResult`).
        """
        records = self.latest_materializations(asset, state.day)
        failing = self._failing_days(dg.AssetCheckKey(dg.AssetKey(asset), check_name), state.day, passed)
        others = [d for d in failing if d != state.day]
        counted = f" ({'also ' if not passed else ''}failing in the last {FAILING_DAYS_WINDOW} days: {', '.join(others)})" if others else ""
        return recorder.check_evaluation(
            asset,
            check_name,
            state.day,
            records[0] if records else None,
            passed=passed,
            description=f"{state.day}: {description}{counted}",
            metadata={"day": state.day, **metadata, FAILING_DAYS_KEY: dg.MetadataValue.json(failing)},
            blocking=blocking,
            severity=severity,
        )

    def _failing_days(self, key: dg.AssetCheckKey, day: str, passed: bool) -> list[str]:
        """The days within FAILING_DAYS_WINDOW of the newest judged one whose latest verdict failed, `day`'s included.

        Carried from verdict to verdict: the check's latest recorded verdict lists the failing days it knew of.
        """
        cache_key = f"failing_days:{key.to_user_string()}"
        if cache_key not in self.cache:
            history = self.context.instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
            evaluations = [r.evaluation for r in history if r.status.value in ('SUCCEEDED', 'FAILED') and r.run_id != self.context.run_id]
            recorded = evaluations[0].metadata.get(FAILING_DAYS_KEY) if evaluations else None
            self.cache[cache_key] = set(recorded.value if recorded is not None else [])
        failing: set[str] = self.cache[cache_key]
        if passed:
            failing.discard(day)
        else:
            failing.add(day)
        newest = dt.date.fromisoformat(max([day, *failing]))
        oldest = (newest - dt.timedelta(days=FAILING_DAYS_WINDOW - 1)).isoformat()
        failing.intersection_update({d for d in failing if d >= oldest})
        return sorted(failing)


def _short(version: str | None) -> str:
    """A data version as people compare them: the first 12 hex digits of the hash."""
    return (version or "unknown").removeprefix("sha256:")[:12]
